package control

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
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

func TestSortStates(t *testing.T) {
	var states []backend.RuleState
	for _, s := range []string{"2001:db8::/64", "198.18.0.7/32", "198.18.0.0/24", "2001:db8::/32", "198.18.0.0/16", "10.0.0.1/32", "198.18.0.6/32"} {
		states = append(states, backend.RuleState{Rule: backend.Rule{Prefix: netip.MustParsePrefix(s)}, Hits: uint64(len(s))})
	}
	want := slices.Clone(states)
	slices.SortFunc(want, func(a, b backend.RuleState) int { return a.Prefix.Compare(b.Prefix) })
	sortStates(states)
	if !reflect.DeepEqual(states, want) {
		t.Errorf("got %v\nwant %v", states, want)
	}

	// Many states in random order, addresses differing in every part of the key.
	r := rand.New(rand.NewPCG(1, 2))
	states = states[:0]
	for i := range 5000 {
		var b [16]byte
		for j := range b {
			b[j] = byte(r.IntN(4)) << (2 * (j % 4))
		}
		p := netip.PrefixFrom(netip.AddrFrom16(b), 32+r.IntN(97)).Masked()
		if i%2 == 0 {
			p = netip.PrefixFrom(netip.AddrFrom4([4]byte(b[:4])), 8+r.IntN(25)).Masked()
		}
		states = append(states, backend.RuleState{Rule: backend.Rule{Prefix: p}, Hits: uint64(i)})
	}
	want = slices.Clone(states)
	slices.SortStableFunc(want, func(a, b backend.RuleState) int { return a.Prefix.Compare(b.Prefix) })
	sortStates(states)
	for i := range states {
		// Hits tell equal prefixes apart: they keep the order they came in.
		if states[i].Prefix != want[i].Prefix || states[i].Hits != want[i].Hits {
			t.Fatalf("random states: position %d holds %s (%d), want %s (%d)", i, states[i].Prefix, states[i].Hits, want[i].Prefix, want[i].Hits)
		}
	}
}
