package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/api"

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

// storeVersion is written to the meta bucket; a store from a newer snare is refused rather
// than misread.
// Version 2 keeps rules in segments (segments.go); a version-1 store is migrated when opened.
// Version 3 lets a segment record repeat the value before it; version-2 segments are valid
// version-3 segments, so only the number changes.
const storeVersion = 3

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

// prefixKey encodes a (masked) prefix so that byte order equals netip.Prefix.Compare order:
// family (4 or 6), address bytes, prefix length.
func prefixKey(p netip.Prefix) []byte {
	return appendPrefixKey(make([]byte, 0, 18), p)
}

// appendPrefixKey appends prefixKey(p) to dst.
func appendPrefixKey(dst []byte, p netip.Prefix) []byte {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		return append(dst, 4, b[0], b[1], b[2], b[3], byte(p.Bits()))
	}
	b := a.As16()
	dst = append(dst, 6)
	dst = append(dst, b[:]...)
	return append(dst, byte(p.Bits()))
}

func parsePrefixKey(k []byte) (netip.Prefix, error) {
	switch {
	case len(k) == 6 && k[0] == 4:
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(k[1:5])), int(k[5])), nil
	case len(k) == 18 && k[0] == 6:
		return netip.PrefixFrom(netip.AddrFrom16([16]byte(k[1:17])), int(k[17])), nil
	}
	return netip.Prefix{}, fmt.Errorf("corrupt prefix key %x", k)
}

// unixMs is a time as unix milliseconds, 0 for the zero time.
func unixMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMs(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

var origins = []string{api.OriginManual, api.OriginTrap, api.OriginImport}

// encodeRule writes a rule compactly: origin byte, then varints created, deadline, offences,
// last offence, then the reason's bytes.
func encodeRule(dst []byte, r Rule) []byte {
	o := slices.Index(origins, r.Origin)
	if o < 0 {
		o = 0
	}
	dst = append(dst, byte(o))
	dst = binary.AppendVarint(dst, unixMs(r.Created))
	dst = binary.AppendVarint(dst, unixMs(r.Deadline))
	dst = binary.AppendUvarint(dst, uint64(max(r.Offences, 0)))
	dst = binary.AppendVarint(dst, unixMs(r.LastOffence))
	return append(dst, r.Reason...)
}

func decodeRule(p netip.Prefix, v []byte) (Rule, error) {
	origin, vals, reason, err := decodeRuleFields(p, v)
	if err != nil {
		return Rule{Prefix: p}, err
	}
	return Rule{Prefix: p, Origin: origin, Created: fromMs(vals[0]), Deadline: fromMs(vals[1]), Offences: int(vals[2]),
		LastOffence: fromMs(vals[3]), Reason: string(reason)}, nil
}

// decodeRuleFields splits an encoded rule without allocating: its origin, its four numbers
// (created, deadline, offences, last offence) and its reason.
func decodeRuleFields(p netip.Prefix, v []byte) (origin string, vals [4]int64, reason []byte, err error) {
	if len(v) < 1 || int(v[0]) >= len(origins) {
		return "", vals, nil, fmt.Errorf("corrupt rule %s", p)
	}
	origin = origins[v[0]]
	v = v[1:]
	for i := range vals {
		var n int
		if i == 2 {
			var u uint64
			u, n = binary.Uvarint(v)
			vals[i] = int64(u)
		} else {
			vals[i], n = binary.Varint(v)
		}
		if n <= 0 {
			return "", vals, nil, fmt.Errorf("corrupt rule %s", p)
		}
		v = v[n:]
	}
	return origin, vals, v, nil
}

func encodeOffence(o Offence) []byte {
	b := binary.AppendUvarint(nil, uint64(o.Count))
	return binary.AppendVarint(b, unixMs(o.Last))
}

func decodeOffence(v []byte) Offence {
	o, _ := parseOffence(v)
	return o
}

// parseOffence decodes an offence record; ok is false if it is corrupt.
func parseOffence(v []byte) (o Offence, ok bool) {
	c, n := binary.Uvarint(v)
	if n <= 0 {
		return Offence{}, false
	}
	l, m := binary.Varint(v[n:])
	if m <= 0 {
		return Offence{}, false
	}
	return Offence{Count: int(c), Last: fromMs(l)}, true
}

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

// Empty reports whether no rule is stored.
func (t *Tx) Empty() bool {
	k, _ := t.rules.Cursor().First()
	return k == nil
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
// during fn (record is only valid until fn returns). A closure per record cost a heap allocation
// per rule.
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

// rawDeadline reads only the deadline of an encoded rule (zero if permanent or corrupt).
func rawDeadline(v []byte) time.Time {
	if len(v) < 1 {
		return time.Time{}
	}
	v = v[1:]
	if _, n := binary.Varint(v); n > 0 {
		if d, m := binary.Varint(v[n:]); m > 0 {
			return fromMs(d)
		}
	}
	return time.Time{}
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

// bucketStaging holds the rules bucket BulkPutRules builds before it swaps it in; one a crash
// left behind is dropped when the store opens.
var bucketStaging = []byte("staging")

// BulkPutRules writes n rules, at(0) ... at(n-1) (sorted by prefix, at most one per prefix), into
// the store, replacing stored rules with the same prefix, all or nothing: it builds a new rules
// bucket beside the current one from the stored rules merged with the new ones, in full
// segments, and swaps it in with a second transaction. ready runs before the swap; its error (the
// kernel refusing the batch) abandons the new bucket. It is for big batches (import, restore):
// it rewrites every stored rule. The caller must keep other writers out until it returns (the
// daemon holds its lock).
func (s *Store) BulkPutRules(n int, at func(i int) Rule, ready func() error) error {
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
		return tx.DeleteBucket(bucketStaging)
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
