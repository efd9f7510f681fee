package loader

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/bpf"
)

// ruleMap reads the maps as prefix -> state, failing on a prefix listed twice.
func ruleMap(t testing.TB, x *XDP) map[netip.Prefix]backend.RuleState {
	t.Helper()
	rs, err := x.Rules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[netip.Prefix]backend.RuleState, len(rs))
	for _, r := range rs {
		if _, dup := out[r.Prefix]; dup {
			t.Fatalf("%s listed twice", r.Prefix)
		}
		out[r.Prefix] = r
	}
	return out
}

// closeTo reports whether two wall-clock deadlines are the same block deadline (both permanent,
// or within the clock conversion's rounding).
func closeTo(a, b time.Time) bool {
	if a.IsZero() || b.IsZero() {
		return a.IsZero() && b.IsZero()
	}
	d := a.Sub(b)
	return d > -5*time.Millisecond && d < 5*time.Millisecond
}

func TestReplaceKeepsRewritesAndRemoves(t *testing.T) {
	x := newUnattached(t, 1024)
	ctx := context.Background()
	hour := time.Now().Add(time.Hour).Round(time.Millisecond)
	later := hour.Add(time.Hour)
	P := netip.MustParsePrefix
	initial := []backend.Rule{
		{Prefix: P("198.18.1.1/32"), Deadline: hour},   // kept as it is
		{Prefix: P("198.18.1.2/32"), Deadline: hour},   // stale
		{Prefix: P("198.18.1.3/32"), Deadline: hour},   // extended
		{Prefix: P("2001:db8:1::/64"), Deadline: hour}, // kept, asked for unmasked
		{Prefix: P("198.18.2.0/24"), Deadline: hour},   // CIDR kept
		{Prefix: P("2001:db8:2::/48"), Deadline: hour}, // CIDR stale
	}
	if err := x.Block(ctx, initial); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{"198.18.1.1", "198.18.1.3"} {
		for range 3 {
			if v := run(t, x, frame(t, pkt{src: src, dst: host4, proto: "icmp"})); v != "drop" {
				t.Fatalf("%s: %s before Replace", src, v)
			}
		}
	}

	want := []backend.Rule{
		{Prefix: P("198.18.1.1/32"), Deadline: hour},
		{Prefix: P("198.18.1.3/32"), Deadline: later},
		{Prefix: P("2001:db8:1::5/64"), Deadline: hour}, // unmasked: the same /64
		{Prefix: P("198.18.2.0/24"), Deadline: hour},
		{Prefix: P("198.18.1.9/32")},                         // permanent, then given again:
		{Prefix: P("198.18.3.0/24"), Deadline: later},        // (a new CIDR between them)
		{Prefix: P("198.18.1.9/32"), Deadline: later},        // the later one counts, as in a batch
		{Prefix: P("::ffff:198.18.4.4/128"), Deadline: hour}, // IPv4-mapped: the v4 address
	}
	n, trapped, err := x.Replace(ctx, backend.RuleList(want))
	if err != nil || trapped != nil {
		t.Fatalf("Replace: %v, trap blocks kept %v (there are none)", err, trapped)
	}
	// Rewritten: .3 (new deadline), .9 and 198.18.3.0/24 and .4.4 (new).
	if n != 4 {
		t.Fatalf("Replace reinserted %d, want 4", n)
	}
	got := ruleMap(t, x)
	expect := map[netip.Prefix]struct {
		deadline time.Time
		hits     uint64
	}{
		P("198.18.1.1/32"):   {hour, 3},
		P("198.18.1.3/32"):   {later, 3}, // rewritten, counters kept
		P("2001:db8:1::/64"): {hour, 0},
		P("198.18.2.0/24"):   {hour, 0},
		P("198.18.1.9/32"):   {later, 0},
		P("198.18.3.0/24"):   {later, 0},
		P("198.18.4.4/32"):   {hour, 0},
	}
	if len(got) != len(expect) {
		t.Fatalf("after Replace: %v, want %v", got, expect)
	}
	for p, e := range expect {
		r, ok := got[p]
		if !ok {
			t.Fatalf("%s missing after Replace: %v", p, got)
		}
		if !closeTo(r.Deadline, e.deadline) || r.Hits != e.hits {
			t.Errorf("%s: deadline %v hits %d, want %v and %d", p, r.Deadline, r.Hits, e.deadline, e.hits)
		}
	}
	for src, verdict := range map[string]string{
		"198.18.1.2": "pass", "198.18.3.7": "drop", "198.18.1.9": "drop", "198.18.2.5": "drop",
	} {
		if v := run(t, x, frame(t, pkt{src: src, dst: host4, proto: "icmp"})); v != verdict {
			t.Errorf("%s: %s after Replace, want %s", src, v, verdict)
		}
	}
	if v := run(t, x, frame(t, pkt{src: "2001:db8:2::1", dst: host6, proto: "icmp"})); v != "pass" {
		t.Errorf("source in the removed /48: %s", v)
	}

	// The same set again changes nothing; an empty set removes everything.
	if n, _, err := x.Replace(ctx, backend.RuleList(want)); err != nil || n != 0 {
		t.Fatalf("Replace with the same rules: %d, %v; want 0", n, err)
	}
	if n, _, err := x.Replace(ctx, backend.RuleList(nil)); err != nil || n != 0 || len(ruleMap(t, x)) != 0 {
		t.Fatalf("Replace with nothing: %d, %v, %d left", n, err, len(ruleMap(t, x)))
	}
	if v := run(t, x, frame(t, pkt{src: "198.18.2.5", dst: host4, proto: "icmp"})); v != "pass" {
		t.Errorf("CIDR still drops after Replace with nothing: %s", v)
	}
}

