package control

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/store"

	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control/api"
)

// apiCall sends one request to h and returns the status and the body.
func apiCall(t testing.TB, h http.Handler, method, path, contentType, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// daemonState is what a refused request must leave as it was.
type daemonState struct {
	entries map[string]api.Entry
	allow   []api.AllowEntry
	events  int
}

func stateOf(t testing.TB, d *Daemon) daemonState {
	t.Helper()
	return daemonState{entriesByPrefix(t, d), d.Allowlist(), len(d.events.Recent())}
}

// Every bad request body is refused with a clear 4xx error, and changes nothing: free text
// too long or holding control characters, trailing data, oversized bodies, link-local and
// multicast targets.
func TestAPIRefusesBadInput(t *testing.T) {
	d, _ := fakeDaemon(t)
	h := d.Handler()
	ctx := context.Background()
	if _, err := d.Block(ctx, []string{"198.18.0.7"}, "1h", "keep me"); err != nil {
		t.Fatal(err)
	}
	if err := d.AllowAdd(ctx, []string{"198.18.70.0/24"}); err != nil {
		t.Fatal(err)
	}
	before := stateOf(t, d)
	if len(before.entries) != 1 || before.events == 0 {
		t.Fatalf("setup: %+v", before)
	}

	jsonBody := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	block := func(reason string, targets ...string) string {
		return jsonBody(api.BlockRequest{Targets: targets, TTL: "1h", Reason: reason})
	}
	const plain = "text/plain"
	for _, tc := range []struct {
		name, method, path, contentType, body string
		status                                int
		want                                  string
	}{
		{"reason too long", "POST", "/v1/block", "", block(strings.Repeat("r", 257), "198.18.0.8"), 400, "reason is 257 bytes long: at most 256 allowed"},
		{"reason of 1 MB", "POST", "/v1/block", "", block(strings.Repeat("r", 1<<20), "198.18.0.8"), 400, "reason is 1048576 bytes long"},
		{"reason with newline", "POST", "/v1/block", "", block("a\n198.18.9.9  forged row", "198.18.0.8"), 400, `reason "a\n198.18.9.9  forged row" holds the control character U+000A at byte 1`},
		{"reason with escape", "POST", "/v1/block", "", block("\x1b[31mred", "198.18.0.8"), 400, "U+001B"},
		{"reason with tab", "POST", "/v1/block", "", block("a\tb", "198.18.0.8"), 400, "U+0009"},
		{"reason with C1 control", "POST", "/v1/block", "", block("a\u009bb", "198.18.0.8"), 400, "U+009B"},
		{"reason with bidi override", "POST", "/v1/block", "", block("abc\u202edef", "198.18.0.8"), 400, "U+202E"},
		{"import reason with newline", "POST", "/v1/import", "", jsonBody(api.ImportRequest{Content: "198.18.0.8\n", Reason: "a\nb"}), 400, "U+000A"},
		{"import reason too long", "POST", "/v1/import", "", jsonBody(api.ImportRequest{Content: "198.18.0.8\n", Reason: strings.Repeat("r", 300)}), 400, "reason is 300 bytes long"},
		{"import name with escape", "POST", "/v1/import", "", jsonBody(api.ImportRequest{Content: "198.18.0.8\n", Name: "x\x1b]0;title\x07"}), 400, "import name"},
		{"plain import reason with newline", "POST", "/v1/import?reason=" + url.QueryEscape("a\nb"), plain, "198.18.0.8\n", 400, "U+000A"},
		{"plain import reason not UTF-8", "POST", "/v1/import?reason=%FFab", plain, "198.18.0.8\n", 400, "not valid UTF-8 (byte 0)"},
		{"plain import name with newline", "POST", "/v1/import?name=" + url.QueryEscape("a\nb"), plain, "198.18.0.8\n", 400, "import name"},
		{"plain import name too long", "POST", "/v1/import?name=" + strings.Repeat("n", 5000), plain, "198.18.0.8\n", 400, "import name is 5000 bytes long"},
		{"two block documents", "POST", "/v1/block", "", block("", "198.18.0.8") + block("", "198.18.0.9"), 400, "data after the JSON document"},
		{"block document and garbage", "POST", "/v1/block", "", block("", "198.18.0.8") + " x", 400, "data after the JSON document"},
		{"two unblock documents", "POST", "/v1/unblock", "", `{"targets":["198.18.0.7"]}{"targets":[]}`, 400, "data after the JSON document"},
		{"two allow documents", "POST", "/v1/allow/add", "", `{"targets":["198.18.71.0/24"]} {}`, 400, "data after the JSON document"},
		{"two allow del documents", "POST", "/v1/allow/del", "", `{"targets":["198.18.70.0/24"]}[]`, 400, "data after the JSON document"},
		{"two import documents", "POST", "/v1/import", "", `{"content":"198.18.0.8"}{"content":"198.18.0.9"}`, 400, "data after the JSON document"},
		{"empty body", "POST", "/v1/block", "", "", 400, "empty"},
		{"block body over the limit", "POST", "/v1/block", "", block(strings.Repeat("r", maxRequestBody), "198.18.0.8"), 413, "request body larger than 8388608 bytes"},
		{"allow body over the limit", "POST", "/v1/allow/add", "", `{"targets":["` + strings.Repeat(" ", maxRequestBody) + `"]}`, 413, "larger than 8388608 bytes"},
		{"link-local", "POST", "/v1/block", "", block("", "fe80::5"), 400, `"fe80::5" is a link-local address (fe80::/10)`},
		{"link-local v4 CIDR", "POST", "/v1/block", "", block("", "169.254.0.0/16"), 400, "overlaps the link-local range 169.254.0.0/16"},
		{"multicast", "POST", "/v1/block", "", block("", "ff02::1"), 400, "multicast address (ff00::/8)"},
		{"multicast v4", "POST", "/v1/block", "", block("", "239.1.2.3"), 400, "multicast address (224.0.0.0/4)"},
		{"v6 loopback", "POST", "/v1/block", "", block("", "::1"), 400, `"::1" is a loopback address`},
		{"import of link-local", "POST", "/v1/import", "", jsonBody(api.ImportRequest{Content: "198.18.0.8\nfe80::1\n"}), 400, "link-local"},
		{"good target beside a multicast one", "POST", "/v1/block", "", block("", "198.18.0.8", "224.0.0.0/24"), 400, "overlaps the multicast range 224.0.0.0/4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := apiCall(t, h, tc.method, tc.path, tc.contentType, tc.body)
			var e api.ErrorResponse
			if err := json.Unmarshal([]byte(body), &e); err != nil || status != tc.status || !strings.Contains(e.Error, tc.want) {
				t.Errorf("%d %.300s; want %d with %q", status, body, tc.status, tc.want)
			}
			if len(e.Error) > 500 {
				t.Errorf("error message is %d bytes long: it echoes the input", len(e.Error))
			}
			if after := stateOf(t, d); !reflect.DeepEqual(after, before) {
				t.Errorf("a refused request changed the daemon:\n%+v\nwant\n%+v", after, before)
			}
		})
	}

	// What is allowed: a reason of exactly the limit, and text in any script.
	for _, reason := range []string{strings.Repeat("r", input.MaxReasonLen), "Überprüfung ✓ 検査 «ssh»"} {
		if status, body := apiCall(t, h, "POST", "/v1/block", "", block(reason, "198.18.0.8")); status != 200 {
			t.Fatalf("reason %q: %d %s", reason, status, body)
		}
		if got := entriesByPrefix(t, d)["198.18.0.8/32"].Reason; got != reason {
			t.Errorf("stored reason %q, want %q", got, reason)
		}
	}
	// A long file name makes a default reason within the limit that keeps the file's name.
	name := strings.Repeat("dir/", 100) + "blocked.list"
	if status, body := apiCall(t, h, "POST", "/v1/import?name="+url.QueryEscape(name), plain, "198.18.0.9\n"); status != 200 {
		t.Fatalf("import with a long name: %d %s", status, body)
	}
	got := entriesByPrefix(t, d)["198.18.0.9/32"].Reason
	if len(got) > input.MaxReasonLen || !strings.HasPrefix(got, "import ...") || !strings.HasSuffix(got, "/dir/blocked.list") {
		t.Errorf("default reason of a long name: %q (%d bytes)", got, len(got))
	}
}

