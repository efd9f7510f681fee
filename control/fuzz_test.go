package control

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"reflect"
	"testing"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/internal/testutil"
)

// The fuzz targets run their seeds (testdata/fuzz/<name>) with every `go test`; `make fuzz`
// explores beyond them for a few seconds each.

// The API endpoints that take a body, by the first byte of a fuzz input.
var fuzzEndpoints = []struct {
	path, contentType string
	resp              func() any
}{
	{"/v1/block", "application/json", func() any { return &api.BlockResponse{} }},
	{"/v1/unblock", "application/json", func() any { return &api.UnblockResponse{} }},
	{"/v1/allow/add", "application/json", func() any { return &api.AllowResponse{} }},
	{"/v1/allow/del", "application/json", func() any { return &api.AllowResponse{} }},
	{"/v1/import", "application/json", func() any { return &api.ImportResponse{} }},
	{"/v1/import", "text/plain", func() any { return &api.ImportResponse{} }},
}

// FuzzAPIRequest sends a body to one endpoint of the real Handler, over a daemon with a fake
// enforcer: it answers 200, 400 or 413, never 500; a refusal is an ErrorResponse and changes
// nothing; a body with anything after its JSON document, or a reason the daemon does not keep,
// is refused; what a block stores is a prefix and reason the rules allow.
func FuzzAPIRequest(f *testing.F) {
	d, _ := fakeDaemon(f)
	h := d.Handler()
	f.Fuzz(func(t *testing.T, endpoint uint8, query string, body []byte) {
		ep := fuzzEndpoints[int(endpoint)%len(fuzzEndpoints)]
		path := ep.path
		if ep.contentType == "text/plain" {
			path += "?" + query
		}
		before := stateOf(t, d)
		req, err := http.NewRequest("POST", "http://snared"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a client can send
		}
		req.Header.Set("Content-Type", ep.contentType)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		status, answer := rec.Code, rec.Body.String()
		switch status {
		case 200:
		case 400, 413:
			var e api.ErrorResponse
			if err := json.Unmarshal([]byte(answer), &e); err != nil || e.Error == "" {
				t.Fatalf("%s %q: %d with %q, not an ErrorResponse", path, body, status, answer)
			}
			if after := stateOf(t, d); !reflect.DeepEqual(after, before) {
				t.Fatalf("%s %q: refused (%s) but the daemon changed", path, body, e.Error)
			}
			return
		default:
			t.Fatalf("%s %q: status %d %s", path, body, status, answer)
		}
		if err := json.Unmarshal([]byte(answer), ep.resp()); err != nil {
			t.Fatalf("%s %q: answer %q: %v", path, body, answer, err)
		}
		if ep.contentType == "text/plain" {
			q, _ := url.ParseQuery(query)
			if r := q.Get("reason"); r != "" && input.CheckReason(r) != nil {
				t.Fatalf("%s: reason %q accepted", path, r)
			}
			return
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		var first json.RawMessage
		if dec.Decode(&first) != nil || dec.More() {
			t.Fatalf("%s %q: accepted, but it is not one JSON document", path, body)
		}
		if _, err := dec.Token(); err != io.EOF {
			t.Fatalf("%s %q: accepted with data after the document", path, body)
		}
		var reason struct{ Reason string }
		if json.Unmarshal(first, &reason) == nil && reason.Reason != "" && input.CheckReason(reason.Reason) != nil {
			t.Fatalf("%s: reason %q accepted", path, reason.Reason)
		}
		for prefix, e := range entriesByPrefix(t, d) {
			p, err := netip.ParsePrefix(prefix)
			if err != nil {
				t.Fatalf("stored %q: %v", prefix, err)
			}
			testutil.CheckPrefix(t, prefix, p)
			if err := input.CheckReason(e.Reason); err != nil {
				t.Fatalf("stored reason of %s: %v", prefix, err)
			}
		}
	})
}
