package store

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"

	"github.com/snare-dev/snare/internal/testutil"
)

const damagedRules = 20000

// damageRule is the rule whose leaf page the tests damage: one in the middle of the
var damageRule = ruleAddr(damagedRules / 2)

func ruleAddr(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), 32)
}

// recordNeedle is how the rule for p starts inside a rules segment: key length, then key.
func recordNeedle(p netip.Prefix) []byte { return append([]byte{6}, prefixKey(p)...) }

// writeStoreForDamage writes a store of damagedRules rules (fixed times, so its bytes are the
// same every run), 200 offence histories and 20 allowlist entries in one transaction, and
// returns its path and rules.
func writeStoreForDamage(t *testing.T) (string, map[netip.Prefix]Rule) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "snare.db")
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	created := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	rules := map[netip.Prefix]Rule{}
	err = s.Update(func(tx *Tx) error {
		for i := range damagedRules {
			r := Rule{Prefix: ruleAddr(i), Origin: api.OriginImport, Reason: "list", Created: created,
				Deadline: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), Offences: 1, LastOffence: created}
			if i%100 == 0 {
				r.Origin, r.Reason = api.OriginManual, "by hand"
				if err := tx.PutOffence(r.Prefix, Offence{Count: 1, Last: created}); err != nil {
					return err
				}
			}
			rules[r.Prefix] = r
			if err := tx.PutRule(r); err != nil {
				return err
			}
		}
		for i := range 20 {
			a := AllowRecord{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 9, byte(i)}), 32), Created: created}
			if err := tx.PutAllow(a); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path, rules
}

