package fallback

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/internal/testutil"
)

// TestDrop blocks the attacker (IPv4 and its IPv6 /64) and checks on real veths that its packets
// are dropped while the client's pass, with iptables-legacy and iptables-nft.
func TestDrop(t *testing.T) {
	for _, v := range variants() {
		t.Run("variant="+v, func(t *testing.T) {
			f := newFixture(t, v)
			e, ctx := f.e, f.ctx
			att, cli := f.lab.Attacker(), f.lab.Client()
			h4a, h6a := f.hostAddr(att, false), f.hostAddr(att, true)
			h4c, h6c := f.hostAddr(cli, false), f.hostAddr(cli, true)
			if !f.reachable(att.NS, h4a) || !f.reachable(att.NS, h6a) {
				t.Fatal("attacker cannot reach the host before any block")
			}
			rules := []backend.Rule{
				{Prefix: netip.PrefixFrom(att.Addr4(), 32), Deadline: time.Now().Add(time.Hour)},
				{Prefix: netip.PrefixFrom(att.Addr6(), 64).Masked()}, // permanent
			}
			if err := e.Block(ctx, rules); err != nil {
				t.Fatal(err)
			}
			if f.reachable(att.NS, h4a) {
				t.Error("blocked attacker still reaches the host over IPv4")
			}
			if f.reachable(att.NS, h6a) {
				t.Error("blocked attacker still reaches the host over IPv6")
			}
			if !f.reachable(cli.NS, h4c) || !f.reachable(cli.NS, h6c) {
				t.Error("client is dropped too")
			}
			got := rulesByPrefix(t, e)
			for _, r := range rules {
				rs := got[r.Prefix]
				if rs.Hits == 0 || rs.LastHit.IsZero() {
					t.Errorf("%s: hits %d, last hit %v after dropped pings", r.Prefix, rs.Hits, rs.LastHit)
				}
			}
			st, err := e.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Counters.Dropped == 0 || st.Counters.ByReason["drop_exact"] == 0 || st.Counters.BytesByReason["drop_exact"] == 0 || st.Counters.Passed == 0 {
				t.Errorf("status counters %+v", st.Counters)
			}

			// Dry-run: the same entries count but pass.
			if err := e.SetSettings(ctx, backend.Settings{DryRun: true}); err != nil {
				t.Fatal(err)
			}
			before := rulesByPrefix(t, e)[rules[0].Prefix].Hits
			if !f.reachable(att.NS, h4a) {
				t.Error("dry-run still drops")
			}
			if after := rulesByPrefix(t, e)[rules[0].Prefix].Hits; after <= before {
				t.Errorf("dry-run did not count: hits %d -> %d", before, after)
			}
			if st, _ := e.Status(ctx); st.Counters.ByReason["dry_run"] == 0 {
				t.Errorf("dry_run counter is 0: %+v", st.Counters)
			}
			if err := e.SetSettings(ctx, backend.Settings{}); err != nil {
				t.Fatal(err)
			}
			if f.reachable(att.NS, h4a) {
				t.Error("blocked attacker passes after dry-run was switched off")
			}

			// A CIDR block.
			if err := e.Unblock(ctx, []netip.Prefix{rules[0].Prefix}); err != nil {
				t.Fatal(err)
			}
			if !f.reachable(att.NS, h4a) {
				t.Error("unblocked attacker is still dropped")
			}
			if err := e.Block(ctx, []backend.Rule{{Prefix: mustPrefix("198.18.1.0/24")}}); err != nil {
				t.Fatal(err)
			}
			if f.reachable(att.NS, h4a) {
				t.Error("attacker passes a /24 block")
			}
			if !f.reachable(cli.NS, h4c) {
				t.Error("client (outside the /24) is dropped")
			}

			// Remove takes everything away; traffic passes again.
			if err := f.lab.Do(f.lab.Host.NS, func() error { return Remove(f.prefix) }); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if !f.reachable(att.NS, h4a) || !f.reachable(att.NS, h6a) {
				t.Error("attacker still dropped after Remove")
			}
			if err := f.lab.Do(f.lab.Host.NS, func() error { return Remove(f.prefix) }); err != nil {
				t.Errorf("second Remove: %v (want nothing to do)", err)
			}
			for _, set := range f.e.n.allSets() {
				if f.setExists(t, set) {
					t.Errorf("set %s survived Remove", set)
				}
			}
			for _, v6 := range []bool{false, true} {
				if out := f.ipt(t, v6, "-t", "raw", "-S"); strings.Contains(out, strings.ToUpper(f.prefix)) {
					t.Errorf("rules survived Remove:\n%s", out)
				}
			}
		})
	}
}

