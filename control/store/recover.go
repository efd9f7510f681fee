package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrNothingToRecover is returned by RecoverStore when the store is sound.
var ErrNothingToRecover = errors.New("nothing to recover")

// StoreRecovery is what RecoverStore salvaged from a damaged store and what it could not read.
type StoreRecovery struct {
	Damage string // what the check found
	Kept   string // where the damaged file is kept
	// Salvaged entries, as now in the fresh store.
	Rules, Allow, Offences int
	// Lost says, one line a kind, which entries could not be read.
	Lost []string
}

// RecoverStore replaces a damaged store at path with a fresh one holding every entry still
// readable from it (rules, hand-made allowlist entries, offence histories), and keeps the damaged
// file beside it as path.corrupt-<time>. A sound store is left alone (ErrNothingToRecover); no
// store at all is an error. A snared must not run on the store (ErrStoreLocked). Running it again
// finds the fresh store sound.
func RecoverStore(path string, now time.Time) (StoreRecovery, error) {
	var rec StoreRecovery
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return rec, fmt.Errorf("no store at %s (check --state-dir): nothing to recover", path)
		}
		return rec, fmt.Errorf("recover store %s: %w", path, err)
	}
	var s salvage
	db, err := openDB(path, true)
	switch {
	case err == nil:
		defer db.Close()
		if err := checkDB(db); err != nil {
			rec.Damage = err.Error()
		} else if err := guard(func() error {
			return db.View(func(tx *bolt.Tx) error { return checkStore(tx, func(netip.Prefix, time.Time) {}) })
		}); err != nil {
			rec.Damage = err.Error()
		} else {
			return rec, fmt.Errorf("store %s is sound: %w", path, ErrNothingToRecover)
		}
		s.read(db)
	case errors.Is(err, ErrStoreCorrupt):
		rec.Damage = err.Error()
		s.lost = append(s.lost, "everything: both of the file's meta pages, which say where its data lies, are damaged")
	default:
		return rec, fmt.Errorf("recover store %s: %w", path, err)
	}

	tmp := path + ".recovering"
	if err := s.write(tmp); err != nil {
		os.Remove(tmp)
		return rec, fmt.Errorf("write the salvaged entries to %s: %w", tmp, err)
	}
	// The damaged file gets its second name before the fresh one takes its place, so that a
	// crash in between leaves the damaged store (refused, recovered again), never no store.
	rec.Kept = fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if err := os.Link(path, rec.Kept); err != nil {
		os.Remove(tmp)
		return rec, fmt.Errorf("keep the damaged store: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return rec, fmt.Errorf("put the fresh store in place: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return rec, err
	}
	rec.Rules, rec.Allow, rec.Offences, rec.Lost = len(s.rules), len(s.allow), len(s.offences), s.lost
	return rec, nil
}

// salvage is what could be read of a damaged store.
type salvage struct {
	rules    map[netip.Prefix]Rule
	allow    map[netip.Prefix]AllowRecord
	offences map[netip.Prefix]Offence
	lost     []string
}

