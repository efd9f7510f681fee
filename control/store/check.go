package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// guard runs fn, turning a panic into an ErrStoreCorrupt error: bbolt asserts on the pages it
// reads and panics on a damaged one, and a damaged page can point a read outside the mapping
// (a fault, made a panic here too). Only reads of a store that may be damaged go through it.
func guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrStoreCorrupt, r)
		}
	}()
	return fn()
}

// load prepares the store's buckets (migrating an old format), checks every record and counts
// the rules.
func (s *Store) load() error {
	err := guard(func() error {
		return s.db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketRules, bucketOffences, bucketAllow, bucketMeta} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			if tx.Bucket(bucketStaging) != nil { // a bulk write a crash interrupted: it never happened
				if err := tx.DeleteBucket(bucketStaging); err != nil {
					return err
				}
			}
			meta := tx.Bucket(bucketMeta)
			if v := meta.Get([]byte("version")); v != nil {
				if len(v) != 1 || v[0] > storeVersion {
					return fmt.Errorf("store format %v is newer than this snared understands (%d)", v, storeVersion)
				}
				if v[0] == storeVersion {
					return nil
				}
				if v[0] < 2 {
					if err := migrateRules(tx); err != nil {
						return fmt.Errorf("migrate rules to store format %d: %w", storeVersion, err)
					}
				}
			}
			return meta.Put([]byte("version"), []byte{storeVersion})
		})
	})
	if err != nil {
		return err
	}
	// Every record is decoded once here, so that no later read meets a corrupt one: the count
	// walk reads them all anyway.
	return guard(func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			return checkStore(tx, func(p netip.Prefix, deadline time.Time) {
				s.count[FamilyIndex(p.Addr().Is6())]++
				s.noteDeadline(deadline)
			})
		})
	})
}

// checkDB runs bbolt's consistency check: every page reachable once or free, keys in order,
// page types as expected, the freelist readable.
func checkDB(db *bolt.DB) error {
	return guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			var errs []error
			n := 0
			for err := range tx.Check() { // read to the end: the check's goroutine waits on it
				if n++; n <= 3 {
					// A page that made the check panic comes as "panic: ...": not a crash of
					// snared, so not worded as one.
					errs = append(errs, errors.New(strings.TrimPrefix(err.Error(), "panic: ")))
				}
			}
			if n > 3 {
				errs = append(errs, fmt.Errorf("and %d more problems", n-3))
			}
			if len(errs) > 0 {
				return fmt.Errorf("%w: %w", ErrStoreCorrupt, errors.Join(errs...))
			}
			return nil
		})
	})
}

// checkStore decodes every record of the store (rules, allowlist, offences) and calls each with
// the deadline of every rule. A record it cannot decode is ErrStoreCorrupt.
func checkStore(tx *bolt.Tx, each func(p netip.Prefix, deadline time.Time)) error {
	if err := checkRecords(tx, each); err != nil {
		return fmt.Errorf("%w: %w", ErrStoreCorrupt, err)
	}
	return nil
}

func checkRecords(tx *bolt.Tx, each func(p netip.Prefix, deadline time.Time)) error {
	rules, allow, offences := tx.Bucket(bucketRules), tx.Bucket(bucketAllow), tx.Bucket(bucketOffences)
	if rules == nil || allow == nil || offences == nil {
		return errors.New("a bucket is missing")
	}
	var prev []byte
	rule := func(k, v []byte) error {
		p, err := parsePrefixKey(k)
		if err != nil {
			return err
		}
		// A record that repeats the value before it shares its bytes: decoded once.
		if len(v) == 0 || len(v) != len(prev) || &v[0] != &prev[0] {
			if _, _, _, err := decodeRuleFields(p, v); err != nil {
				return err
			}
			prev = v
		}
		each(p, rawDeadline(v))
		return nil
	}
	var err error
	if rulesSegmented(tx) {
		err = forEachRecord(rules, rule)
	} else {
		err = rules.ForEach(rule)
	}
	if err != nil {
		return err
	}
	err = allow.ForEach(func(k, v []byte) error {
		if _, err := parsePrefixKey(k); err != nil {
			return fmt.Errorf("allowlist: %w", err)
		}
		if _, n := binary.Varint(v); n <= 0 {
			return fmt.Errorf("allowlist: corrupt entry %x", k)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return offences.ForEach(func(k, v []byte) error {
		if _, err := parsePrefixKey(k); err != nil {
			return fmt.Errorf("offences: %w", err)
		}
		if _, ok := parseOffence(v); !ok {
			return fmt.Errorf("offences: corrupt entry %x", k)
		}
		return nil
	})
}

// rulesSegmented reports whether the rules bucket holds segments (format 2 and later) rather
// than one rule per key (format 1, migrated when a snared opens the store for writing).
func rulesSegmented(tx *bolt.Tx) bool {
	m := tx.Bucket(bucketMeta)
	if m == nil {
		return true
	}
	v := m.Get([]byte("version"))
	return len(v) != 1 || v[0] >= 2
}