func TestReplaceRefusesBadRulesChangingNothing(t *testing.T) {
	x := newUnattached(t, 1024)
	ctx := context.Background()
	block(t, x, "198.18.1.1/32", time.Hour)
	before := ruleMap(t, x)
	for _, bad := range []backend.Rule{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0")},
		{Prefix: netip.MustParsePrefix("::/0")},
		{}, // the zero (invalid) prefix
	} {
		_, _, err := x.Replace(ctx, backend.RuleList{{Prefix: netip.MustParsePrefix("198.18.7.7/32")}, bad})
		if err == nil {
			t.Fatalf("Replace with %v accepted", bad.Prefix)
		}
		after := ruleMap(t, x)
		if len(after) != len(before) || after[netip.MustParsePrefix("198.18.1.1/32")].Prefix != netip.MustParsePrefix("198.18.1.1/32") {
			t.Fatalf("Replace with %v changed the maps: %v", bad.Prefix, after)
		}
	}
}

// TestReplaceRandom compares Replace against the set it was given, over random overlapping sets
// of addresses, /64s and CIDRs, repeatedly on the same maps.
func TestReplaceRandom(t *testing.T) {
	x := newUnattached(t, 1<<14)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Now().Add(time.Hour).Round(time.Millisecond)
	random := func() netip.Prefix {
		switch rng.IntN(4) {
		case 0, 1:
			return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(rng.IntN(4)), byte(rng.IntN(256))}), 32)
		case 2:
			return netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(rng.IntN(4)), 0, byte(rng.IntN(256)), 15: 1}), 64)
		default:
			return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(rng.IntN(64)), 0}), 24)
		}
	}
	for round := range 8 {
		var rules []backend.Rule
		want := map[netip.Prefix]time.Time{}
		for range 1 + rng.IntN(3000) {
			p := random()
			var dl time.Time // permanent one time in ten
			if rng.IntN(10) > 0 {
				dl = base.Add(time.Duration(rng.IntN(3)) * time.Minute)
			}
			rules = append(rules, backend.Rule{Prefix: p, Deadline: dl})
			want[p.Masked()] = dl
		}
		if _, _, err := x.Replace(ctx, backend.RuleList(rules)); err != nil {
			t.Fatal(err)
		}
		got := ruleMap(t, x)
		if len(got) != len(want) {
			t.Fatalf("round %d: %d entries, want %d", round, len(got), len(want))
		}
		for p, dl := range want {
			if r, ok := got[p]; !ok || !closeTo(r.Deadline, dl) {
				t.Fatalf("round %d: %s is %+v (present %v), want deadline %v", round, p, r, ok, dl)
			}
		}
	}
}