// TestExpiry: the kernel timeout ends a block without any sweep.
func TestExpiry(t *testing.T) {
	f := newFixture(t, "")
	att := f.lab.Attacker()
	h4 := f.hostAddr(att, false)
	if err := f.e.Block(f.ctx, []backend.Rule{{Prefix: netip.PrefixFrom(att.Addr4(), 32), Deadline: time.Now().Add(3 * time.Second)}}); err != nil {
		t.Fatal(err)
	}
	if f.reachable(att.NS, h4) {
		t.Fatal("attacker passes right after the block")
	}
	if !eventually(10*time.Second, func() bool { return f.lab.Ping(att.NS, h4, 300*time.Millisecond) == nil }) {
		t.Fatal("block did not expire by its kernel timeout")
	}
	if _, ok := rulesByPrefix(t, f.e)[netip.PrefixFrom(att.Addr4(), 32)]; ok {
		t.Error("expired entry still listed by Rules")
	}
}

// TestCoexistence: user rules in the same tables stay exactly as they were, through New, blocks,
// a restart and Remove.
func TestCoexistence(t *testing.T) {
	for _, v := range variants() {
		t.Run("variant="+v, func(t *testing.T) {
			f := newFixture(t, v)
			userRules := [][]string{
				{"-t", "raw", "-A", "PREROUTING", "-p", "icmp", "-m", "comment", "--comment", "user-raw"},
				{"-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"},
				{"-t", "raw", "-N", "USERCHAIN"},
			}
			for _, r := range userRules {
				f.ipt(t, false, r...)
			}
			snapshot := func() (string, string) {
				return userLines(f.ipt(t, false, "-t", "raw", "-S"), strings.ToUpper(f.prefix)),
					f.ipt(t, false, "-t", "filter", "-S")
			}
			raw0, filter0 := snapshot()
			if !strings.Contains(raw0, "user-raw") {
				t.Fatalf("user rule missing from listing:\n%s", raw0)
			}
			if err := f.e.Block(f.ctx, []backend.Rule{{Prefix: netip.PrefixFrom(f.lab.Attacker().Addr4(), 32)}}); err != nil {
				t.Fatal(err)
			}
			f.e.Close()
			f.open(t) // restart
			raw1, filter1 := snapshot()
			if err := f.lab.Do(f.lab.Host.NS, func() error { return Remove(f.prefix) }); err != nil {
				t.Fatal(err)
			}
			raw2, filter2 := snapshot()
			for i, got := range []string{raw1, raw2} {
				if got != raw0 {
					t.Errorf("step %d changed user raw rules:\n%s\nwant:\n%s", i+1, got, raw0)
				}
			}
			for i, got := range []string{filter1, filter2} {
				if got != filter0 {
					t.Errorf("step %d changed the filter table:\n%s\nwant:\n%s", i+1, got, filter0)
				}
			}
			// The user's icmp counting rule still sees traffic: it was not bypassed.
			if !f.reachable(f.lab.Attacker().NS, f.hostAddr(f.lab.Attacker(), false)) {
				t.Error("attacker dropped after Remove")
			}
		})
	}
}

