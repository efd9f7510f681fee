package control

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/snare-dev/snare/backend"
)

// prefixOrder gives a stable sort by Prefix.Compare, whichever parts differ.
func TestPrefixOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	v4 := func() netip.Prefix {
		a := netip.AddrFrom4([4]byte{198, 18 + byte(rng.IntN(2)), byte(rng.IntN(4)), byte(rng.IntN(256))})
		return netip.PrefixFrom(a, 16+rng.IntN(17)).Masked()
	}
	v6 := func(bits int) netip.Prefix {
		var b [16]byte
		copy(b[:], []byte{0x20, 0x01, 0x0d, 0xb8})
		for j := 4; j < 16; j++ {
			b[j] = byte(rng.IntN(3))
		}
		return netip.PrefixFrom(netip.AddrFrom16(b), bits).Masked()
	}
	for _, tc := range []struct {
		name string
		gen  func() netip.Prefix
	}{
		{"IPv4, several lengths", v4},
		{"IPv4 and IPv6 /32", func() netip.Prefix {
			if rng.IntN(2) == 0 {
				return v4()
			}
			return netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, byte(rng.IntN(3)), byte(rng.IntN(3))}), 32)
		}},
		{"IPv6 /64", func() netip.Prefix { return v6(64) }},
		{"IPv4 and IPv6 /128", func() netip.Prefix {
			if rng.IntN(2) == 0 {
				return v4()
			}
			return v6(128)
		}},
	} {
		ps := make([]netip.Prefix, 3000)
		for i := range ps {
			ps[i] = tc.gen()
		}
		order := prefixOrder(len(ps), func(i int) (hi, lo uint64, bits uint8, v6 bool) {
			hi, lo = backend.AddrHalves(ps[i].Addr())
			return hi, lo, uint8(ps[i].Bits()), !ps[i].Addr().Is4()
		})
		want := make([]int32, len(ps))
		for i := range want {
			want[i] = int32(i)
		}
		slices.SortStableFunc(want, func(a, b int32) int { return ps[a].Compare(ps[b]) })
		if !slices.Equal(order, want) {
			for j := range want {
				if order[j] != want[j] {
					t.Fatalf("%s: position %d holds %s (line %d), want %s (line %d)", tc.name, j, ps[order[j]], order[j], ps[want[j]], want[j])
				}
			}
		}
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
