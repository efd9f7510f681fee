package store

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"

	bolt "go.etcd.io/bbolt"
)

func ms(t time.Time) time.Time { return time.UnixMilli(t.UnixMilli()) }

func openTestStore(t *testing.T, path string) *Store {
	t.Helper()
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRuleEncodingRoundTrip(t *testing.T) {
	now := ms(time.Now())
	for _, r := range []Rule{
		{Prefix: netip.MustParsePrefix("198.18.0.7/32"), Reason: "manual", Origin: api.OriginManual, Created: now, Deadline: now.Add(5 * 24 * time.Hour), Offences: 1, LastOffence: now},
		{Prefix: netip.MustParsePrefix("2001:db8:1::/64"), Reason: "trap: tcp/31337 SYN", Origin: api.OriginTrap, Created: now, Offences: 7, LastOffence: now},
		{Prefix: netip.MustParsePrefix("198.18.0.0/15"), Origin: api.OriginImport, Created: now.Add(-48 * time.Hour), Deadline: now.Add(time.Millisecond)},
		{Prefix: netip.MustParsePrefix("2001:db8::/32"), Reason: "ünïcode ; # reason", Origin: api.OriginManual},
	} {
		k := prefixKey(r.Prefix)
		p, err := parsePrefixKey(k)
		if err != nil || p != r.Prefix {
			t.Fatalf("prefix key round trip of %s: got %s, %v", r.Prefix, p, err)
		}
		got, err := decodeRule(p, encodeRule(nil, r))
		if err != nil {
			t.Fatal(err)
		}
		if got.Prefix != r.Prefix || got.Reason != r.Reason || got.Origin != r.Origin || !got.Created.Equal(r.Created) ||
			!got.Deadline.Equal(r.Deadline) || got.Offences != r.Offences || !got.LastOffence.Equal(r.LastOffence) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, r)
		}
	}
	if _, err := decodeRule(netip.MustParsePrefix("198.18.0.1/32"), []byte{9}); err == nil {
		t.Error("corrupt rule decoded without error")
	}
	if _, err := parsePrefixKey([]byte{4, 32, 1}); err == nil {
		t.Error("corrupt key decoded without error")
	}
}

