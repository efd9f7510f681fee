package fallback

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
)

func TestRoundTrip(t *testing.T) {
	f := newFixture(t, "")
	e, ctx := f.e, f.ctx
	in1h := time.Now().Add(time.Hour)
	long := time.Now().Add(60 * 24 * time.Hour) // beyond ipset's maximum timeout
	rules := []backend.Rule{
		{Prefix: mustPrefix("198.18.9.1/32"), Deadline: in1h},
		{Prefix: mustPrefix("198.18.10.0/24"), Deadline: long},
		{Prefix: mustPrefix("2001:db8:9::/64")}, // the IPv6 block length: the hash:ip set
		{Prefix: mustPrefix("2001:db8:a::/48"), Deadline: in1h},
		{Prefix: mustPrefix("::ffff:198.18.9.2/128"), Deadline: in1h}, // mapped: stored as IPv4
	}
	if err := e.Block(ctx, rules); err != nil {
		t.Fatalf("Block: %v", err)
	}
	got := rulesByPrefix(t, e)
	want := map[netip.Prefix]time.Time{
		mustPrefix("198.18.9.1/32"):   in1h,
		mustPrefix("198.18.10.0/24"):  long,
		mustPrefix("2001:db8:9::/64"): {},
		mustPrefix("2001:db8:a::/48"): in1h,
		mustPrefix("198.18.9.2/32"):   in1h,
	}
	if len(got) != len(want) {
		t.Fatalf("Rules = %v, want %d entries", got, len(want))
	}
	for p, d := range want {
		r, ok := got[p]
		if !ok {
			t.Fatalf("Rules lacks %s: %v", p, got)
		}
		if !sameDeadline(r.Deadline, d) {
			t.Errorf("%s: deadline %v, want %v", p, r.Deadline, d)
		}
		if r.FromTrap {
			t.Errorf("%s: FromTrap set for a manual block", p)
		}
	}
	// The long block lives without a kernel timeout, its deadline in the comment.
	if !strings.Contains(f.ipsetList(t, f.e.n.net4), "until=") {
		t.Errorf("long block has no until= comment:\n%s", f.ipsetList(t, f.e.n.net4))
	}

	// Re-blocking extends.
	later := time.Now().Add(2 * time.Hour)
	if err := e.Block(ctx, []backend.Rule{{Prefix: mustPrefix("198.18.9.1/32"), Deadline: later}}); err != nil {
		t.Fatal(err)
	}
	if r := rulesByPrefix(t, e)[mustPrefix("198.18.9.1/32")]; !sameDeadline(r.Deadline, later) {
		t.Errorf("extended deadline %v, want %v", r.Deadline, later)
	}

	// Unblock removes, missing prefixes are fine.
	if err := e.Unblock(ctx, []netip.Prefix{mustPrefix("198.18.9.1/32"), mustPrefix("2001:db8:9::/64"), mustPrefix("198.18.77.7/32")}); err != nil {
		t.Fatalf("Unblock: %v", err)
	}
	got = rulesByPrefix(t, e)
	if _, ok := got[mustPrefix("198.18.9.1/32")]; ok || len(got) != 3 {
		t.Fatalf("after Unblock: %v", got)
	}

	// Replace: exactly the given rules; unchanged ones are not re-inserted.
	n, trapped, err := e.Replace(ctx, backend.RuleList{
		{Prefix: mustPrefix("198.18.10.0/24"), Deadline: long},
		{Prefix: mustPrefix("198.18.11.1/32"), Deadline: in1h},
	})
	if err != nil || len(trapped) > 0 {
		t.Fatalf("Replace: %v; trap blocks kept: %v (there are none)", err, trapped)
	}
	if n != 1 {
		t.Errorf("Replace inserted %d, want 1 (the unchanged /24 stays)", n)
	}
	got = rulesByPrefix(t, e)
	if len(got) != 2 || got[mustPrefix("198.18.11.1/32")].Prefix.Bits() != 32 || got[mustPrefix("198.18.10.0/24")].Prefix.Bits() != 24 {
		t.Fatalf("after Replace: %v", got)
	}

	// A deadline already past removes.
	if err := e.Block(ctx, []backend.Rule{{Prefix: mustPrefix("198.18.11.1/32"), Deadline: time.Now().Add(-time.Second)}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := rulesByPrefix(t, e)[mustPrefix("198.18.11.1/32")]; ok {
		t.Error("block with a past deadline is still listed")
	}

	st, err := e.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.Backend != "iptables" || st.Counters.Entries != 1 || st.Counters.Capacity != 4096 {
		t.Errorf("Status = %+v", st)
	}
}

func TestBadInput(t *testing.T) {
	f := newFixture(t, "")
	e, ctx := f.e, f.ctx
	if err := e.Block(ctx, []backend.Rule{{Prefix: mustPrefix("198.18.9.1/32")}}); err != nil {
		t.Fatal(err)
	}
	before := rulesByPrefix(t, e)
	for _, bad := range [][]backend.Rule{
		{{Prefix: mustPrefix("0.0.0.0/0")}},
		{{Prefix: mustPrefix("::/0")}},
		{{Prefix: netip.Prefix{}}},
		{{Prefix: mustPrefix("198.18.9.7/32")}, {Prefix: mustPrefix("0.0.0.0/0")}}, // one bad: none applied
	} {
		if err := e.Block(ctx, bad); err == nil {
			t.Errorf("Block(%v) succeeded", bad)
		}
		if _, _, err := e.Replace(ctx, backend.RuleList(bad)); err == nil {
			t.Errorf("Replace(%v) succeeded", bad)
		}
	}
	if after := rulesByPrefix(t, e); len(after) != len(before) {
		t.Errorf("bad input changed the rules: %v -> %v", before, after)
	}
	if err := e.SetSettings(ctx, backend.Settings{IPv6Prefix: 129}); err == nil {
		t.Error("IPv6Prefix 129 accepted")
	}
	if err := e.SetTrap(ctx, backend.TrapConfig{TCPPorts: []uint16{1}, Threshold: 17, Window: time.Second}); err == nil {
		t.Error("threshold 17 accepted")
	}
	if err := e.SetTrap(ctx, backend.TrapConfig{TCPPorts: []uint16{1}, Threshold: 1}); err == nil {
		t.Error("zero window accepted")
	}
	if err := e.SetAllow(ctx, []netip.Prefix{mustPrefix("0.0.0.0/0")}); err == nil {
		t.Error("allowlist 0.0.0.0/0 accepted")
	}

	for _, o := range []Options{
		{Capacity: 0, Prefix: "sntx"},
		{Capacity: 10, Prefix: "1abc"},
		{Capacity: 10, Prefix: "this-prefix-is-far-too-long"},
		{Capacity: 10, Prefix: "drop"},
		{Capacity: 10, Prefix: "snty", Variant: "bogus"},
		{Capacity: 10, Prefix: "sntz", Interfaces: []string{"bad name"}},
		{Capacity: 10, Prefix: "sntz", NetNS: "/nonexistent/netns"},
	} {
		o.NetNS = f.opts.NetNS
		if o.Prefix == "sntz" && o.Interfaces == nil {
			o.NetNS = "/nonexistent/netns"
		}
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		} else {
			t.Logf("New(%+v): %v", o, err)
		}
	}
	for _, name := range []string{"sntx-ip4", "snty-ip4", "sntz-ip4"} {
		if f.setExists(t, name) {
			t.Errorf("failed New left set %s behind", name)
		}
	}
	if err := Remove("not a prefix"); err == nil {
		t.Error("Remove with a bad prefix succeeded")
	}
}

func (f *fixture) ipsetList(t *testing.T, set string) string {
	t.Helper()
	out, err := f.lab.Run(f.lab.Host.NS, "ipset", "list", set)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Replace leaves a trap block the rules lack in place and returns it (the daemon adopts it),
// as the XDP back-end does; a plain entry nobody wants is removed.
func TestReplaceKeepsTrapBlocks(t *testing.T) {
	f := newFixture(t, "")
	e, ctx := f.e, f.ctx
	now := time.Now()
	trap := mustPrefix("198.18.20.1/32")
	se, _ := entryFor(trap, now.Add(time.Hour), true, now) // as the trap path writes it
	set, isNet := e.setFor(trap, 64)
	if err := e.sets.add(set, isNet, []setEntry{se}); err != nil {
		t.Fatal(err)
	}
	if err := e.Block(ctx, []backend.Rule{{Prefix: mustPrefix("198.18.20.2/32"), Deadline: now.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	n, trapped, err := e.Replace(ctx, backend.RuleList{{Prefix: mustPrefix("198.18.20.3/32"), Deadline: now.Add(time.Hour)}})
	if err != nil || n != 1 {
		t.Fatalf("Replace: %d, %v", n, err)
	}
	if len(trapped) != 1 || trapped[0].Prefix != trap || !trapped[0].FromTrap || trapped[0].Deadline.IsZero() {
		t.Fatalf("Replace kept %+v, want the trap block %s with its deadline", trapped, trap)
	}
	got := rulesByPrefix(t, e)
	if _, ok := got[trap]; !ok || len(got) != 2 {
		t.Fatalf("after Replace: %v, want %s and 198.18.20.3", got, trap)
	}
}
