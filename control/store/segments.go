package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"

	bolt "go.etcd.io/bbolt"
)

// The rules bucket holds rules in segments: runs of rules in key order, stored under the key
// of their first rule, each rule a record of its prefix key and its encoded value. bbolt costs
// about a microsecond and some garbage per key it stores, so a key per rule would make a million
// rules a million Puts (seconds, with the garbage collector busy); in segments the same million
// are some ten thousand Puts. Lookups find the segment at or before a key with one cursor seek and
// scan at most segMax records.
//
// A record whose value is the same as the one before it in its segment stores only its key and
// a zero length: an import gives a million rules one reason, one creation time and one deadline,
// and writing that value once per segment instead of once per rule cuts what a commit writes by
// more than half. (Format 2 segments hold no zero length, so they read the same.)
//
// Segments keep the 1M import and the start after a reboot under 1 s (a key per rule was a
// million Puts; with segments that fill pages the in-process 1M import went 1.29 s -> ~0.95 s).

// segMax is the most records one segment holds, segBytes the most bytes; a segment that
// outgrows either is split. bbolt puts at least two keys on a leaf page, so two segments of
// segBytes, their keys and bbolt's headers fill one 4 KiB page without spilling onto a second.
const (
	segMax   = 128
	segBytes = 2000
)

// record is one rule inside a segment.
type record struct{ k, v []byte }

// decodeSeg appends the records of a segment to recs; they point into b.
func decodeSeg(recs []record, b []byte) ([]record, error) {
	first := len(recs)
	for len(b) > 0 {
		kl := int(b[0])
		if kl == 0 || len(b) < 1+kl {
			return recs, fmt.Errorf("corrupt rules segment")
		}
		k := b[1 : 1+kl]
		b = b[1+kl:]
		vl, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < vl {
			return recs, fmt.Errorf("corrupt rules segment")
		}
		v := b[n : n+int(vl)]
		if vl == 0 { // the same value as the record before
			if len(recs) == first {
				return recs, fmt.Errorf("corrupt rules segment")
			}
			v = recs[len(recs)-1].v
		}
		recs = append(recs, record{k, v})
		b = b[n+int(vl):]
	}
	return recs, nil
}

// appendSeg appends the encoding of recs to dst.
func appendSeg(dst []byte, recs []record) []byte {
	for i, r := range recs {
		dst = appendRecord(dst, r.k, r.v, i > 0 && bytes.Equal(r.v, recs[i-1].v))
	}
	return dst
}

// appendRecord appends one record; same says its value equals the previous record's. A value
// is never empty (encodeRule writes at least its origin byte), so a zero length is free to mean
// "the same again".
func appendRecord(dst, k, v []byte, same bool) []byte {
	dst = append(dst, byte(len(k)))
	dst = append(dst, k...)
	if same {
		return append(dst, 0)
	}
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	return append(dst, v...)
}

// forEachRecord calls fn for every record of a rules bucket in key order.
func forEachRecord(b *bolt.Bucket, fn func(k, v []byte) error) error {
	var recs []record
	return b.ForEach(func(_, seg []byte) error {
		var err error
		if recs, err = decodeSeg(recs[:0], seg); err != nil {
			return err
		}
		for _, r := range recs {
			if err := fn(r.k, r.v); err != nil {
				return err
			}
		}
		return nil
	})
}

// segIter walks the records of a rules bucket in key order, pulled one at a time.
type segIter struct {
	c    *bolt.Cursor
	recs []record
	i    int
	err  error
}

func newSegIter(b *bolt.Bucket) *segIter {
	it := &segIter{c: b.Cursor()}
	k, v := it.c.First()
	for k != nil {
		if it.recs, it.err = decodeSeg(it.recs[:0], v); it.err != nil || len(it.recs) > 0 {
			break
		}
		k, v = it.c.Next()
	}
	return it
}

