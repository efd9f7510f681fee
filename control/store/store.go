// Package store is snare's durable block store: rules, escalation history and the hand-made
// allowlist in one bbolt file, every change fsynced before it returns. Its on-disk format
// (segments, keys, record encoding) is private to it; it checks the file at open and can salvage
// a damaged one (RecoverStore).
package store

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/snare-dev/snare/backend"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Rule is one block as the store keeps it. Deadlines are wall-clock times so they hold across
// reboots; the enforcer converts them to the kernel clock.
type Rule struct {
	Prefix   netip.Prefix
	Reason   string
	Origin   string
	Created  time.Time
	Deadline time.Time // zero: permanent
	Offences int       // times this source was blocked within the escalation lookback
	// LastOffence is when it was last blocked (or re-blocked).
	LastOffence time.Time
	// Node and Revision are kept for fleet rules only (Origin api.OriginFleet): the host that
	// made the block and the revision of its key in the fleet's bucket.
	Node     string
	Revision uint64
}

// Permanent reports whether the rule never expires.
func (r Rule) Permanent() bool { return r.Deadline.IsZero() }

// Expired reports whether the rule's deadline has passed at now.
func (r Rule) Expired(now time.Time) bool { return !r.Deadline.IsZero() && !now.Before(r.Deadline) }

// Enforced is r as an enforcer takes it.
func (r Rule) Enforced() backend.Rule { return backend.Rule{Prefix: r.Prefix, Deadline: r.Deadline} }

// Offence is the escalation history of one source: how many times it was blocked within the
// lookback, and when last. It outlives the block itself (that is the point).
type Offence struct {
	Count int
	Last  time.Time
}

// AllowRecord is an allowlist entry added by hand (snarectl allow add).
type AllowRecord struct {
	Prefix  netip.Prefix
	Created time.Time
}

// Store is the durable state: a bbolt database with one bucket per kind. Every write is one
// transaction, committed with fsync before the call returns.
//
// Buckets:
//
//	rules     first prefix key of a segment -> segment: up to segMax records or segBytes (prefix key, rule value)
//	          records in key order (segments.go)
//	offences  prefix key -> offence value (escalation history, kept for the lookback)
//	allow     prefix key -> created (unix ms)
//	outbox    sequence (8 bytes, big endian) -> decision waiting to be shared with the fleet
//	          (outbox.go); created by the first decision of a host in a fleet
//
// There is no deadline index: the sweeper walks every rule anyway to reconcile the kernel with
// the store, and an index would double the writes of an import.
type Store struct {
	db   *bolt.DB
	path string

	// count and earliest are kept in memory so that status, the capacity check and the sweeper
	// need not walk every page of a large store: count is the number of rules per family
	// (familyIndex), earliest a time at or before the earliest deadline of any rule (zero: none).
	// Both change only after a commit.
	mu       sync.Mutex
	count    [2]int
	earliest time.Time
}

var (
	bucketRules    = []byte("rules")
	bucketOffences = []byte("offences")
	bucketAllow    = []byte("allow")
	bucketMeta     = []byte("meta")
)

// storeVersion is the on-disk format, written to the meta bucket: a store from a newer snare
// is refused rather than misread, and older stores still open. Format 1 (one bbolt key per
// rule) is migrated to segments (segments.go); format 2 segments never repeat a value, so they
// are valid format 3 segments and only the number is raised. Format 4 adds the fleet origin
// (with its node and key revision) and the outbox bucket; format 3 stores hold neither, so
// they are valid format 4 stores, while a snared that knows only format 3 refuses a format 4
// store by its number instead of calling a fleet rule corrupt.
const storeVersion = 4

// ErrStoreLocked is returned by OpenStore when another process has the store open.
var ErrStoreLocked = errors.New("store is in use by another snared")

// ErrStoreCorrupt marks a store file that is damaged (bytes overwritten, a failing disk): bbolt
// finds its pages inconsistent, or it holds records snare cannot decode. Reading on would crash
// or misread, so the store is refused; RecoverStore salvages what is readable.
var ErrStoreCorrupt = errors.New("store file is corrupt")

// OpenStore opens or creates the store at path (creating its directory, mode 0700). A damaged
// file is refused with ErrStoreCorrupt after a consistency check of every page and every record.
func OpenStore(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	// An existing file is checked before it is opened for writing: a writable open reads the
	// freelist, and bbolt panics on a damaged one with the file mapped and locked for good.
	if _, err := os.Stat(path); err == nil {
		db, err := openDB(path, true)
		if err == nil {
			err = checkDB(db)
			db.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", path, err)
		}
	}
	db, err := openDB(path, false)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{db: db, path: path}
	if err := s.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return s, nil
}

// openDB opens the bbolt file (read-only: shared with other readers, but not with a snared).
// Damaged meta pages are ErrStoreCorrupt.
func openDB(path string, readOnly bool) (*bolt.DB, error) {
	var db *bolt.DB
	err := guard(func() error {
		var err error
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 200 * time.Millisecond, FreelistType: bolt.FreelistMapType,
			ReadOnly: readOnly,
			// Map 1 GiB of address space up front: growing the mapping re-reads every node of a
			// big transaction, which made a 1,000,000-entry import quadratic.
			InitialMmapSize: 1 << 30})
		return err
	})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, ErrStoreLocked
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, fmt.Errorf("%w: meta pages: %w", ErrStoreCorrupt, err)
	}
	return db, err
}

// noteDeadline lowers earliest to d if d is earlier (zero d: permanent, ignored).
func (s *Store) noteDeadline(d time.Time) {
	if !d.IsZero() && (s.earliest.IsZero() || d.Before(s.earliest)) {
		s.earliest = d
	}
}

// Count is the number of stored rules.
func (s *Store) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count[0] + s.count[1]
}

// CountFamily is the number of stored rules of one address family (block.capacity is per family).
func (s *Store) CountFamily(ipv6 bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count[FamilyIndex(ipv6)]
}

// FamilyIndex indexes the per-family counts: 0 for IPv4, 1 for IPv6.
func FamilyIndex(ipv6 bool) int {
	if ipv6 {
		return 1
	}
	return 0
}

// keyFamily is the familyIndex of a prefix key.
func keyFamily(k []byte) int { return FamilyIndex(len(k) > 0 && k[0] == 6) }

// Due reports whether some rule may have expired by now; false means none has, so the sweeper
// can skip walking the store.
func (s *Store) Due(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.earliest.IsZero() && !now.Before(s.earliest)
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Size is the database file's size in bytes.
func (s *Store) Size() int64 {
	var n int64
	_ = s.db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	return n
}

// Update runs fn in one read-write transaction, committed (and fsynced) when fn returns nil and
// rolled back when it returns an error.
func (s *Store) Update(fn func(*Tx) error) error {
	var t *Tx
	err := s.db.Update(func(tx *bolt.Tx) error {
		t = wrapTx(tx)
		return fn(t)
	})
	if err == nil {
		s.mu.Lock()
		s.count[0] += t.added[0]
		s.count[1] += t.added[1]
		if t.walked {
			s.earliest = t.next
		}
		if !t.earliest.IsZero() {
			s.noteDeadline(t.earliest)
		}
		s.mu.Unlock()
	}
	return err
}

// View runs fn in a read-only transaction; only the read methods of Tx may be used.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(wrapTx(tx)) })
}
