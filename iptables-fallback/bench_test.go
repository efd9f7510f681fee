package fallback

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
)

// BenchmarkReplace1M loads one million distinct IPv4 /32 blocks (with timeouts) into empty sets
// in a lab namespace: the bulk load a restart or an import does. Run with -benchtime=1x.
func BenchmarkReplace1M(b *testing.B) {
	testutil.RequireRoot(b)
	lab, err := netlab.New(netlab.Config{Peers: []string{"attacker"}})
	if err != nil {
		b.Fatal(err)
	}
	defer lab.Close()
	const n = 1_000_000
	rules := make([]backend.Rule, n)
	deadline := time.Now().Add(24 * time.Hour)
	for i := range rules {
		a := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)})
		if i >= 1<<17 { // beyond 198.18.0.0/15: reserved 240.0.0.0/8, only ever set entries, never sent
			a = netip.AddrFrom4([4]byte{240, byte(i >> 16), byte(i >> 8), byte(i)})
		}
		rules[i] = backend.Rule{Prefix: netip.PrefixFrom(a, 32), Deadline: deadline}
	}
	e, err := New(Options{Capacity: n, Prefix: testPrefixB(), NetNS: filepath.Join("/run/netns", lab.Host.NS), CheckInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		if _, _, err := e.Replace(ctx, backend.RuleList(nil)); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		got, _, err := e.Replace(ctx, backend.RuleList(rules))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/load")
		if got != n {
			b.Fatalf("inserted %d, want %d", got, n)
		}
	}
	b.StopTimer()
	start := time.Now()
	rs, err := e.Rules(ctx)
	if err != nil || len(rs) != n {
		b.Fatalf("Rules: %d, %v", len(rs), err)
	}
	b.ReportMetric(time.Since(start).Seconds(), "s/list")

	// A restart's reconciliation: everything already in place.
	start = time.Now()
	if got, _, err := e.Replace(ctx, backend.RuleList(rules)); err != nil || got != 0 {
		b.Fatalf("reconcile: %d, %v", got, err)
	}
	b.ReportMetric(time.Since(start).Seconds(), "s/reconcile")

	// The yardstick: `ipset restore` of the same list into a set of the same kind.
	var script strings.Builder
	set := e.n.ip4 + tmpSuffix
	fmt.Fprintf(&script, "create %s hash:ip family inet hashsize %d maxelem %d timeout 0 counters comment\n", set, hashSize(n), n)
	for _, r := range rules {
		fmt.Fprintf(&script, "add %s %s timeout 86400\n", set, r.Prefix.Addr())
	}
	cmd := exec.Command("ip", "netns", "exec", lab.Host.NS, "ipset", "restore")
	cmd.Stdin = strings.NewReader(script.String())
	start = time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("ipset restore: %v: %s", err, out)
	}
	b.ReportMetric(time.Since(start).Seconds(), "s/ipset-restore")
}