// seekSegIter is a segIter positioned at the first record whose key is at or after key.
func seekSegIter(b *bolt.Bucket, key []byte) *segIter {
	it := &segIter{c: b.Cursor()}
	k, v := it.c.Seek(key)
	if k == nil || !bytes.Equal(k, key) {
		// The record may sit in the segment before (segments are keyed by their first record).
		if k == nil {
			k, v = it.c.Last()
		} else {
			k, v = it.c.Prev()
		}
		if k == nil {
			k, v = it.c.First()
		}
	}
	if k == nil {
		return it
	}
	if it.recs, it.err = decodeSeg(nil, v); it.err == nil {
		it.i = sort.Search(len(it.recs), func(i int) bool { return bytes.Compare(it.recs[i].k, key) >= 0 })
	}
	return it
}

// next returns the next record, or ok false at the end (or on a corrupt segment: see err).
func (it *segIter) next() (k, v []byte, ok bool) {
	for it.i >= len(it.recs) {
		if it.err != nil {
			return nil, nil, false
		}
		sk, sv := it.c.Next()
		if sk == nil {
			it.recs = nil
			return nil, nil, false
		}
		it.i = 0
		if it.recs, it.err = decodeSeg(it.recs[:0], sv); it.err != nil {
			return nil, nil, false
		}
	}
	r := it.recs[it.i]
	it.i++
	return r.k, r.v, true
}

// segWriter writes records, in key order, into an empty bucket as full segments. Records are
// encoded straight into large chunks that the segments are cut from, so a million rules cost
// one copy and a few dozen allocations.
type segWriter struct {
	b       *bolt.Bucket
	buf     []byte // the current chunk; the open segment is buf[start:]
	start   int
	n       int    // records in the open segment
	prev    []byte // the value of the open segment's last record
	scratch []byte // one encoded rule
}

// reserve makes sure the open segment can grow by need bytes, moving it to a new chunk if not.
func (w *segWriter) reserve(need int) {
	if cap(w.buf)-len(w.buf) >= need {
		return
	}
	open := w.buf[w.start:]
	nb := make([]byte, 0, max(1<<20, 2*(len(open)+need)))
	w.buf, w.start = append(nb, open...), 0
}

func (w *segWriter) add(k, v []byte) error {
	same := w.n > 0 && bytes.Equal(v, w.prev)
	size := 1 + len(k) + binary.MaxVarintLen64 + len(v) // at most
	if w.n > 0 && len(w.buf)-w.start+size > segBytes {
		if err := w.flush(); err != nil {
			return err
		}
		same = false
	}
	w.reserve(size)
	w.buf = appendRecord(w.buf, k, v, same)
	if !same {
		// The value as written: it stays put when reserve moves the open segment (the old chunk
		// keeps its bytes), and v may be scratch space the caller reuses.
		w.prev = w.buf[len(w.buf)-len(v):]
	}
	if w.n++; w.n == segMax {
		return w.flush()
	}
	return nil
}

// addRule adds a rule under key k, encoding it in place.
func (w *segWriter) addRule(k []byte, r Rule) error {
	w.scratch = encodeRule(w.scratch[:0], r)
	return w.add(k, w.scratch)
}

func (w *segWriter) flush() error {
	if w.n == 0 {
		return nil
	}
	// The segment's key is its first record's key, inside the segment itself. bbolt keeps
	// both slices until commit; the chunk is never written again.
	seg := w.buf[w.start:len(w.buf):len(w.buf)]
	kl := int(seg[0])
	w.start, w.n = len(w.buf), 0
	return w.b.Put(seg[1:1+kl:1+kl], seg)
}

// find returns the segment a key belongs in (the one at or before it, else the first), its
// records and where key is or would go among them. segKey is nil when the bucket is empty.
func (t *Tx) find(key []byte) (segKey []byte, recs []record, idx int, found bool, err error) {
	c := t.rules.Cursor()
	k, v := c.Seek(key)
	if k == nil || !bytes.Equal(k, key) {
		if k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
		if k == nil { // before every segment
			k, v = c.First()
		}
	}
	if k == nil {
		return nil, nil, 0, false, nil
	}
	if recs, err = decodeSeg(nil, v); err != nil {
		return nil, nil, 0, false, err
	}
	idx = sort.Search(len(recs), func(i int) bool { return bytes.Compare(recs[i].k, key) >= 0 })
	found = idx < len(recs) && bytes.Equal(recs[idx].k, key)
	return slices.Clone(k), recs, idx, found, nil
}

