package fallback

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/internal/testutil"
)

// BenchmarkReplace1M loads one million distinct IPv4 /32 blocks (with timeouts) into empty sets
// in a lab namespace: the bulk load a restart or an import does. Run with -benchtime=1x.
func BenchmarkReplace1M(b *testing.B) {
	testutil.RequireRoot(b)
	lab, err := testutil.New(testutil.Config{Peers: []string{"attacker"}})
	if err != nil {
		b.Fatal(err)
	}
	defer lab.Close()
	const n = 1_000_000
	rules := make([]backend.Rule, n)
	deadline := time.Now().Add(24 * time.Hour)
	for i := range rules {
		a := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)})
		if i >= 1<<17 { // beyond 198.18.0.0/15: documentation-free space is fine here, nothing is sent
			a = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
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
		if _, err := e.Replace(ctx, nil); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		got, err := e.Replace(ctx, rules)
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
}