// A store written before reasons were bounded may hold a reason of megabytes, with newlines:
// list and events still read every entry whole (no line-length limit in the client).
func TestClientReadsHugeStoredReason(t *testing.T) {
	d, _ := fakeDaemon(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	huge := strings.Repeat("x", 3<<20) + "\nforged 198.18.9.9\x1b[2J"
	now := time.Now()
	err := d.store.Update(func(tx *store.Tx) error {
		for _, p := range []string{"198.18.0.7/32", "198.18.0.8/32", "198.18.0.9/32"} {
			r := store.Rule{Prefix: netip.MustParsePrefix(p), Reason: "short", Origin: api.OriginManual, Created: now, Deadline: now.Add(time.Hour)}
			if p == "198.18.0.8/32" {
				r.Reason = huge
			}
			if err := tx.PutRule(r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	d.logEvents(api.Event{Time: now, Event: api.EventBlock, Address: "198.18.0.8/32", Reason: huge, Source: api.OriginManual},
		api.Event{Time: now, Event: api.EventBlock, Address: "198.18.0.9/32", Reason: "after", Source: api.OriginManual})

	dir, err := os.MkdirTemp("", "snare-client")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	socket := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); d.ServeListener(ctx, l, nil) }()
	defer func() { cancel(); <-done }()

	c := api.NewClient(socket)
	list, err := c.List(ctx)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(list.Entries) != 3 || list.Entries[1].Reason != huge || list.Entries[2].Prefix != "198.18.0.9/32" {
		t.Errorf("list: %d entries, want 3 with the huge reason whole in the second", len(list.Entries))
	}
	var evs []api.Event
	if err := c.Events(ctx, false, func(ev api.Event) error { evs = append(evs, ev); return nil }); err != nil {
		t.Fatalf("events: %v", err)
	}
	if n := len(evs); n < 2 || evs[n-2].Reason != huge || evs[n-1].Reason != "after" {
		t.Errorf("events: %d, want the huge one whole and the one after it", n)
	}
}
