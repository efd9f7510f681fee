package store

import (
	"net/netip"
	"time"

	"github.com/snare-dev/snare/backend"
)

// Snapshot is what a daemon's start needs of the store, read while the enforcer loads: the rules
// still in force (in store order) and the expired ones.
type Snapshot struct {
	Commits int // the store's commits before the read (Tx.CommitsBefore)
	Live    backend.Records
	Gone    []Rule
	Err     error
}

// Snapshot reads a Snapshot at now in a transaction of its own.
func (s *Store) Snapshot(now time.Time) Snapshot {
	var snap Snapshot
	err := s.View(func(tx *Tx) error {
		snap = tx.Snapshot(now, s.Count())
		return snap.Err
	})
	snap.Err = err
	return snap
}

// Snapshot reads a Snapshot at now in tx; size is the number of rules expected.
func (t *Tx) Snapshot(now time.Time, size int) Snapshot {
	s := Snapshot{Commits: t.CommitsBefore(), Live: make(backend.Records, 0, size)} // one allocation, not a million appends
	// OpenStore checked every page and record, but the file may have been damaged since: a
	// damaged page is an error here, not a crash.
	s.Err = guard(func() error {
		return t.forEachDeadline(func(p netip.Prefix, deadline time.Time, record []byte) error {
			if deadline.IsZero() || now.Before(deadline) {
				s.Live = append(s.Live, backend.RecordOf(p, unixMs(deadline)))
				return nil
			}
			r, err := decodeRule(p, record)
			s.Gone = append(s.Gone, r)
			return err
		})
	})
	return s
}
