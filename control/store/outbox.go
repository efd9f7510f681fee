package store

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// bucketOutbox holds the decisions of a host in a fleet that are not yet shared: appended in the
// transaction of the change itself, so that neither a crash nor an engine outage loses one, and
// deleted once published.
var bucketOutbox = []byte("outbox")

// OutboxEntry is one local decision waiting to be shared with the fleet.
type OutboxEntry struct {
	Seq     uint64 // set by ReadOutbox, in the order of the decisions
	Unblock bool
	// Rule is the block as this host stored it; for an unblock only its Prefix and, in
	// LastOffence, when the unblock was made.
	Rule Rule
	// Bulk, when set, is many blocks of an import packed as the fleet shares them (Rule unset).
	Bulk []byte
}

// The first byte of an outbox record.
const (
	outboxBlock   = 0
	outboxUnblock = 1
	outboxBulk    = 2
)

// AppendOutbox queues decisions for the fleet, committed with the rest of the transaction.
func (t *Tx) AppendOutbox(entries ...OutboxEntry) error {
	if len(entries) == 0 {
		return nil
	}
	b, err := t.tx.CreateBucketIfNotExists(bucketOutbox)
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	b.FillPercent = 1.0 // keys only ever grow
	for _, e := range entries {
		seq, err := b.NextSequence()
		if err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
		// bbolt keeps the value until the commit: a buffer of its own each.
		var val []byte
		switch {
		case e.Bulk != nil:
			val = append(append(make([]byte, 0, 1+len(e.Bulk)), outboxBulk), e.Bulk...)
		case e.Unblock:
			val = append(make([]byte, 0, 32), outboxUnblock)
		default:
			val = append(make([]byte, 0, 32+len(e.Rule.Reason)), outboxBlock)
		}
		if e.Bulk == nil {
			val = appendPrefixKey(val, e.Rule.Prefix)
			val = encodeRule(val, e.Rule)
		}
		if err := b.Put(binary.BigEndian.AppendUint64(nil, seq), val); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
	}
	return nil
}

// outboxReadBytes bounds what one ReadOutbox reads: bulk entries are half a megabyte each.
const outboxReadBytes = 8 << 20

// ReadOutbox returns up to limit queued decisions, oldest first (fewer when they are big).
func (s *Store) ReadOutbox(limit int) ([]OutboxEntry, error) {
	var out []OutboxEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOutbox)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		size := 0
		for k, v := c.First(); k != nil && len(out) < limit && size < outboxReadBytes; k, v = c.Next() {
			size += len(v)
			e, err := decodeOutbox(k, v)
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read outbox of %s: %w", s.path, err)
	}
	return out, nil
}

func decodeOutbox(k, v []byte) (OutboxEntry, error) {
	if len(k) != 8 || len(v) < 1 {
		return OutboxEntry{}, fmt.Errorf("corrupt outbox record %x", k)
	}
	e := OutboxEntry{Seq: binary.BigEndian.Uint64(k), Unblock: v[0] == outboxUnblock}
	if v[0] == outboxBulk {
		e.Bulk = append([]byte(nil), v[1:]...) // v is bbolt's, valid only in its transaction
		return e, nil
	}
	n := 7
	if len(v) > 1 && v[1] == 6 {
		n = 19
	}
	if len(v) < n {
		return OutboxEntry{}, fmt.Errorf("corrupt outbox record %d", e.Seq)
	}
	p, err := parsePrefixKey(v[1:n])
	if err != nil {
		return OutboxEntry{}, fmt.Errorf("outbox record %d: %w", e.Seq, err)
	}
	if e.Rule, err = decodeRule(p, v[n:]); err != nil {
		return OutboxEntry{}, fmt.Errorf("outbox record %d: %w", e.Seq, err)
	}
	return e, nil
}

// DeleteOutbox removes the queued decisions up to and including seq (they are shared).
func (s *Store) DeleteOutbox(seq uint64) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOutbox)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= seq; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete from outbox of %s: %w", s.path, err)
	}
	return nil
}

// OutboxLen is the number of queued decisions.
func (s *Store) OutboxLen() int {
	n := 0
	_ = s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketOutbox); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	return n
}
