package main

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
)

// The list's own table and JSON writers print what tabwriter and encoding/json print.
func TestListWritersMatchLibraries(t *testing.T) {
	entries := []api.Entry{
		{Prefix: "198.18.0.7/32", Reason: "trap tcp/31337 ü", Origin: "trap", Created: testNow.Add(-time.Hour),
			Expires: testNow.Add(5 * 24 * time.Hour), Offences: 2, Hits: 12345, LastHit: testNow.Add(-time.Minute)},
		{Prefix: "2001:db8::/64", Origin: "import", Created: testNow.Add(-48 * time.Hour), Permanent: true},
	}
	for _, es := range [][]api.Entry{entries, nil} {
		var got, want bytes.Buffer
		c := &cli{env: env{stdout: &got, now: func() time.Time { return testNow }, loc: time.UTC}}
		if err := c.entryTable(es); err != nil {
			t.Fatal(err)
		}
		tw := newTable(&want)
		fmt.Fprintln(tw, "ADDRESS\tREASON\tORIGIN\tCREATED\tEXPIRES\tHITS\tLAST HIT")
		for _, e := range es {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", shortPrefix(e.Prefix), orDash(e.Reason), orDash(e.Origin),
				relative(testNow, e.Created), expiresText(e, testNow), e.Hits, relative(testNow, e.LastHit))
		}
		tw.Flush()
		if got.String() != want.String() {
			t.Errorf("table:\n%s\nwant:\n%s", got.String(), want.String())
		}
		got.Reset()
		want.Reset()
		if err := writeListJSON(&got, es); err != nil {
			t.Fatal(err)
		}
		writeJSON(&want, api.ListResponse{Entries: orEmptyEntries(es)})
		if got.String() != want.String() {
			t.Errorf("json:\n%s\nwant:\n%s", got.String(), want.String())
		}
	}
}

func orEmptyEntries(es []api.Entry) []api.Entry {
	if es == nil {
		return []api.Entry{}
	}
	return es
}