// The key order must equal netip.Prefix.Compare: the sweeper merges kernel and store by it.
func TestPrefixKeyOrder(t *testing.T) {
	ps := []string{"198.18.0.7/32", "198.18.0.0/16", "198.19.0.0/16", "2001:db8::/64", "2001:db8::/32", "198.18.0.6/32", "2001:db8:ffff::/48"}
	s := openTestStore(t, filepath.Join(t.TempDir(), "snare.db"))
	var rules []Rule
	for _, p := range ps {
		rules = append(rules, Rule{Prefix: netip.MustParsePrefix(p), Origin: api.OriginManual})
	}
	if err := s.Update(func(tx *Tx) error { return tx.PutRulesSorted(rules) }); err != nil {
		t.Fatal(err)
	}
	var got []netip.Prefix
	if err := s.View(func(tx *Tx) error {
		return tx.ForEachRule(func(r Rule) error { got = append(got, r.Prefix); return nil })
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ps) {
		t.Fatalf("got %d rules, want %d", len(got), len(ps))
	}
	for i := 1; i < len(got); i++ {
		if got[i-1].Compare(got[i]) >= 0 {
			t.Errorf("store order %s before %s disagrees with netip.Prefix.Compare", got[i-1], got[i])
		}
	}
}

func TestStoreRoundTripAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "snare.db")
	now := ms(time.Now())
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	a := Rule{Prefix: netip.MustParsePrefix("198.18.0.7/32"), Reason: "r1", Origin: api.OriginManual, Created: now, Deadline: now.Add(time.Hour), Offences: 2, LastOffence: now}
	b := Rule{Prefix: netip.MustParsePrefix("2001:db8:7::/64"), Reason: "r2", Origin: api.OriginTrap, Created: now}
	c := Rule{Prefix: netip.MustParsePrefix("198.18.9.0/24"), Reason: "r3", Origin: api.OriginImport, Created: now, Deadline: now.Add(time.Minute)}
	err = s.Update(func(tx *Tx) error {
		for _, r := range []Rule{a, b, c} {
			if err := tx.PutRule(r); err != nil {
				return err
			}
		}
		if err := tx.PutOffence(a.Prefix, Offence{Count: 2, Last: now}); err != nil {
			return err
		}
		if err := tx.PutOffence(c.Prefix, Offence{Count: 1, Last: now.Add(-40 * 24 * time.Hour)}); err != nil {
			return err
		}
		return tx.PutAllow(AllowRecord{Prefix: netip.MustParsePrefix("198.18.100.0/24"), Created: now})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(tx *Tx) error {
		ok, err := tx.DeleteRule(c.Prefix)
		if !ok {
			return fmt.Errorf("delete of a stored rule reported nothing deleted")
		}
		if ok, _ := tx.DeleteRule(netip.MustParsePrefix("198.18.77.77/32")); ok {
			return fmt.Errorf("delete of an absent rule reported a deletion")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// A failing transaction changes nothing.
	if err := s.Update(func(tx *Tx) error {
		if err := tx.PutRule(Rule{Prefix: netip.MustParsePrefix("198.18.5.5/32"), Origin: api.OriginManual}); err != nil {
			return err
		}
		return fmt.Errorf("enforcer refused")
	}); err == nil {
		t.Fatal("a failing transaction returned no error")
	}
	s.Close()

	s = openTestStore(t, path)
	err = s.View(func(tx *Tx) error {
		if n := s.Count(); n != 2 {
			t.Errorf("%d rules after reopen, want 2", n)
		}
		for _, want := range []Rule{a, b} {
			got, ok, err := tx.Rule(want.Prefix)
			if err != nil || !ok {
				t.Errorf("rule %s lost: ok=%v err=%v", want.Prefix, ok, err)
				continue
			}
			if got.Reason != want.Reason || !got.Deadline.Equal(want.Deadline) || got.Offences != want.Offences || got.Origin != want.Origin {
				t.Errorf("rule %s: got %+v want %+v", want.Prefix, got, want)
			}
		}
		if _, ok, _ := tx.Rule(c.Prefix); ok {
			t.Error("deleted rule is back")
		}
		if _, ok, _ := tx.Rule(netip.MustParsePrefix("198.18.5.5/32")); ok {
			t.Error("rule of a rolled-back transaction is stored")
		}
		if o := tx.Offence(a.Prefix); o.Count != 2 || !o.Last.Equal(now) {
			t.Errorf("offence history %+v", o)
		}
		al, err := tx.Allow()
		if err != nil || len(al) != 1 || al[0].Prefix != netip.MustParsePrefix("198.18.100.0/24") {
			t.Errorf("allowlist after reopen: %v %v", al, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var pruned int
	if err := s.Update(func(tx *Tx) error {
		var err error
		pruned, err = tx.PruneOffences(now.Add(-30 * 24 * time.Hour))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if pruned != 1 {
		t.Errorf("pruned %d offence histories, want 1 (the 40-day-old one)", pruned)
	}
}

func TestStoreRefusesSecondOpener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snare.db")
	openTestStore(t, path)
	if _, err := OpenStore(path); err == nil {
		t.Fatal("a second OpenStore of the same file succeeded")
	} else if !errorsIs(err, ErrStoreLocked) {
		t.Fatalf("second open: %v, want ErrStoreLocked", err)
	}
}

const storeChildEnv = "SNARE_TEST_STORE_CHILD"

// TestStoreChild is not a test: it is the process TestStoreSurvivesKill kills. It commits rules
// one transaction at a time and prints the number of each after its commit returned.
func TestStoreChild(t *testing.T) {
	path := os.Getenv(storeChildEnv)
	if path == "" {
		t.Skip("helper process for TestStoreSurvivesKill")
	}
	s, err := OpenStore(path)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(3)
	}
	for i := 0; i < 100000; i++ {
		err := s.Update(func(tx *Tx) error {
			return tx.PutRule(Rule{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32),
				Origin: api.OriginManual, Reason: "child", Created: time.Now()})
		})
		if err != nil {
			fmt.Println("update:", err)
			os.Exit(3)
		}
		fmt.Println(i)
	}
	os.Exit(0)
}

// Every change the store acknowledged survives a SIGKILL in the middle of later writes, and
// the database opens cleanly afterwards.
func TestStoreSurvivesKill(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snare.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestStoreChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), storeChildEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	acked := -1
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		n, err := strconv.Atoi(sc.Text())
		if err != nil {
			t.Fatalf("child: %s", sc.Text())
		}
		acked = n
		if acked >= 300 {
			break
		}
	}
	if acked < 300 {
		t.Fatalf("child acknowledged only %d writes", acked)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true

	s := openTestStore(t, path)
	err = s.View(func(tx *Tx) error {
		for i := 0; i <= acked; i++ {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32)
			if _, ok, err := tx.Rule(p); err != nil || !ok {
				return fmt.Errorf("acknowledged write %d (%s) lost after kill -9 (err %v)", i, p, err)
			}
		}
		if n := s.Count(); n < acked+1 {
			return fmt.Errorf("%d rules, want at least %d", n, acked+1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d acknowledged writes survived SIGKILL", acked+1)
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

func TestDeleteExpired(t *testing.T) {
	for _, tc := range []struct {
		name          string
		expired, live int
		every         int // > 0: rule i is live when i%every == 0, else the first expired are
	}{
		{"few expired: deleted one by one", 3, 5, 0},
		{"most expired: bucket rebuilt", 15000, 5000, 0},
		{"all expired", 12000, 0, 0},
		{"one live in every segment", 12000 - (12000+segMax-1)/segMax, (12000 + segMax - 1) / segMax, segMax},
		{"a few live in every segment", 12000 - (12000+6)/7, (12000 + 6) / 7, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTestStore(t, filepath.Join(t.TempDir(), "snare.db"))
			now := ms(time.Now())
			var rules []Rule
			var firstLive time.Time
			for i := 0; i < tc.expired+tc.live; i++ {
				r := Rule{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32), Origin: api.OriginImport, Created: now}
				expired := i < tc.expired
				if tc.every > 0 {
					expired = i%tc.every != 0
				}
				switch {
				case expired:
					r.Deadline = now.Add(-time.Minute)
				case i%2 == 0:
					r.Deadline = now.Add(time.Duration(i+1) * time.Second)
					if firstLive.IsZero() {
						firstLive = r.Deadline
					}
				}
				rules = append(rules, r)
			}
			if err := s.Update(func(tx *Tx) error { return tx.PutRulesSorted(rules) }); err != nil {
				t.Fatal(err)
			}
			var gone []netip.Prefix
			if err := s.Update(func(tx *Tx) error {
				var err error
				if gone, _, err = tx.ExpiredPrefixes(now, 0); err != nil {
					return err
				}
				return tx.DeleteExpired(now)
			}); err != nil {
				t.Fatal(err)
			}
			if len(gone) != tc.expired || s.Count() != tc.live {
				t.Errorf("deleted %d, left %d; want %d, %d", len(gone), s.Count(), tc.expired, tc.live)
			}
			// The earliest deadline left is what Due goes by.
			if due := s.Due(firstLive); firstLive.IsZero() == due || s.Due(firstLive.Add(-time.Millisecond)) {
				t.Errorf("Due(%s) %v, Due a millisecond before %v: want due exactly from the first live deadline", firstLive, due, s.Due(firstLive.Add(-time.Millisecond)))
			}
			s.View(func(tx *Tx) error {
				n := 0
				tx.ForEachRule(func(r Rule) error {
					n++
					if r.Expired(now) {
						t.Errorf("expired %s survived", r.Prefix)
					}
					return nil
				})
				if n != tc.live {
					t.Errorf("%d rules in the bucket, want %d", n, tc.live)
				}
				return nil
			})
		})
	}
}

// BulkPutRules merges with what is stored: stored rules it does not
// name stay, those it names are replaced, and a failing ready leaves the store as it was.
func TestBulkPutRulesMerges(t *testing.T) {
	const bulkTestN = 20_000
	s, err := OpenStore(filepath.Join(t.TempDir(), "snare.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)}), 32)
	}
	now := time.Now().Truncate(time.Millisecond)
	// Stored: every third address, reason "old".
	err = s.Update(func(tx *Tx) error {
		for i := 0; i < 3*bulkTestN; i += 3 {
			if err := tx.PutRule(Rule{Prefix: addr(i), Reason: "old", Origin: api.OriginManual, Created: now}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// New: every even address.
	n := 3 * bulkTestN / 2
	at := func(i int) Rule {
		return Rule{Prefix: addr(2 * i), Reason: "new", Origin: api.OriginImport, Created: now}
	}
	if err := s.BulkPutRules(n, at, func() error { return errors.New("kernel said no") }, nil); err == nil || s.Count() != bulkTestN {
		t.Fatalf("failed bulk put: %v, count %d", err, s.Count())
	}
	if err := s.BulkPutRules(n, at, nil, nil); err != nil {
		t.Fatal(err)
	}
	want := map[netip.Prefix]string{}
	for i := 0; i < 3*bulkTestN; i += 3 {
		want[addr(i)] = "old"
	}
	for i := range n {
		want[addr(2*i)] = "new"
	}
	if s.Count() != len(want) {
		t.Fatalf("count %d, want %d", s.Count(), len(want))
	}
	holdsReasons(t, s, want)
}

// A store written by format 1 (one bbolt key per rule) is migrated to segments on open.
func TestStoreMigratesFormat1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snare.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Millisecond)
	var want []netip.Prefix
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRules, bucketOffences, bucketAllow, bucketMeta} {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		for i := range 500 {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32)
			want = append(want, p)
			r := Rule{Prefix: p, Reason: "old", Origin: api.OriginManual, Created: now, Deadline: now.Add(time.Hour)}
			if err := tx.Bucket(bucketRules).Put(prefixKey(p), encodeRule(nil, r)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put([]byte("version"), []byte{1})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Count() != len(want) {
		t.Fatalf("count %d, want %d", s.Count(), len(want))
	}
	err = s.View(func(tx *Tx) error {
		for _, p := range want {
			r, ok, err := tx.Rule(p)
			if err != nil || !ok || r.Reason != "old" || !r.Deadline.Equal(now.Add(time.Hour)) {
				return fmt.Errorf("%s: %+v %v %v", p, r, ok, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRulesWithin: the range walk finds exactly the rules inside a prefix (as a scan of every
// rule would), across segment boundaries, starting mid-segment, for both families.
func TestRulesWithin(t *testing.T) {
	s := openTestStore(t, filepath.Join(t.TempDir(), "snare.db"))
	var rules []Rule
	for i := 0; i < 1000; i++ { // 198.18.0.0 - 198.18.3.231: many segments
		rules = append(rules, Rule{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32), Origin: api.OriginManual})
	}
	for _, p := range []string{"198.16.0.0/15", "198.18.2.0/24", "198.18.2.0/23", "198.19.0.0/16", "2001:db8::/64", "2001:db8:0:1::/64", "2001:db8:1::/64"} {
		rules = append(rules, Rule{Prefix: netip.MustParsePrefix(p), Origin: api.OriginManual})
	}
	slices.SortFunc(rules, func(a, b Rule) int { return a.Prefix.Compare(b.Prefix) })
	if err := s.Update(func(tx *Tx) error { return tx.PutRulesSorted(rules) }); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"198.18.2.0/24", "198.18.1.77/32", "198.18.0.0/22", "198.18.3.232/29", "198.18.0.0/16", "2001:db8::/48", "2001:db8:1::/48", "10.0.0.0/8", "0.0.0.0/0"} {
		a := netip.MustParsePrefix(q)
		var want, got []netip.Prefix
		for _, r := range rules {
			if a.Bits() <= r.Prefix.Bits() && a.Contains(r.Prefix.Addr()) {
				want = append(want, r.Prefix)
			}
		}
		if err := s.View(func(tx *Tx) error {
			return tx.RulesWithin(a, func(r Rule) error { got = append(got, r.Prefix); return nil })
		}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("RulesWithin(%s): %d rules %v..., want %d", q, len(got), got[:min(len(got), 3)], len(want))
		}
	}
}

// TestCommitsBefore: a read and a following write transaction agree while nothing was
// committed between them (restore then uses the snapshot it read early), and disagree after
// a commit (restore reads the store again).
func TestCommitsBefore(t *testing.T) {
	s := openTestStore(t, filepath.Join(t.TempDir(), "snare.db"))
	var read, write int
	if err := s.View(func(tx *Tx) error { read = tx.CommitsBefore(); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(tx *Tx) error { write = tx.CommitsBefore(); return nil }); err != nil {
		t.Fatal(err)
	}
	if read != write {
		t.Fatalf("nothing committed between them, yet read sees %d commits and write %d", read, write)
	}
	if err := s.Update(func(tx *Tx) error {
		if tx.CommitsBefore() == read {
			return fmt.Errorf("a write after a commit sees the same %d commits", read)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// The per-family counts behind block.capacity follow every way rules come and go, and agree
// with the store's contents after a reopen.
func TestCountPerFamily(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snare.db")
	s := openTestStore(t, path)
	now := ms(time.Now())
	want := func(v4, v6 int) {
		t.Helper()
		if g4, g6 := s.CountFamily(false), s.CountFamily(true); g4 != v4 || g6 != v6 || s.Count() != v4+v6 {
			t.Fatalf("counts v4 %d v6 %d (total %d), want %d and %d", g4, g6, s.Count(), v4, v6)
		}
	}
	put := func(rs ...Rule) {
		t.Helper()
		if err := s.Update(func(tx *Tx) error { return tx.PutRulesSorted(rs) }); err != nil {
			t.Fatal(err)
		}
	}
	r := func(p string, d time.Time) Rule {
		return Rule{Prefix: netip.MustParsePrefix(p), Created: now, Deadline: d}
	}
	put(r("198.18.0.1/32", now.Add(time.Hour)), r("198.18.0.2/32", now.Add(-time.Second)), r("2001:db8::/64", now.Add(-time.Second)))
	want(2, 1)
	put(r("198.18.0.1/32", now.Add(2*time.Hour))) // replaced, not added
	want(2, 1)
	bulk := []Rule{r("198.18.0.1/32", now), r("198.18.1.0/24", now.Add(time.Hour)), r("2001:db8:1::/64", time.Time{}), r("2001:db8:2::/48", now.Add(time.Hour))}
	if err := s.BulkPutRules(len(bulk), func(i int) Rule { return bulk[i] }, nil, nil); err != nil {
		t.Fatal(err)
	}
	want(3, 3)
	if err := s.Update(func(tx *Tx) error { return tx.DeleteExpired(now) }); err != nil {
		t.Fatal(err)
	}
	want(1, 2) // 198.18.0.1 (deadline now), 198.18.0.2 and 2001:db8::/64 expired
	if err := s.Update(func(tx *Tx) error { _, err := tx.DeleteRule(netip.MustParsePrefix("2001:db8:2::/48")); return err }); err != nil {
		t.Fatal(err)
	}
	want(1, 1)
	s.Close()
	s = openTestStore(t, path)
	want(1, 1)
}

// MergeSorted leaves the store as a rule-by-rule merge would: rules stored, kept or replaced as
// merge says, in segments that read back whole after a reopen, with the right counts; batches
// before, among and after the stored rules, into an empty store too.
func TestMergeSorted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snare.db")
	s := openTestStore(t, path)
	addr := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)}), 32)
	}
	now := ms(time.Now())
	want := map[netip.Prefix]string{}
	batch := func(from, to, step int, reason string) []Rule {
		var rules []Rule
		for i := from; i < to; i += step {
			rules = append(rules, Rule{Prefix: addr(i), Reason: reason, Origin: api.OriginFleet, Created: now, Deadline: now.Add(time.Hour)})
		}
		return rules
	}
	// merge keeps a stored rule whose reason is "keep", replaces the others.
	merge := func(r, old Rule, had bool) (Rule, bool, error) {
		if had && old.Reason == "keep" {
			return Rule{}, false, nil
		}
		return r, true, nil
	}
	steps := []struct {
		from, to, step int
		reason         string
	}{
		{1000, 2000, 1, "keep"}, // into an empty store: one run, split into segments
		{0, 5000, 3, "a"},       // before, among (kept or replaced) and after
		{500, 3000, 7, "b"},
		{5000, 5001, 1, "c"},
	}
	for _, st := range steps {
		rules := batch(st.from, st.to, st.step, st.reason)
		if err := s.Update(func(tx *Tx) error { return tx.MergeSorted(rules, merge) }); err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if want[r.Prefix] != "keep" {
				want[r.Prefix] = r.Reason
			}
		}
	}
	// A merge that fails writes nothing.
	boom := errors.New("boom")
	if err := s.Update(func(tx *Tx) error {
		return tx.MergeSorted(batch(0, 6000, 2, "lost"), func(r, old Rule, had bool) (Rule, bool, error) {
			if r.Prefix == addr(5000) {
				return Rule{}, false, boom
			}
			return r, true, nil
		})
	}); !errors.Is(err, boom) {
		t.Fatalf("failed merge: %v", err)
	}
	s.Close()
	s = openTestStore(t, path) // the open checks every segment
	defer s.Close()
	if s.Count() != len(want) {
		t.Fatalf("count %d, want %d", s.Count(), len(want))
	}
	holdsReasons(t, s, want)
}

// holdsReasons fails unless s holds exactly the prefixes of want, each with its reason.
func holdsReasons(t *testing.T, s *Store, want map[netip.Prefix]string) {
	t.Helper()
	got := 0
	err := s.View(func(tx *Tx) error {
		return tx.ForEachRule(func(r Rule) error {
			got++
			if want[r.Prefix] != r.Reason {
				return fmt.Errorf("%s: reason %q, want %q", r.Prefix, r.Reason, want[r.Prefix])
			}
			return nil
		})
	})
	if err != nil || got != len(want) {
		t.Fatalf("walked %d of %d: %v", got, len(want), err)
	}
}
