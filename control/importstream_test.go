package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// v4List is n distinct addresses of 198.19.0.0/16, one per line.
func v4List(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "198.19.%d.%d\n", i>>8, i&255)
	}
	return b.String()
}

// The streamed form of POST /v1/import (text/plain body, options in the query), big enough for
// the bulk path: an entry already blocked keeps its rule extended to the later deadline.
func TestImportStreamBulk(t *testing.T) {
	d, f := fakeDaemon(t)
	ctx := context.Background()
	if _, err := d.Block(ctx, []string{"198.19.0.7"}, "1h", "by hand"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	n := bulkImport + 100
	resp, err := http.Post(srv.URL+"/v1/import?ttl=5d&reason=feed&name=feed.txt", "text/plain", strings.NewReader(v4List(n)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out ImportResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 || out.Imported != n {
		t.Fatalf("status %d, %+v, %v", resp.StatusCode, out, err)
	}
	if d.store.Count() != n || len(f.rules) != n {
		t.Fatalf("store %d, kernel %d, want %d", d.store.Count(), len(f.rules), n)
	}
	es, err := d.Entries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		want := "feed"
		if e.Prefix == "198.19.0.7/32" {
			want = "by hand"
		}
		if e.Reason != want || time.Until(e.Expires) < 4*24*time.Hour {
			t.Fatalf("%+v: want reason %q, 5 days", e, want)
		}
	}

	// A kernel that refuses the batch: nothing changes, in the store or the kernel.
	f.fail = errors.New("map full")
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "2001:db8:%x:%x::1\n", 0x100+i>>16, i&0xffff)
	}
	if _, err := d.Import(ctx, ImportRequest{Content: b.String()}); err == nil || !strings.Contains(err.Error(), "map full") {
		t.Fatalf("import with a failing kernel: %v", err)
	}
	f.fail = nil
	if d.store.Count() != n || len(f.rules) != n {
		t.Fatalf("after a failed import: store %d, kernel %d, want %d", d.store.Count(), len(f.rules), n)
	}
	if _, ok := f.rules[netip.MustParsePrefix("2001:db8:100::/64")]; ok {
		t.Fatal("failed import left an entry in the kernel")
	}
}

// cutReader ends with io.ErrUnexpectedEOF, as an HTTP body does when the client aborts.
type cutReader struct{ r io.Reader }

func (c cutReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// An upload cut off (snarectl found bad lines while sending) imports nothing, even the good
// lines that arrived.
func TestImportStreamCutOff(t *testing.T) {
	d, f := fakeDaemon(t)
	_, err := d.ImportStream(context.Background(), cutReader{strings.NewReader(v4List(1000))}, -1, ImportRequest{})
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut-off import: %v", err)
	}
	if d.store.Count() != 0 || len(f.rules) != 0 {
		t.Fatalf("cut-off import changed something: store %d, kernel %d", d.store.Count(), len(f.rules))
	}
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/v1/import?skip_bad=maybe", "text/plain", strings.NewReader("198.19.0.1\n"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 || d.store.Count() != 0 {
		t.Fatalf("bad skip_bad: status %d, %d stored", resp.StatusCode, d.store.Count())
	}
}