// TestReplaceKeepsTrapBlocks: a trap block the program made that the rules lack stays in place
// and is returned for adoption; an expired one and a manual one go.
func TestReplaceKeepsTrapBlocks(t *testing.T) {
	x := newUnattached(t, 1024)
	ctx := context.Background()
	block(t, x, "198.18.1.1/32", time.Hour)
	cfg := trapConfig(1, time.Minute)
	setTrap(t, x, cfg)
	for _, src := range []string{"198.18.5.5", "2001:db8:5::5"} {
		dst := host4
		if strings.Contains(src, ":") {
			dst = host6
		}
		if v := run(t, x, frame(t, pkt{src: src, dst: dst, proto: "tcp", dport: 31337, flags: "S"})); v != "drop" {
			t.Fatalf("trap probe from %s: %s", src, v)
		}
	}
	// A trap block of a shorter TTL, already expired: removed like any unwanted entry.
	cfg.TTL = time.Millisecond
	setTrap(t, x, cfg)
	run(t, x, frame(t, pkt{src: "198.18.6.6", dst: host4, proto: "tcp", dport: 31337, flags: "S"}))
	time.Sleep(20 * time.Millisecond)
	if len(ruleMap(t, x)) != 4 {
		t.Fatalf("before Replace: %v, want the manual block and three trap blocks", ruleMap(t, x))
	}

	n, trapped, err := x.Replace(ctx, backend.RuleList{{Prefix: netip.MustParsePrefix("198.18.2.2/32"), Deadline: time.Now().Add(time.Hour)}})
	if err != nil || n != 1 {
		t.Fatalf("Replace: %d, %v", n, err)
	}
	got := map[netip.Prefix]bool{}
	for _, r := range trapped {
		if !r.FromTrap || r.Deadline.IsZero() {
			t.Errorf("kept %+v: want a trap block with its deadline", r)
		}
		got[r.Prefix] = true
	}
	want := []netip.Prefix{netip.MustParsePrefix("198.18.5.5/32"), netip.MustParsePrefix("2001:db8:5::/64")}
	if len(got) != len(want) || !got[want[0]] || !got[want[1]] {
		t.Fatalf("Replace kept %v, want %v", trapped, want)
	}
	all := ruleMap(t, x)
	if len(all) != 3 {
		t.Fatalf("after Replace: %v, want 198.18.2.2 and the two live trap blocks", all)
	}
	for _, p := range append(want, netip.MustParsePrefix("198.18.2.2/32")) {
		if _, ok := all[p]; !ok {
			t.Errorf("%s missing after Replace: %v", p, all)
		}
	}
}

// TestKeyOrders checks the radix-sorted orders against a comparison sort of the same keys, with
// duplicates (which must stay in index order), for both key kinds and for sorted input.
func TestKeyOrders(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 2, 100, 5000} {
		k4 := make([]uint32, n)
		k6 := make([]bpf.SnareAddr6, n)
		for i := range n {
			k4[i] = rng.Uint32() & 0x0f0f00ff // shared bytes and duplicates
			k6[i].Addr[0], k6[i].Addr[7] = byte(rng.IntN(3)), byte(rng.IntN(256))
			if i%3 == 0 {
				k6[i].Addr[15] = byte(rng.IntN(4)) // a low half that is not always zero
			}
		}
		for _, sortedInput := range []bool{false, true} {
			if sortedInput {
				slices.SortFunc(k4, cmpKey4)
				slices.SortFunc(k6, cmpKey6)
			}
			if got, want := keyOrder4(k4), keyOrder(k4, cmpKey4); !slices.Equal(got, want) {
				t.Fatalf("n=%d sorted=%v: keyOrder4 %v, want %v", n, sortedInput, got, want)
			}
			if got, want := keyOrder6(k6), keyOrder(k6, cmpKey6); !slices.Equal(got, want) {
				t.Fatalf("n=%d sorted=%v: keyOrder6 %v, want %v", n, sortedInput, got, want)
			}
		}
	}
}
