package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"

	bolt "go.etcd.io/bbolt"
)

// segRules returns n /32 rules of 198.18.0.0/15 in key order; every third one has a value of its
// own, the others share one (as an import's do).
func segRules(n int, now time.Time) []Rule {
	rules := make([]Rule, n)
	for i := range rules {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)}), 32)
		r := Rule{Prefix: p, Reason: "import list", Origin: api.OriginImport, Created: now, Deadline: now.Add(time.Hour)}
		if i%3 == 0 {
			r.Reason, r.Origin = fmt.Sprintf("manual %d", i), api.OriginManual
		}
		rules[i] = r
	}
	return rules
}

// checkSegments walks the raw rules bucket: every segment within segMax and segBytes (unless it
// is a single record), records in key order, and every rule as want has it.
func checkSegments(t *testing.T, s *Store, want []Rule) {
	t.Helper()
	got := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		var last []byte
		return tx.Bucket(bucketRules).ForEach(func(sk, seg []byte) error {
			recs, err := decodeSeg(nil, seg)
			if err != nil {
				return err
			}
			if len(recs) > 1 && (len(recs) > segMax || len(seg) > segBytes) {
				return fmt.Errorf("segment %x: %d records, %d bytes (limits %d, %d)", sk, len(recs), len(seg), segMax, segBytes)
			}
			if !bytes.Equal(recs[0].k, sk) {
				return fmt.Errorf("segment %x starts with record %x", sk, recs[0].k)
			}
			for _, r := range recs {
				if last != nil && bytes.Compare(last, r.k) >= 0 {
					return fmt.Errorf("record %x after %x", r.k, last)
				}
				last = r.k
				p, err := parsePrefixKey(r.k)
				if err != nil {
					return err
				}
				rule, err := decodeRule(p, r.v)
				if err != nil {
					return err
				}
				if got >= len(want) {
					return fmt.Errorf("more rules than the %d written", len(want))
				}
				w := want[got]
				if rule.Prefix != w.Prefix || rule.Reason != w.Reason || rule.Origin != w.Origin || !rule.Deadline.Equal(w.Deadline) {
					return fmt.Errorf("rule %d: %+v, want %+v", got, rule, w)
				}
				got++
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != len(want) {
		t.Fatalf("%d rules stored, want %d", got, len(want))
	}
}

// Repeated values are stored once per segment, and read back the same, whether written in bulk,
// as a sorted batch or rule by rule (which splits segments as they outgrow their limits).
func TestSegmentsRepeatValues(t *testing.T) {
	now := ms(time.Now())
	rules := segRules(5000, now)
	writes := map[string]func(s *Store) error{
		"bulk": func(s *Store) error {
			return s.BulkPutRules(len(rules), func(i int) Rule { return rules[i] }, nil, nil)
		},
		"sorted batch": func(s *Store) error {
			return s.Update(func(tx *Tx) error { return tx.PutRulesSorted(rules) })
		},
		"one by one, backwards": func(s *Store) error {
			return s.Update(func(tx *Tx) error {
				for i := len(rules) - 1; i >= 0; i-- {
					if err := tx.PutRule(rules[i]); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	for name, write := range writes {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "snare.db")
			s := openTestStore(t, path)
			if err := write(s); err != nil {
				t.Fatal(err)
			}
			checkSegments(t, s, rules)
			// Deleting every other rule rewrites segments whose first values may now repeat.
			var kept []Rule
			err := s.Update(func(tx *Tx) error {
				for i, r := range rules {
					if i%2 == 1 {
						if _, err := tx.DeleteRule(r.Prefix); err != nil {
							return err
						}
						continue
					}
					kept = append(kept, r)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			checkSegments(t, s, kept)
			s.Close()
			s = openTestStore(t, path)
			if s.Count() != len(kept) {
				t.Fatalf("count after reopen %d, want %d", s.Count(), len(kept))
			}
			checkSegments(t, s, kept)
		})
	}
}

// The repeated values are what makes an import small on disk: the 3,000 rules that share one
// value cost their keys and two bytes each.
func TestSegmentsRepeatValuesAreSmall(t *testing.T) {
	now := ms(time.Now())
	rules := segRules(3000, now)
	for i := range rules {
		rules[i].Reason, rules[i].Origin = "import list", api.OriginImport
	}
	var recs []record
	for _, r := range rules {
		recs = append(recs, record{prefixKey(r.Prefix), encodeRule(nil, r)})
	}
	full, want := 0, len(recs[0].v)
	for _, r := range recs {
		full += 2 + len(r.k) + len(r.v)
		want += 2 + len(r.k) // key length, key, zero value length
	}
	seg := appendSeg(nil, recs)
	if len(seg) != want {
		t.Fatalf("encoded %d bytes, want %d (%d without repeats)", len(seg), want, full)
	}
}

// A segment whose first record claims to repeat a value that is not there is corrupt, not read
// as an empty rule.
func TestSegmentRepeatWithoutValueIsCorrupt(t *testing.T) {
	k := prefixKey(netip.MustParsePrefix("198.18.0.1/32"))
	seg := append([]byte{byte(len(k))}, k...)
	seg = binary.AppendUvarint(seg, 0)
	if _, err := decodeSeg(nil, seg); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("decodeSeg = %v, want a corrupt segment error", err)
	}
}

// A format-2 store (segments without repeated values) opens as format 3 unchanged; a store of a
// newer format is refused, and left as it was.
func TestStoreFormatVersions(t *testing.T) {
	now := ms(time.Now())
	rules := segRules(300, now)
	write := func(path string, version byte) {
		t.Helper()
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketRules, bucketOffences, bucketAllow, bucketMeta} {
				if _, err := tx.CreateBucket(b); err != nil {
					return err
				}
			}
			// Format 2's writer: every record with its own value, 48 to a segment.
			for i := 0; i < len(rules); i += 48 {
				var seg []byte
				for _, r := range rules[i:min(i+48, len(rules))] {
					k, v := prefixKey(r.Prefix), encodeRule(nil, r)
					seg = append(append(seg, byte(len(k))), k...)
					seg = append(binary.AppendUvarint(seg, uint64(len(v))), v...)
				}
				if err := tx.Bucket(bucketRules).Put(prefixKey(rules[i].Prefix), seg); err != nil {
					return err
				}
			}
			return tx.Bucket(bucketMeta).Put([]byte("version"), []byte{version})
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	version := func(path string) byte {
		t.Helper()
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var v []byte
		db.View(func(tx *bolt.Tx) error { v = bytes.Clone(tx.Bucket(bucketMeta).Get([]byte("version"))); return nil })
		if len(v) != 1 {
			t.Fatalf("version %v", v)
		}
		return v[0]
	}

	path := filepath.Join(t.TempDir(), "v2.db")
	write(path, 2)
	s := openTestStore(t, path)
	checkSegments(t, s, rules)
	s.Close()
	if v := version(path); v != storeVersion {
		t.Fatalf("version after open %d, want %d", v, storeVersion)
	}

	path = filepath.Join(t.TempDir(), "v9.db")
	write(path, 9)
	if _, err := OpenStore(path); err == nil || !strings.Contains(err.Error(), "newer than this snared understands") {
		t.Fatalf("open a format-9 store: %v, want it refused as newer", err)
	}
	if v := version(path); v != 9 {
		t.Fatalf("version after the refused open %d, want 9", v)
	}
}