// writeSeg replaces the segment stored under oldKey with recs (none: removed), split in halves
// while it outgrows segMax or segBytes.
func (t *Tx) writeSeg(oldKey []byte, recs []record) error {
	if len(recs) == 0 || !bytes.Equal(recs[0].k, oldKey) {
		if err := t.rules.Delete(oldKey); err != nil {
			return err
		}
	}
	if len(recs) == 0 {
		return nil
	}
	return t.putSeg(recs)
}

func (t *Tx) putSeg(recs []record) error {
	seg := appendSeg(nil, recs)
	if len(recs) > 1 && (len(recs) > segMax || len(seg) > segBytes) {
		h := len(recs) / 2
		if err := t.putSeg(recs[:h]); err != nil {
			return err
		}
		return t.putSeg(recs[h:])
	}
	return t.rules.Put(slices.Clone(recs[0].k), seg)
}

// getRaw returns the encoded rule stored under key, or nil.
func (t *Tx) getRaw(key []byte) ([]byte, error) {
	_, recs, idx, found, err := t.find(key)
	if err != nil || !found {
		return nil, err
	}
	return recs[idx].v, nil
}

// putRaw stores an encoded rule under key; added reports whether the key is new.
func (t *Tx) putRaw(key, val []byte) (added bool, err error) {
	segKey, recs, idx, found, err := t.find(key)
	if err != nil {
		return false, err
	}
	if segKey == nil {
		return true, t.rules.Put(slices.Clone(key), appendSeg(nil, []record{{key, val}}))
	}
	if found {
		recs[idx].v = val
	} else {
		recs = slices.Insert(recs, idx, record{key, val})
	}
	return !found, t.writeSeg(segKey, recs)
}

// deleteRaw removes the rule stored under key and reports whether there was one.
func (t *Tx) deleteRaw(key []byte) (bool, error) {
	segKey, recs, idx, found, err := t.find(key)
	if err != nil || !found {
		return false, err
	}
	return true, t.writeSeg(segKey, slices.Delete(recs, idx, idx+1))
}

// filterRecords keeps only the records for which keep is true, rewriting just the segments that
// lose some; it returns how many records it removed. keep must only look: it is asked twice
// about the records of a segment that changes (to count, then to copy, into one reused buffer).
func (t *Tx) filterRecords(keep func(k, v []byte) bool) (removed [2]int, err error) {
	type change struct {
		key  []byte
		recs []record
	}
	var changes []change
	var recs []record // one segment's, reused: a sweep of a million decoded them all
	err = t.rules.ForEach(func(sk, seg []byte) error {
		var err error
		if recs, err = decodeSeg(recs[:0], seg); err != nil {
			return err
		}
		n := 0
		for _, r := range recs {
			if keep(r.k, r.v) {
				n++
			} else {
				removed[keyFamily(r.k)]++
			}
		}
		if n == len(recs) {
			return nil
		}
		var kept []record // the records point into the transaction's pages: they stay valid
		if n > 0 {
			kept = make([]record, 0, n)
			for _, r := range recs {
				if keep(r.k, r.v) {
					kept = append(kept, r)
				}
			}
		}
		changes = append(changes, change{slices.Clone(sk), kept})
		return nil
	})
	if err != nil {
		return [2]int{}, err
	}
	for _, c := range changes {
		if err := t.writeSeg(c.key, c.recs); err != nil {
			return [2]int{}, err
		}
	}
	return removed, nil
}

// migrateRules rewrites a format-1 rules bucket (one key per rule) as segments.
func migrateRules(tx *bolt.Tx) error {
	var recs []record
	if err := tx.Bucket(bucketRules).ForEach(func(k, v []byte) error {
		recs = append(recs, record{slices.Clone(k), slices.Clone(v)})
		return nil
	}); err != nil {
		return err
	}
	if err := tx.DeleteBucket(bucketRules); err != nil {
		return err
	}
	b, err := tx.CreateBucket(bucketRules)
	if err != nil {
		return err
	}
	b.FillPercent = 1.0
	w := segWriter{b: b}
	for _, r := range recs {
		if err := w.add(r.k, r.v); err != nil {
			return err
		}
	}
	return w.flush()
}
