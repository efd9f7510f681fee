package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Tx is a read-write view of the store inside one transaction.
type Tx struct {
	tx                     *bolt.Tx
	rules, offences, allow *bolt.Bucket
	added                  [2]int    // rules added minus rules deleted, per family
	earliest               time.Time // earliest deadline written
	walked                 bool      // ExpiredPrefixes read every deadline: next is exact
	next                   time.Time // the earliest deadline it found after its now
}

func (t *Tx) noteDeadline(d time.Time) {
	if !d.IsZero() && (t.earliest.IsZero() || d.Before(t.earliest)) {
		t.earliest = d
	}
}

// CommitsBefore is the number of read-write transactions committed before this one began:
// equal in two transactions means nothing was written between them.
func (t *Tx) CommitsBefore() int {
	if t.tx.Writable() {
		return t.tx.ID() - 1 // a writable transaction has the id it will commit with
	}
	return t.tx.ID()
}

func wrapTx(tx *bolt.Tx) *Tx {
	return &Tx{tx: tx, rules: tx.Bucket(bucketRules), offences: tx.Bucket(bucketOffences), allow: tx.Bucket(bucketAllow)}
}

// Rule returns the stored rule for p.
func (t *Tx) Rule(p netip.Prefix) (Rule, bool, error) {
	v, err := t.getRaw(prefixKey(p))
	if err != nil || v == nil {
		return Rule{}, false, err
	}
	r, err := decodeRule(p, v)
	return r, err == nil, err
}

// PutRule inserts or replaces a rule.
func (t *Tx) PutRule(r Rule) error {
	t.noteDeadline(r.Deadline)
	added, err := t.putRaw(prefixKey(r.Prefix), encodeRule(nil, r))
	if err != nil {
		return fmt.Errorf("store rule %s: %w", r.Prefix, err)
	}
	if added {
		t.added[FamilyIndex(r.Prefix.Addr().Is6())]++
	}
	return nil
}

// DeleteRule removes the rule for p; it reports whether there was one.
func (t *Tx) DeleteRule(p netip.Prefix) (bool, error) {
	ok, err := t.deleteRaw(prefixKey(p))
	if ok {
		t.added[FamilyIndex(p.Addr().Is6())]--
	}
	return ok, err
}

// PutRulesSorted writes many new-or-replacing rules at once (sorted by key first, so that
// neighbours land in the same segments). Big batches go through BulkPutRules.
func (t *Tx) PutRulesSorted(rules []Rule) error {
	slices.SortFunc(rules, func(a, b Rule) int { return a.Prefix.Compare(b.Prefix) })
	for _, r := range rules {
		if err := t.PutRule(r); err != nil {
			return err
		}
	}
	return nil
}

// ForEachRule calls fn for every rule in prefix order; fn's error stops the walk.
func (t *Tx) ForEachRule(fn func(Rule) error) error {
	return forEachRecord(t.rules, func(k, v []byte) error {
		p, err := parsePrefixKey(k)
		if err != nil {
			return err
		}
		r, err := decodeRule(p, v)
		if err != nil {
			return err
		}
		return fn(r)
	})
}

