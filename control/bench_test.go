package control

import (
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/blocklist"
	"github.com/snare-dev/snare/control/store"
	"github.com/snare-dev/snare/internal/testutil"
)

// BenchmarkStoreImport1M writes 1,000,000 rules in one transaction into an empty store, the
// store's share of `snarectl import` of a million addresses.
func BenchmarkStoreImport1M(b *testing.B) {
	good := benchPrefixes(1_000_000)
	now := time.Now()
	rules := make([]store.Rule, len(good))
	for i, p := range good {
		rules[i] = store.Rule{Prefix: p, Reason: "import", Origin: api.OriginImport, Created: now, Deadline: now.Add(5 * 24 * time.Hour)}
	}
	slices.SortFunc(rules, func(a, b store.Rule) int { return a.Prefix.Compare(b.Prefix) })
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		s, err := store.OpenStore(filepath.Join(b.TempDir(), "snare.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := s.BulkPutRules(len(rules), func(i int) store.Rule { return rules[i] }, nil, nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if s.Count() != len(rules) {
			b.Fatalf("count %d", s.Count())
		}
		s.Close()
		b.StartTimer()
	}
}

// BenchmarkStoreExpire1M finds and deletes 1,000,000 expired rules: the store's share of a sweep
// of a million expired entries.
func BenchmarkStoreExpire1M(b *testing.B) {
	good := benchPrefixes(1_000_000)
	past := time.Now().Add(-time.Hour)
	rules := make([]store.Rule, len(good))
	for i, p := range good {
		rules[i] = store.Rule{Prefix: p, Origin: api.OriginImport, Created: past, Deadline: past.Add(time.Minute)}
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		s, err := store.OpenStore(filepath.Join(b.TempDir(), "snare.db"))
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Update(func(tx *store.Tx) error { return tx.PutRulesSorted(rules) }); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		var n int
		err = s.Update(func(tx *store.Tx) error {
			expired, _, err := tx.ExpiredPrefixes(time.Now(), 0)
			if err != nil {
				return err
			}
			n = len(expired)
			return tx.DeleteExpired(time.Now())
		})
		b.StopTimer()
		if err != nil || n != len(rules) || s.Count() != 0 {
			b.Fatalf("expired %d, left %d, %v", n, s.Count(), err)
		}
		s.Close()
		b.StartTimer()
	}
}

// benchPrefixes are the prefixes of testutil.BenchList(n).
func benchPrefixes(n int) []netip.Prefix {
	out := make([]netip.Prefix, 0, n)
	blocklist.NewParser(defaultRules, time.Now(), 1).Parse(testutil.BenchList(n), func(l blocklist.Line) { out = append(out, l.Prefix) })
	return out
}
