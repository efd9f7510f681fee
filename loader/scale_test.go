package loader

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
)

// rulesN makes n distinct /32 rules from 240.0.0.0/4 (reserved; only ever written to maps,
// never used as packet addresses).
func rulesN(n int, ttl time.Duration) []backend.Rule {
	out := make([]backend.Rule, n)
	dl := time.Now().Add(ttl)
	for i := range out {
		a := netip.AddrFrom4([4]byte{240 + byte(i>>24), byte(i >> 16), byte(i >> 8), byte(i)})
		out[i] = backend.Rule{Prefix: netip.PrefixFrom(a, 32), Deadline: dl}
	}
	return out
}

// BenchmarkMillion loads, reads, replaces with themselves and removes 1,000,000 entries: the
// restore, list, restart and sweep paths.
func BenchmarkMillion(b *testing.B) {
	const n = 1_000_000
	x := newUnattached(b, n)
	rules := rulesN(n, time.Hour)
	ctx := context.Background()
	for b.Loop() {
		t0 := time.Now()
		if err := x.Block(ctx, rules); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		got, err := x.Rules(ctx)
		if err != nil || len(got) != n {
			b.Fatalf("rules: %d, %v", len(got), err)
		}
		t2 := time.Now()
		// A restart: the same entries are pinned already, nothing is written.
		if k, _, err := x.Replace(ctx, backend.RuleList(rules)); err != nil || k != 0 {
			b.Fatalf("replace: %d reinserted, %v", k, err)
		}
		t2r := time.Now()
		ps := make([]netip.Prefix, n)
		for i, r := range rules {
			ps[i] = r.Prefix
		}
		t2r = time.Now()
		if err := x.Unblock(ctx, ps); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		b.ReportMetric(t1.Sub(t0).Seconds(), "block-s")
		b.ReportMetric(t2.Sub(t1).Seconds(), "rules-s")
		b.ReportMetric(t2r.Sub(t2).Seconds(), "replace-s")
		b.ReportMetric(t3.Sub(t2r).Seconds(), "unblock-s")
	}
}

// BenchmarkBlockMillion6 loads 1,000,000 IPv6 /64 entries into empty maps: the restore path of
// a store that holds mostly IPv6 blocks.
func BenchmarkBlockMillion6(b *testing.B) {
	const n = 1_000_000
	x := newUnattached(b, n)
	rules := make([]backend.Rule, n)
	dl := time.Now().Add(time.Hour)
	for i := range rules {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
		rules[i] = backend.Rule{Prefix: netip.PrefixFrom(a, 64), Deadline: dl}
	}
	ps := make([]netip.Prefix, n)
	for i, r := range rules {
		ps[i] = r.Prefix
	}
	ctx := context.Background()
	for b.Loop() {
		if err := x.Block(ctx, rules); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := x.Unblock(ctx, ps); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// TestUnblockMany removes prefixes over several windows on both CPUs, mixed with prefixes that
// are not there, and leaves the rest: every window is applied. A list with a bad prefix at its
// end removes nothing.
func TestUnblockMany(t *testing.T) {
	n := 5*window + 123
	x := newUnattached(t, n)
	ctx := context.Background()
	rules := rulesN(n, time.Hour)
	if err := x.Block(ctx, rules); err != nil {
		t.Fatal(err)
	}
	var gone []netip.Prefix
	for i, r := range rules {
		if i%1000 != 7 {
			gone = append(gone, r.Prefix)
		}
	}
	gone = append(gone, netip.MustParsePrefix("198.18.0.1/32")) // not blocked: ignored
	if err := x.Unblock(ctx, gone); err != nil {
		t.Fatal(err)
	}
	got, err := x.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	left := map[netip.Prefix]bool{}
	for _, r := range got {
		left[r.Prefix] = true
	}
	for i, r := range rules {
		if left[r.Prefix] != (i%1000 == 7) {
			t.Fatalf("%s (rule %d) left %v after Unblock", r.Prefix, i, left[r.Prefix])
		}
	}
	if len(got) != (n+992)/1000 {
		t.Fatalf("%d entries left, want %d", len(got), (n+992)/1000)
	}

	// A bad prefix at the end of a list longer than a window refuses it all: nothing goes.
	var kept []netip.Prefix
	for _, r := range got {
		kept = append(kept, r.Prefix)
	}
	kept = append(slices.Repeat(kept, 2*window/len(kept)+1), netip.PrefixFrom(netip.IPv4Unspecified(), 0))
	if err := x.Unblock(ctx, kept); err == nil || !strings.Contains(err.Error(), "every address") {
		t.Fatalf("Unblock with 0.0.0.0/0 last: %v, want a refusal", err)
	}
	if after, err := x.Rules(ctx); err != nil || len(after) != len(got) {
		t.Fatalf("after a refused Unblock: %d entries (%v), want %d", len(after), err, len(got))
	}
}