// read takes every readable entry of db.
func (s *salvage) read(db *bolt.DB) {
	s.rules, s.allow, s.offences = map[netip.Prefix]Rule{}, map[netip.Prefix]AllowRecord{}, map[netip.Prefix]Offence{}
	segmented := true
	_ = guard(func() error {
		return db.View(func(tx *bolt.Tx) error { segmented = rulesSegmented(tx); return nil })
	})

	var recs []record
	s.bucket(db, "rules", bucketRules, func(k, v []byte) (got []netip.Prefix, bad int) {
		recs = append(recs[:0], record{k, v})
		if segmented {
			var err error
			if recs, err = decodeSeg(recs[:0], v); err != nil {
				return nil, 1 // a segment's records cannot be told apart once it is damaged
			}
		}
		for _, r := range recs {
			p, err := parsePrefixKey(r.k)
			if err != nil {
				bad++
				continue
			}
			rule, err := decodeRule(p, r.v)
			if err != nil {
				bad++
				continue
			}
			s.rules[p] = rule
			got = append(got, p)
		}
		return got, bad
	})
	s.bucket(db, "allowlist entries", bucketAllow, func(k, v []byte) ([]netip.Prefix, int) {
		p, err := parsePrefixKey(k)
		ms, n := binary.Varint(v)
		if err != nil || n <= 0 {
			return nil, 1
		}
		s.allow[p] = AllowRecord{Prefix: p, Created: fromMs(ms)}
		return []netip.Prefix{p}, 0
	})
	s.bucket(db, "offence histories", bucketOffences, func(k, v []byte) ([]netip.Prefix, int) {
		p, err := parsePrefixKey(k)
		o, ok := parseOffence(v)
		if err != nil || !ok {
			return nil, 1
		}
		s.offences[p] = o
		return []netip.Prefix{p}, 0
	})
}

// bucket reads what it can of one bucket: forward from its first key until a damaged page stops
// the walk, then backward from its last key down to the damage. take decodes one key and value:
// the entries it got and how many it could not decode. What could not be read goes to s.lost,
// named by kind.
func (s *salvage) bucket(db *bolt.DB, kind string, name []byte, take func(k, v []byte) (got []netip.Prefix, bad int)) {
	var after, before netip.Prefix // the last entry read forward, the first read backward
	var lastKey []byte
	undecoded := 0
	walk := func(forward bool) error {
		return guard(func() error {
			return db.View(func(tx *bolt.Tx) error {
				b := tx.Bucket(name)
				if b == nil {
					return fmt.Errorf("no %s bucket", name)
				}
				c := b.Cursor()
				k, v := c.First()
				if !forward {
					k, v = c.Last()
				}
				for ; k != nil; k, v = step(c, forward) {
					if forward {
						lastKey = slices.Clone(k)
					} else if lastKey != nil && bytes.Compare(k, lastKey) <= 0 {
						return nil // back at what the forward walk read
					}
					got, bad := take(k, v)
					undecoded += bad
					switch {
					case len(got) == 0:
					case forward:
						after = got[len(got)-1]
					default:
						before = got[0]
					}
				}
				return nil
			})
		})
	}
	if err := walk(true); err != nil {
		_ = walk(false)
		from, to := "the first", "the last"
		if after.IsValid() {
			from = after.String()
		}
		if before.IsValid() {
			to = before.String()
		}
		s.lost = append(s.lost, fmt.Sprintf("%s after %s and before %s: on damaged pages (%v)", kind, from, to, err))
	}
	if undecoded > 0 {
		s.lost = append(s.lost, fmt.Sprintf("%s: %d damaged records (a damaged rules segment counts once, and held up to %d rules)", kind, undecoded, segMax))
	}
}

func step(c *bolt.Cursor, forward bool) (k, v []byte) {
	if forward {
		return c.Next()
	}
	return c.Prev()
}

// write creates a fresh store at path holding the salvaged entries.
func (s *salvage) write(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err // left by a recovery that failed
	}
	st, err := OpenStore(path)
	if err != nil {
		return err
	}
	defer st.Close()
	rules := make([]Rule, 0, len(s.rules))
	for _, r := range s.rules {
		rules = append(rules, r)
	}
	slices.SortFunc(rules, func(a, b Rule) int { return a.Prefix.Compare(b.Prefix) })
	if err := st.BulkPutRules(len(rules), func(i int) Rule { return rules[i] }, nil, nil); err != nil {
		return err
	}
	err = st.Update(func(tx *Tx) error {
		for _, a := range s.allow {
			if err := tx.PutAllow(a); err != nil {
				return err
			}
		}
		for p, o := range s.offences {
			if err := tx.PutOffence(p, o); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return st.Close()
}

// syncDir makes the renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
