package api

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// The hand encoder writes what encoding/json writes, compact and indented, and the decoder reads
// back what either wrote, escapes and all.
func TestEntryJSONMatchesEncodingJSON(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 123456789, time.UTC)
	for _, e := range []Entry{
		{Prefix: "198.18.0.7/32", Origin: "import", Created: t0},
		{Prefix: "2001:db8::/64", Reason: "trap tcp/31337 <&> \"quoted\" \\ é \u2028", Origin: "trap", Created: t0.In(time.FixedZone("x", 3600)),
			Expires: t0.Add(time.Hour), Offences: 3, Hits: 1 << 40, LastHit: t0.Add(time.Minute)},
		{Prefix: "198.18.0.0/24", Reason: "manual", Origin: "manual", Created: t0, Permanent: true, Offences: 1},
	} {
		want, _ := json.Marshal(e)
		if got := AppendEntryJSON(nil, &e, "", ""); !bytes.Equal(got, want) {
			t.Errorf("compact:\n got %s\nwant %s", got, want)
		}
		wantIndent, _ := json.MarshalIndent(e, "    ", "  ")
		if got := AppendEntryJSON(nil, &e, "    ", "  "); !bytes.Equal(got, wantIndent) {
			t.Errorf("indented:\n got %s\nwant %s", got, wantIndent)
		}
		var back Entry
		if err := DecodeEntryJSON(want, &back); err != nil {
			t.Fatal(err)
		}
		var ref Entry
		json.Unmarshal(want, &ref)
		if !reflect.DeepEqual(back, ref) {
			t.Errorf("decoded %+v, want %+v", back, ref)
		}
	}
	var e Entry
	if err := DecodeEntryJSON([]byte(`{"prefix": 5}`), &e); err == nil {
		t.Error("a number for prefix decoded")
	}
}