// userLines drops snare's own lines from an iptables -S listing.
func userLines(listing, chain string) string {
	var out []string
	for _, l := range strings.Split(listing, "\n") {
		if strings.Contains(l, " "+chain) || strings.HasSuffix(l, chain) || strings.Contains(l, chain+"-TRAP") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// TestFlushRepaired: someone flushes snare's chain and deletes the jump; Repair (and the watcher)
// put them back, and the block holds again.
func TestFlushRepaired(t *testing.T) {
	for _, v := range variants() {
		t.Run("variant="+v, func(t *testing.T) {
			f := newFixture(t, v)
			att := f.lab.Attacker()
			h4 := f.hostAddr(att, false)
			if err := f.e.Block(f.ctx, []backend.Rule{{Prefix: netip.PrefixFrom(att.Addr4(), 32)}}); err != nil {
				t.Fatal(err)
			}
			if f.reachable(att.NS, h4) {
				t.Fatal("block does not drop")
			}
			chain := strings.ToUpper(f.prefix)
			f.ipt(t, false, "-t", "raw", "-F", chain)
			if !f.reachable(att.NS, h4) {
				t.Fatal("flushing the chain did not lift the block: the test proves nothing")
			}
			repaired, err := f.e.Repair(f.ctx)
			if err != nil || !repaired {
				t.Fatalf("Repair = %v, %v; want true, nil", repaired, err)
			}
			if f.reachable(att.NS, h4) {
				t.Error("block not restored by Repair")
			}
			if repaired, err := f.e.Repair(f.ctx); err != nil || repaired {
				t.Errorf("second Repair = %v, %v; want false, nil", repaired, err)
			}

			// Flushed chain and destroyed sets: the sets come back (allowlist included), and the
			// daemon's Replace refills the blocks.
			cli := f.lab.Client()
			if err := f.e.SetAllow(f.ctx, []netip.Prefix{netip.PrefixFrom(cli.Addr4(), 32)}); err != nil {
				t.Fatal(err)
			}
			f.ipt(t, false, "-t", "raw", "-F", chain)
			f.ipt(t, true, "-t", "raw", "-F", chain)
			for _, set := range []string{f.e.n.allow4, f.e.n.ip4} {
				if out, err := f.lab.Run(f.lab.Host.NS, "ipset", "destroy", set); err != nil {
					t.Fatalf("ipset destroy %s: %v (%s)", set, err, out)
				}
			}
			if repaired, err := f.e.Repair(f.ctx); err != nil || !repaired {
				t.Fatalf("Repair after destroyed sets = %v, %v", repaired, err)
			}
			if !strings.Contains(f.ipsetList(t, f.e.n.allow4), cli.Addr4().String()) {
				t.Errorf("allowlist not restored:\n%s", f.ipsetList(t, f.e.n.allow4))
			}
			if n, _, err := f.e.Replace(f.ctx, backend.RuleList{{Prefix: netip.PrefixFrom(att.Addr4(), 32)}}); err != nil || n != 1 {
				t.Fatalf("Replace after repair = %d, %v; want 1, nil", n, err)
			}
			if f.reachable(att.NS, h4) {
				t.Error("block not restored by Repair + Replace")
			}

			// The watcher does it by itself: delete the jump from PREROUTING this time.
			f.e.Close()
			f.opts.CheckInterval = 200 * time.Millisecond
			f.e = f.open(t)
			f.ipt(t, false, "-t", "raw", "-D", "PREROUTING", "-j", chain)
			if !f.reachable(att.NS, h4) {
				t.Fatal("deleting the jump did not lift the block")
			}
			if !eventually(10*time.Second, func() bool { return !f.reachable(att.NS, h4) }) {
				t.Error("watcher did not restore the jump")
			}
		})
	}
}

// TestRestartKeepsState: a second New on existing sets and rules adopts them: entries, counters
// and the drop stay; a capacity change migrates the sets without losing entries.
func TestRestartKeepsState(t *testing.T) {
	f := newFixture(t, "")
	att := f.lab.Attacker()
	h4 := f.hostAddr(att, false)
	p := netip.PrefixFrom(att.Addr4(), 32)
	deadline := time.Now().Add(time.Hour)
	if err := f.e.Block(f.ctx, []backend.Rule{{Prefix: p, Deadline: deadline}, {Prefix: mustPrefix("2001:db8:77::/64")}}); err != nil {
		t.Fatal(err)
	}
	if f.reachable(att.NS, h4) {
		t.Fatal("block does not drop")
	}
	hits := rulesByPrefix(t, f.e)[p].Hits
	f.e.Close()
	if f.reachable(att.NS, h4) {
		t.Error("block lifted by Close")
	}
	e2 := f.open(t)
	got := rulesByPrefix(t, e2)
	if len(got) != 2 || !sameDeadline(got[p].Deadline, deadline) || got[p].Hits < hits {
		t.Errorf("after restart: %v (hits before %d)", got, hits)
	}
	n, _, err := e2.Replace(f.ctx, backend.RuleList{{Prefix: p, Deadline: deadline}, {Prefix: mustPrefix("2001:db8:77::/64")}})
	if err != nil || n != 0 {
		t.Errorf("Replace with the same rules = %d, %v; want 0, nil", n, err)
	}
	e2.Close()

	f.opts.Capacity = 8192
	e3 := f.open(t)
	if got := rulesByPrefix(t, e3); len(got) != 2 {
		t.Errorf("capacity migration lost entries: %v", got)
	}
	if f.reachable(att.NS, h4) {
		t.Error("block lost by the capacity migration")
	}
	if !strings.Contains(f.ipsetList(t, e3.n.ip4), "maxelem 8192") {
		t.Errorf("set not migrated:\n%s", f.ipsetList(t, e3.n.ip4))
	}

	// Dry-run survives a restart: the new process does not drop before the daemon says so again.
	if err := e3.SetSettings(f.ctx, backend.Settings{DryRun: true}); err != nil {
		t.Fatal(err)
	}
	e3.Close()
	e4 := f.open(t)
	if !f.reachable(att.NS, h4) {
		t.Error("restart in dry-run mode drops")
	}
	if !e4.settings.DryRun {
		t.Error("dry-run not adopted from the chain")
	}
}

// TestIPv6Prefix: changing the IPv6 block length rebuilds the hash:ip set with the new netmask and
// keeps the entries.
func TestIPv6Prefix(t *testing.T) {
	f := newFixture(t, "")
	att := f.lab.Attacker()
	h6 := f.hostAddr(att, true)
	p64 := netip.PrefixFrom(att.Addr6(), 64).Masked()
	if err := f.e.Block(f.ctx, []backend.Rule{{Prefix: p64}}); err != nil {
		t.Fatal(err)
	}
	if err := f.e.SetSettings(f.ctx, backend.Settings{IPv6Prefix: 128}); err != nil {
		t.Fatal(err)
	}
	if _, ok := rulesByPrefix(t, f.e)[p64]; !ok {
		t.Fatalf("the /64 was lost: %v", rulesByPrefix(t, f.e))
	}
	if f.reachable(att.NS, h6) {
		t.Error("the /64 block does not drop after the change")
	}
	p128 := netip.PrefixFrom(att.Addr6(), 128)
	if _, _, err := f.e.Replace(f.ctx, backend.RuleList{{Prefix: p128}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(f.ipsetList(t, f.e.n.ip6), att.Addr6().String()) {
		t.Errorf("a /128 does not sit in the hash:ip set at length 128:\n%s", f.ipsetList(t, f.e.n.ip6))
	}
	if f.reachable(att.NS, h6) {
		t.Error("the /128 block does not drop")
	}
}

// TestInterfaces: with Interfaces set, only traffic arriving on them is filtered.
func TestInterfaces(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.NewLab(t)
	att, cli := lab.Attacker(), lab.Client()
	f := &fixture{lab: lab, ctx: context.Background(), prefix: testPrefix(t)}
	f.opts = Options{Capacity: 64, Prefix: f.prefix, NetNS: filepath.Join("/run/netns", lab.Host.NS),
		CheckInterval: -1, Interfaces: []string{lab.HostIface("attacker").Name}}
	f.e = f.open(t)
	if err := f.e.Block(f.ctx, []backend.Rule{
		{Prefix: netip.PrefixFrom(att.Addr4(), 32)}, {Prefix: netip.PrefixFrom(cli.Addr4(), 32)},
	}); err != nil {
		t.Fatal(err)
	}
	if f.reachable(att.NS, f.hostAddr(att, false)) {
		t.Error("attacker passes on the filtered interface")
	}
	if !f.reachable(cli.NS, f.hostAddr(cli, false)) {
		t.Error("client dropped on an interface that is not filtered")
	}
	st, err := f.e.Status(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Interfaces) != 1 || st.Interfaces[0].Name != lab.HostIface("attacker").Name || st.Interfaces[0].Mode != "iptables" {
		t.Errorf("status interfaces %+v", st.Interfaces)
	}
}

// TestCapacity: maxelem is the configured capacity; a block beyond it fails with a clear error.
func TestCapacity(t *testing.T) {
	testutil.RequireRoot(t)
	lab := testutil.NewLab(t)
	f := &fixture{lab: lab, ctx: context.Background(), prefix: testPrefix(t)}
	f.opts = Options{Capacity: 4, Prefix: f.prefix, NetNS: filepath.Join("/run/netns", lab.Host.NS), CheckInterval: -1}
	f.e = f.open(t)
	if !strings.Contains(f.ipsetList(t, f.e.n.ip4), "maxelem 4 ") {
		t.Fatalf("maxelem not set:\n%s", f.ipsetList(t, f.e.n.ip4))
	}
	var rules []backend.Rule
	for i := range 5 {
		rules = append(rules, backend.Rule{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 200, byte(i + 1)}), 32)})
	}
	err := f.e.Block(f.ctx, rules)
	if err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("Block beyond capacity: %v, want a 'set is full' error", err)
	}
	t.Log(err)
}

// TestIPv6PrefixReplacesCIDRs: a new IPv6 block length also moves the CIDRs of that length into
// the hash:ip set, where Unblock looks for them (backend.Place).
func TestIPv6PrefixReplacesCIDRs(t *testing.T) {
	f := newFixture(t, "")
	p48 := mustPrefix("2001:db8:48::/48")
	if err := f.e.Block(f.ctx, []backend.Rule{{Prefix: p48}}); err != nil {
		t.Fatal(err)
	}
	if err := f.e.SetSettings(f.ctx, backend.Settings{IPv6Prefix: 48}); err != nil {
		t.Fatal(err)
	}
	if _, ok := rulesByPrefix(t, f.e)[p48]; !ok {
		t.Fatalf("the /48 was lost: %v", rulesByPrefix(t, f.e))
	}
	if err := f.e.Unblock(f.ctx, []netip.Prefix{p48}); err != nil {
		t.Fatal(err)
	}
	if r, ok := rulesByPrefix(t, f.e)[p48]; ok {
		t.Errorf("the /48 is still blocked after Unblock: %+v\n%s", r, f.ipsetList(t, f.e.n.net6))
	}
}
