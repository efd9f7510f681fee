package store

import (
	"bytes"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bucketStaging holds the rules bucket BulkPutRules builds before it swaps it in; one a crash
// left behind is dropped when the store opens.
var bucketStaging = []byte("staging")

// BulkPutRules writes n rules, at(0) ... at(n-1) (sorted by prefix, at most one per prefix), into
// the store, replacing stored rules with the same prefix, all or nothing: it builds a new rules
// bucket beside the current one from the stored rules merged with the new ones, in full
// segments, and swaps it in with a second transaction. ready runs before the swap; its error (the
// kernel refusing the batch) abandons the new bucket. withSwap, if set, writes in the swap's
// transaction what must be committed with the new rules (the fleet's outbox). It is for big
// batches (import, restore): it rewrites every stored rule. The caller must keep other writers
// out until it returns (the daemon holds its lock).
func (s *Store) BulkPutRules(n int, at func(i int) Rule, ready func() error, withSwap func(*Tx) error) error {
	var added [2]int
	var earliest time.Time
	note := func(d time.Time) {
		if !d.IsZero() && (earliest.IsZero() || d.Before(earliest)) {
			earliest = d
		}
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketStaging) != nil {
			if err := tx.DeleteBucket(bucketStaging); err != nil {
				return err
			}
		}
		st, err := tx.CreateBucket(bucketStaging)
		if err != nil {
			return err
		}
		dst, err := st.CreateBucket(bucketRules)
		if err != nil {
			return err
		}
		dst.FillPercent = 1.0 // segments arrive in key order: fill every page
		w := segWriter{b: dst}
		old := newSegIter(tx.Bucket(bucketRules))
		k, v, more := old.next()
		var keyBuf [18]byte
		for i := 0; i < n || more; {
			var nk []byte
			var r Rule
			if i < n {
				r = at(i)
				nk = appendPrefixKey(keyBuf[:0], r.Prefix)
			}
			c := -1 // <0: the stored record goes first, >0: the new rule, 0: the new replaces it
			switch {
			case !more:
				c = 1
			case nk != nil:
				c = bytes.Compare(k, nk)
			}
			if c < 0 {
				note(rawDeadline(v))
				if err := w.add(k, v); err != nil {
					return err
				}
				k, v, more = old.next()
				continue
			}
			if c == 0 {
				k, v, more = old.next()
			} else {
				added[keyFamily(nk)]++
			}
			i++
			note(r.Deadline)
			if err := w.addRule(nk, r); err != nil {
				return fmt.Errorf("store rule %s: %w", r.Prefix, err)
			}
		}
		if old.err != nil {
			return old.err
		}
		return w.flush()
	})
	if err != nil {
		return err
	}
	// The swap is a transaction of its own: bbolt's MoveBucket moves a bucket's committed state,
	// not what the same transaction wrote into it. The caller keeps other writers out meanwhile.
	drop := func() {
		_ = s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketStaging) })
	}
	if ready != nil {
		if err := ready(); err != nil {
			drop()
			return err
		}
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketRules); err != nil {
			return err
		}
		if err := tx.MoveBucket(bucketRules, tx.Bucket(bucketStaging), nil); err != nil {
			return err
		}
		if err := tx.DeleteBucket(bucketStaging); err != nil {
			return err
		}
		if withSwap != nil {
			return withSwap(wrapTx(tx))
		}
		return nil
	})
	if err != nil {
		drop()
		return fmt.Errorf("swap in the new rules: %w", err)
	}
	s.mu.Lock()
	s.count[0] += added[0]
	s.count[1] += added[1]
	s.noteDeadline(earliest)
	s.mu.Unlock()
	return nil
}