// RulesWithin calls fn for every stored rule that lies inside a (its prefix at least as long
// as a's, its address in a). Keys sort by family, address, length, so those rules are one
// contiguous run of keys: a seek and a short walk, not a scan of every rule.
func (t *Tx) RulesWithin(a netip.Prefix, fn func(Rule) error) error {
	a = a.Masked()
	it := seekSegIter(t.rules, prefixKey(netip.PrefixFrom(a.Addr(), 0)))
	for {
		k, v, ok := it.next()
		if !ok {
			return it.err
		}
		p, err := parsePrefixKey(k)
		if err != nil {
			return err
		}
		if p.Addr().Is4() != a.Addr().Is4() || !a.Contains(p.Addr()) {
			return nil // past the run
		}
		if p.Bits() < a.Bits() {
			continue // a shorter prefix starting at a's address covers a; it is not inside it
		}
		r, err := decodeRule(p, v)
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
}

// forEachDeadline walks the rules in prefix order decoding only prefix and deadline (restore
// needs no more of a million rules); decodeRule(p, record) decodes the whole rule when wanted,
// during fn (record is only valid until fn returns). A closure per record would cost a heap
// allocation per rule.
func (t *Tx) forEachDeadline(fn func(p netip.Prefix, deadline time.Time, record []byte) error) error {
	return forEachRecord(t.rules, func(k, v []byte) error {
		p, err := parsePrefixKey(k)
		if err != nil {
			return err
		}
		if len(v) < 1 || int(v[0]) >= len(origins) {
			return fmt.Errorf("corrupt rule %s", p)
		}
		return fn(p, rawDeadline(v), v)
	})
}

// ExpiredPrefixes returns the prefixes of the rules whose deadline is at or before now, whole
// rules only for the first show of them (a million expired Rules with their reasons cost more
// than the rest of a sweep). The earliest deadline among the rest becomes the store's (Due) once
// the transaction commits. DeleteExpired deletes them; a sweep runs the kernel's removal in
// between.
func (t *Tx) ExpiredPrefixes(now time.Time, show int) (prefixes []netip.Prefix, shown []Rule, err error) {
	// Count first (reading only deadlines is cheap) so that the result is allocated once: a
	// million prefixes grown by append cost seconds of copying.
	n := 0
	_ = forEachRecord(t.rules, func(k, v []byte) error {
		if d := rawDeadline(v); !d.IsZero() && !now.Before(d) {
			n++
		}
		return nil
	})
	var next time.Time
	if n > 0 {
		prefixes = make([]netip.Prefix, 0, n)
	}
	err = forEachRecord(t.rules, func(k, v []byte) error {
		d := rawDeadline(v)
		if d.IsZero() {
			return nil
		}
		if now.Before(d) {
			if next.IsZero() || d.Before(next) {
				next = d
			}
			return nil
		}
		p, err := parsePrefixKey(k)
		if err != nil {
			return err
		}
		prefixes = append(prefixes, p)
		if len(shown) < show {
			r, err := decodeRule(p, v)
			if err != nil {
				return err
			}
			shown = append(shown, r)
		}
		return nil
	})
	t.walked, t.next = true, next
	return prefixes, shown, err
}

// DeleteExpired deletes the rules expired at now: only the segments that hold some are
// rewritten.
func (t *Tx) DeleteExpired(now time.Time) error {
	n, err := t.filterRecords(func(_, v []byte) bool {
		d := rawDeadline(v)
		return d.IsZero() || now.Before(d)
	})
	if err != nil {
		return err
	}
	t.added[0] -= n[0]
	t.added[1] -= n[1]
	return nil
}

// Offence returns the escalation history of p.
func (t *Tx) Offence(p netip.Prefix) Offence {
	v := t.offences.Get(prefixKey(p))
	if v == nil {
		return Offence{}
	}
	return decodeOffence(v)
}

// PutOffence records the escalation history of p.
func (t *Tx) PutOffence(p netip.Prefix, o Offence) error {
	return t.offences.Put(prefixKey(p), encodeOffence(o))
}

// PruneOffences deletes histories whose last offence is before cutoff; it returns how many.
func (t *Tx) PruneOffences(cutoff time.Time) (int, error) {
	var stale [][]byte
	err := t.offences.ForEach(func(k, v []byte) error {
		if decodeOffence(v).Last.Before(cutoff) {
			stale = append(stale, slices.Clone(k))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range stale {
		if err := t.offences.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(stale), nil
}

// Allow returns the hand-added allowlist.
func (t *Tx) Allow() ([]AllowRecord, error) {
	var out []AllowRecord
	err := t.allow.ForEach(func(k, v []byte) error {
		p, err := parsePrefixKey(k)
		if err != nil {
			return err
		}
		ms, _ := binary.Varint(v)
		out = append(out, AllowRecord{Prefix: p, Created: fromMs(ms)})
		return nil
	})
	return out, err
}

// PutAllow adds a hand-made allowlist entry.
func (t *Tx) PutAllow(a AllowRecord) error {
	return t.allow.Put(prefixKey(a.Prefix), binary.AppendVarint(nil, unixMs(a.Created)))
}

// DeleteAllow removes a hand-made allowlist entry and reports whether it existed.
func (t *Tx) DeleteAllow(p netip.Prefix) (bool, error) {
	k := prefixKey(p)
	if t.allow.Get(k) == nil {
		return false, nil
	}
	return true, t.allow.Delete(k)
}

// MergeSorted writes rules (sorted by prefix, at most one per prefix), decoding and writing each
// segment they touch once where Rule and PutRule do it for every rule: a host of a fleet takes
// a shared import in batches of tens of thousands (a 1M import reached another host in-process
// after 2 min a rule at a time, 24 s merged). merge gets each rule and the rule stored for its
// prefix (had false: none) and returns the rule to store, or keep false to leave the stored one.
func (t *Tx) MergeSorted(rules []Rule, merge func(r, old Rule, had bool) (put Rule, keep bool, err error)) error {
	for i := 0; i < len(rules); {
		segKey, recs, _, _, err := t.find(prefixKey(rules[i].Prefix))
		if err != nil {
			return err
		}
		var next []byte // the next segment's key: the rules from there on go there
		if segKey != nil {
			c := t.rules.Cursor()
			c.Seek(segKey)
			next, _ = c.Next()
		}
		out := make([]record, 0, len(recs)+16)
		changed, j := false, 0
		for ; i < len(rules); i++ {
			k := prefixKey(rules[i].Prefix)
			if next != nil && bytes.Compare(k, next) >= 0 {
				break
			}
			for j < len(recs) && bytes.Compare(recs[j].k, k) < 0 {
				out = append(out, recs[j])
				j++
			}
			var old Rule
			had := j < len(recs) && bytes.Equal(recs[j].k, k)
			if had {
				if old, err = decodeRule(rules[i].Prefix, recs[j].v); err != nil {
					return err
				}
			}
			put, keep, err := merge(rules[i], old, had)
			switch {
			case err != nil:
				return err
			case !keep:
				continue // a stored record stays where it is, copied on by the loop above
			case had:
				j++
			default:
				t.added[FamilyIndex(put.Prefix.Addr().Is6())]++
			}
			t.noteDeadline(put.Deadline)
			out = append(out, record{k, encodeRule(nil, put)})
			changed = true
		}
		if !changed {
			continue
		}
		out = append(out, recs[j:]...)
		if segKey == nil {
			err = t.putSeg(out)
		} else {
			err = t.writeSeg(segKey, out)
		}
		if err != nil {
			return fmt.Errorf("store rules: %w", err)
		}
	}
	return nil
}
