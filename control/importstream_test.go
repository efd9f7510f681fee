package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/internal/testutil"
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
	var out api.ImportResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 || out.Imported != n {
		t.Fatalf("status %d, %+v, %v", resp.StatusCode, out, err)
	}
	if d.store.Count() != n || f.Len() != n {
		t.Fatalf("store %d, kernel %d, want %d", d.store.Count(), f.Len(), n)
	}
	es, err := listEntries(ctx, d)
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
	f.FailBlocks(errors.New("map full"))
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "2001:db8:%x:%x::1\n", 0x100+i>>16, i&0xffff)
	}
	if _, err := d.Import(ctx, api.ImportRequest{Content: b.String()}); err == nil || !strings.Contains(err.Error(), "map full") {
		t.Fatalf("import with a failing kernel: %v", err)
	}
	f.FailBlocks(nil)
	if d.store.Count() != n || f.Len() != n {
		t.Fatalf("after a failed import: store %d, kernel %d, want %d", d.store.Count(), f.Len(), n)
	}
	if _, ok := f.Rule(netip.MustParsePrefix("2001:db8:100::/64")); ok {
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
	_, err := d.ImportStream(context.Background(), cutReader{strings.NewReader(v4List(1000))}, api.ImportRequest{})
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut-off import: %v", err)
	}
	if d.store.Count() != 0 || f.Len() != 0 {
		t.Fatalf("cut-off import changed something: store %d, kernel %d", d.store.Count(), f.Len())
	}
	// A line that does not end within 1 MB: refused as the user's mistake, nothing imported.
	var ue *UserError
	_, err = d.Import(context.Background(), api.ImportRequest{Content: "198.19.0.1\n" + strings.Repeat("x", 1<<20+1)})
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "line 2 is longer than") || d.store.Count() != 0 || f.Len() != 0 {
		t.Fatalf("endless line: %v; store %d, kernel %d", err, d.store.Count(), f.Len())
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

// A blocked.list in the order its blocks were made (random, as far as addresses go), with
// repeats at different dates, big enough for the bulk path: one rule per prefix, dated by its
// latest line, in both store and kernel.
func TestImportUnsortedWithRepeats(t *testing.T) {
	d, f := fakeDaemon(t)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(9, 10))
	today := time.Now()
	latest := map[string]time.Time{} // the prefix each line blocks -> its latest date
	first := map[string]time.Time{}  // -> the date of its first line
	var b strings.Builder
	n := bulkImport + 5000
	for range n {
		var addr, prefix string
		switch i := r.IntN(bulkImport); i % 3 {
		case 0:
			addr = fmt.Sprintf("198.19.%d.%d", i>>8&255, i&255)
			prefix = addr + "/32"
		case 1:
			addr = fmt.Sprintf("2001:db8:%x:%x::%x", i>>8, i&255, 1+r.IntN(9)) // same /64, other hosts
			prefix = netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x:%x::/64", i>>8, i&255)).String()
		default:
			addr = fmt.Sprintf("198.19.%d.0/24", i&255) // over some of the /32s: another prefix
			prefix = addr
		}
		day := time.Date(today.Year(), today.Month(), today.Day(), 0, 0, 0, 0, time.Local).AddDate(0, 0, -r.IntN(4))
		fmt.Fprintf(&b, "%s %s\n", addr, day.Format("20060102"))
		if day.After(latest[prefix]) {
			latest[prefix] = day
		}
		if _, ok := first[prefix]; !ok {
			first[prefix] = day
		}
	}
	resp, err := d.Import(ctx, api.ImportRequest{Content: b.String(), TTL: "5d"})
	if err != nil {
		t.Fatalf("%v %+v", err, resp.Errors[:min(3, len(resp.Errors))])
	}
	if resp.Imported != len(latest) || d.store.Count() != len(latest) || f.Len() != len(latest) {
		t.Fatalf("imported %d, store %d, kernel %d; want %d distinct prefixes", resp.Imported, d.store.Count(), f.Len(), len(latest))
	}
	es, err := listEntries(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		day, ok := latest[e.Prefix]
		if !ok || !e.Created.Equal(day) || !e.Expires.Equal(day.Add(5*24*time.Hour)) {
			t.Fatalf("%s created %v expires %v; want a line's latest date %v (listed: %v)", e.Prefix, e.Created, e.Expires, day, ok)
		}
		if k, _ := f.Rule(netip.MustParsePrefix(e.Prefix)); !k.Deadline.Equal(e.Expires) {
			t.Fatalf("%s: kernel deadline %v, store %v", e.Prefix, k.Deadline, e.Expires)
		}
	}

	// Imported as permanent blocks, a prefix keeps the date of its first line.
	d, f = fakeDaemon(t)
	if resp, err := d.Import(ctx, api.ImportRequest{Content: b.String(), TTL: "permanent"}); err != nil || resp.Imported != len(first) {
		t.Fatalf("permanent import: %+v, %v", resp, err)
	}
	if es, err = listEntries(ctx, d); err != nil || len(es) != len(first) || f.Len() != len(first) {
		t.Fatalf("permanent import: %d entries, %d in the kernel, %v; want %d", len(es), f.Len(), err, len(first))
	}
	for _, e := range es {
		k, _ := f.Rule(netip.MustParsePrefix(e.Prefix))
		if day := first[e.Prefix]; !e.Permanent || !e.Created.Equal(day) || !k.Deadline.IsZero() {
			t.Fatalf("%s: permanent %v created %v; want permanent, created on its first line's date %v", e.Prefix, e.Permanent, e.Created, day)
		}
	}
}

// A big import into an empty daemon starts on the kernel while it sorts the list. A kernel that
// fills up after part of it took its first chunk: nothing stays, in the store or the kernel.
func TestImportIntoEmptyKernelFull(t *testing.T) {
	d, f := fakeDaemon(t)
	f.Limit(kernelChunk + 10)
	n := kernelChunk + 5000
	lines := make([]string, n)
	for i := range lines {
		lines[i] = fmt.Sprintf("2001:db8:%x:%x::1", 0x100+i>>16, i&0xffff)
	}
	rand.New(rand.NewPCG(3, 4)).Shuffle(n, func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
	_, err := d.Import(context.Background(), api.ImportRequest{Content: strings.Join(lines, "\n")})
	if !errors.Is(err, testutil.ErrMemFull) {
		t.Fatalf("import into a kernel that fills up: %v", err)
	}
	if d.store.Count() != 0 || f.Len() != 0 {
		t.Fatalf("failed import left store %d, kernel %d entries", d.store.Count(), f.Len())
	}
	// Once there is room, the same list imports whole.
	f.Limit(-1)
	if resp, err := d.Import(context.Background(), api.ImportRequest{Content: strings.Join(lines, "\n")}); err != nil || resp.Imported != n {
		t.Fatalf("import: %+v, %v", resp, err)
	}
	if d.store.Count() != n || f.Len() != n {
		t.Fatalf("store %d, kernel %d, want %d", d.store.Count(), f.Len(), n)
	}
}