// damageRecord sets byte off of rule p's record inside its segment (0: its key length; len(key)
// + 2: its origin, the value being shorter than 128 bytes) to b: the page stays sound to bbolt.
func damageRecord(t *testing.T, path string, p netip.Prefix, off int, b byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(data, recordNeedle(p))
	if i < 0 {
		t.Fatalf("no record of %s in %s", p, path)
	}
	data[i+off] = b
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

var damages = map[string]func(t *testing.T, path string){
	"data page": func(t *testing.T, path string) {
		if pg := testutil.DamageStorePage(t, path, recordNeedle(damageRule)); pg < 10 {
			t.Fatalf("damaged page %d: not in the middle", pg)
		}
	},
	"meta pages": func(t *testing.T, path string) { testutil.DamageStoreMeta(t, path) },
	// bbolt panics on it inside its Open.
	"freelist": func(t *testing.T, path string) { testutil.DamageStoreFreelist(t, path) },
	// A segment that cannot be split into records.
	"segment": func(t *testing.T, path string) { damageRecord(t, path, damageRule, 0, 0) },
	// A rule with an unknown origin (damageRule has a value of its own, not its neighbour's).
	"rule": func(t *testing.T, path string) { damageRecord(t, path, damageRule, 8, 9) },
}

// A damaged store is refused with ErrStoreCorrupt naming the file, not a panic.
func TestOpenStoreRefusesDamage(t *testing.T) {
	for name, damage := range damages {
		t.Run(name, func(t *testing.T) {
			path, _ := writeStoreForDamage(t)
			damage(t, path)
			_, err := OpenStore(path)
			if !errors.Is(err, ErrStoreCorrupt) || !strings.Contains(err.Error(), path) {
				t.Fatalf("OpenStore: %v; want ErrStoreCorrupt naming %s", err, path)
			}

		})
	}
}

// RecoverStore salvages every readable rule, allowlist entry and offence into a fresh store that
// opens and restores, keeps the damaged file, and says what was lost; a second run finds
// nothing to recover.
func TestRecoverStore(t *testing.T) {
	for name, damage := range damages {
		t.Run(name, func(t *testing.T) {
			path, rules := writeStoreForDamage(t)
			damage(t, path)
			now := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
			rec, err := RecoverStore(path, now)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", rec)
			if rec.Kept != path+".corrupt-20250607T080910Z" {
				t.Errorf("kept as %q", rec.Kept)
			}
			if _, err := OpenStore(rec.Kept); !errors.Is(err, ErrStoreCorrupt) {
				t.Errorf("the kept file opens (%v): it is not the damaged one", err)
			}
			if !strings.Contains(rec.Damage, "corrupt") {
				t.Errorf("damage %q: want it said", rec.Damage)
			}

			s, err := OpenStore(path)
			if err != nil {
				t.Fatalf("the recovered store does not open: %v", err)
			}
			var got []Rule
			if err := s.View(func(tx *Tx) error {
				return tx.ForEachRule(func(r Rule) error { got = append(got, r); return nil })
			}); err != nil {
				t.Fatal(err)
			}
			if len(got) != rec.Rules || s.Count() != rec.Rules {
				t.Errorf("store holds %d rules (count %d), recovery said %d", len(got), s.Count(), rec.Rules)
			}
			for _, r := range got {
				want, ok := rules[r.Prefix]
				if !ok || r.Reason != want.Reason || r.Origin != want.Origin || !r.Deadline.Equal(want.Deadline) ||
					!r.Created.Equal(want.Created) || r.Offences != want.Offences {
					t.Fatalf("salvaged %+v, stored was %+v", r, want)
				}
			}
			var allow []AllowRecord
			var off Offence
			s.View(func(tx *Tx) error {
				allow, _ = tx.Allow()
				off = tx.Offence(ruleAddr(0))
				return nil
			})
			if len(allow) != rec.Allow || off.Count != min(rec.Offences, 1) {
				t.Errorf("allowlist %d (said %d), offence of the first rule %+v (%d said)", len(allow), rec.Allow, off, rec.Offences)
			}
			s.Close()

			switch name {
			case "freelist":
				// The data is whole: all of it is salvaged.
				if rec.Rules != damagedRules || rec.Allow != 20 || rec.Offences != 200 || len(rec.Lost) != 0 {
					t.Errorf("salvaged %d rules, %d allowlist entries, %d offences, lost %q", rec.Rules, rec.Allow, rec.Offences, rec.Lost)
				}
			case "meta pages":
				// Nothing says where the data lies: nothing is salvaged, and the report says so.
				if rec.Rules != 0 || !strings.Contains(strings.Join(rec.Lost, ";"), "everything") {
					t.Errorf("salvaged %d rules, lost %q", rec.Rules, rec.Lost)
				}
			default:
				// One page (or segment, or rule) lost, the rule on it among them, the rest all there.
				if _, ok := findRule(got, damageRule); ok || rec.Rules < damagedRules-300 || rec.Allow != 20 || rec.Offences != 200 {
					t.Errorf("salvaged %d of %d rules (damaged one kept: %v), %d allowlist entries, %d offences", rec.Rules, damagedRules, ok, rec.Allow, rec.Offences)
				}
				if !strings.Contains(strings.Join(rec.Lost, ";"), "rules") {
					t.Errorf("lost %q does not name the rules", rec.Lost)
				}
			}

			if _, err := RecoverStore(path, now.Add(time.Minute)); !errors.Is(err, ErrNothingToRecover) {
				t.Errorf("second recovery: %v, want nothing to recover", err)
			}
		})
	}
}

func findRule(rules []Rule, p netip.Prefix) (Rule, bool) {
	for _, r := range rules {
		if r.Prefix == p {
			return r, true
		}
	}
	return Rule{}, false
}

// A sound store, a missing one and one a snared holds are refused, and nothing changes.
func TestRecoverStoreRefuses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snare.db")
	if _, err := RecoverStore(path, time.Now()); err == nil || errors.Is(err, ErrNothingToRecover) || !strings.Contains(err.Error(), "no store at "+path) {
		t.Errorf("missing store: %v", err)
	}
	s := openTestStore(t, path)
	if _, err := RecoverStore(path, time.Now()); !errors.Is(err, ErrStoreLocked) {
		t.Errorf("store in use: %v, want ErrStoreLocked", err)
	}
	s.Close()
	if _, err := RecoverStore(path, time.Now()); !errors.Is(err, ErrNothingToRecover) || !strings.Contains(err.Error(), path+" is sound") {
		t.Errorf("sound store: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the refused recoveries left %v", entries)
	}
}
