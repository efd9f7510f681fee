package loader

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sync/errgroup"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/bpf"
	"github.com/snare-dev/snare/internal/radix"
)

// batchSize bounds one batch syscall; large enough to amortise the syscall, small enough that a
// hash bucket always fits (ENOSPC otherwise).
const batchSize = 4096

// v6Mask returns the network-order mask of an IPv6 prefix length as the program reads it
// (two little-endian u64 loads of the address bytes).
func v6Mask(bits int) [2]uint64 {
	var b [16]byte
	for i := 0; i < bits && i < 128; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return [2]uint64{binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])}
}

func maskBits(m [2]uint64) int {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], m[0])
	binary.LittleEndian.PutUint64(b[8:], m[1])
	n := 0
	for _, c := range b {
		for i := 7; i >= 0; i-- {
			if c&(1<<i) == 0 {
				return n
			}
			n++
		}
	}
	return n
}

func (x *XDP) settings() (bpf.SnareConfig, error) {
	var c bpf.SnareConfig
	if err := x.objs.Settings.Lookup(uint32(0), &c); err != nil {
		return c, fmt.Errorf("read settings map: %w", err)
	}
	return c, nil
}

// updateSettings read-modify-writes the settings map; callers hold x.mu (or are in Open).
func (x *XDP) updateSettings(fn func(*bpf.SnareConfig)) error {
	c, err := x.settings()
	if err != nil {
		return err
	}
	fn(&c)
	if err := x.objs.Settings.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("write settings map: %w", err)
	}
	return nil
}

func lpm4(p netip.Prefix) bpf.SnareLpm4Key {
	return bpf.SnareLpm4Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As4()}
}

func lpm6(p netip.Prefix) bpf.SnareLpm6Key {
	return bpf.SnareLpm6Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}
}

// be32 is an IPv4 address as the program's u32 key: the address bytes in memory order.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrFromBE32(k uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], k)
	return netip.AddrFrom4(b)
}

// byMap holds entries split by the map they belong in (backend.Place: Exact4 in Block4, Exact6
// in Block6, CIDR4 and CIDR6 in the LPM tries): a batch being written, or the maps as read (in
// the kernel's order).
type byMap struct {
	k4 []uint32
	v4 []bpf.SnareBlockVal
	k6 []bpf.SnareAddr6
	v6 []bpf.SnareBlockVal
	c4 []bpf.SnareLpm4Key
	w4 []bpf.SnareBlockVal
	c6 []bpf.SnareLpm6Key
	w6 []bpf.SnareBlockVal
}

// window is how many rules a batch write sorts at a time. A big batch is worked through in
// windows whose buffers (3 MB) are reused: sorting a million rules into fresh slices cost more
// in page faults (about 2 ms per MB on a VM) than the sort itself.
const window = 16 * batchSize

func (s *byMap) reset() {
	s.k4, s.v4, s.k6, s.v6 = s.k4[:0], s.v4[:0], s.k6[:0], s.v6[:0]
	s.c4, s.w4, s.c6, s.w6 = s.c4[:0], s.w4[:0], s.c6[:0], s.w6[:0]
}

// add puts one rule (normalized) into the slices of its map; room is how many rules the window
// has left, this one included.
func (s *byMap) add(p netip.Prefix, v bpf.SnareBlockVal, v6bits, room int) {
	switch backend.Place(p, v6bits) {
	case backend.Exact4:
		s.k4, s.v4 = push(s.k4, be32(p.Addr()), room), push(s.v4, v, room)
	case backend.Exact6:
		s.k6, s.v6 = push(s.k6, bpf.SnareAddr6{Addr: p.Addr().As16()}, room), push(s.v6, v, room)
	case backend.CIDR4:
		s.c4, s.w4 = push(s.c4, lpm4(p), room), push(s.w4, v, room)
	case backend.CIDR6:
		s.c6, s.w6 = push(s.c6, lpm6(p), room), push(s.w6, v, room)
	}
}

// push appends x to s; a full s grows by the rest of the window at once. Grown by doubling, the
// buffers of a million-entry load (whenever a collection had emptied XDP.windowBufs) were copied
// and faulted in again and again: 60 ms of an import.
func push[T any](s []T, x T, room int) []T {
	if len(s) == cap(s) {
		s = slices.Grow(s, room)
	}
	return append(s, x)
}

// checkRules refuses a batch with an invalid prefix or one that covers every address, before
// anything of it is written, and counts the rules each map would take (by placement).
func checkRules(rules backend.Rules, v6bits int) (counts [backend.Placements]int, err error) {
	for i := range rules.Len() {
		p, err := backend.NormalizeBlock(rules.At(i).Prefix)
		if err != nil {
			return counts, err
		}
		counts[backend.Place(p, v6bits)]++
	}
	return counts, nil
}

// inWindows checks rules, then calls fn with them split by map, a window at a time (see
// windows).
func (x *XDP) inWindows(rules backend.Rules, v6bits int, fn func(s *byMap) error) error {
	if _, err := checkRules(rules, v6bits); err != nil {
		return err
	}
	return x.windows(rules, v6bits, fn)
}

// windows calls fn with checked rules split by map, a window at a time; big batches are split
// across CPUs (fn runs concurrently then, on windows of its own).
func (x *XDP) windows(rules backend.Rules, v6bits int, fn func(s *byMap) error) error {
	c := now()
	return parallelChunks(rules.Len(), func(i, j int) error {
		s, _ := x.windowBufs.Get().(*byMap)
		if s == nil {
			s = new(byMap)
		}
		defer x.windowBufs.Put(s)
		for ; i < j; i += window {
			s.reset()
			end := min(i+window, j)
			for k := i; k < end; k++ {
				r := rules.At(k)
				p, _ := backend.Normalize(r.Prefix)
				s.add(p, bpf.SnareBlockVal{Deadline: c.toKernel(r.Deadline)}, v6bits, end-k)
			}
			if err := fn(s); err != nil {
				return err
			}
		}
		return nil
	})
}

// keepCounters carries hits and last-hit of existing entries over to a re-block, so extending a
// block does not reset what `snarectl list` shows. Only for small batches: an import or restore
// writes fresh entries. The trap flag is not carried: once the daemon writes an entry (adopting
// a trap block, or blocking the address itself), the block is the store's, and an entry the
// store no longer has must not be adopted again as the kernel's own at the next start.
func keepCounters[K any](m *ebpf.Map, keys []K, vals []bpf.SnareBlockVal) {
	if len(keys) > 1024 {
		return
	}
	var old bpf.SnareBlockVal
	for i := range keys {
		if m.Lookup(&keys[i], &old) == nil {
			vals[i].Hits, vals[i].LastHit = old.Hits, old.LastHit
		}
	}
}

// putBatch writes keys/values with BPF_MAP_UPDATE_BATCH in chunks. Big loads (restore, import)
// call it from several CPUs at once (inWindows): the kernel's LRU hash keeps per-CPU free lists,
// so concurrent batch updates scale instead of contending.
func putBatch[K any](m *ebpf.Map, keys []K, vals []bpf.SnareBlockVal) error {
	for i := 0; i < len(keys); i += batchSize {
		k := min(i+batchSize, len(keys))
		if _, err := m.BatchUpdate(keys[i:k], vals[i:k], nil); err != nil {
			return fmt.Errorf("batch update %s: %w", m, err)
		}
	}
	return nil
}

// parallelChunks runs fn over [0,n) split into one contiguous range per CPU, of at least 32K
// entries (10 ms or more of the kernel's work, far more than a goroutine costs), else in the
// caller.
func parallelChunks(n int, fn func(i, j int) error) error {
	workers := min(runtime.GOMAXPROCS(0), n/(8*batchSize))
	if workers < 2 {
		return fn(0, n)
	}
	var g errgroup.Group
	per := (n + workers - 1) / workers
	for i := 0; i < n; i += per {
		j := min(i+per, n)
		g.Go(func() error { return fn(i, j) })
	}
	return g.Wait()
}

// putEach writes entries one by one (LPM tries have no batch operations).
func putEach[K any](m *ebpf.Map, keys []K, vals []bpf.SnareBlockVal) error {
	for i := range keys {
		if err := m.Put(&keys[i], &vals[i]); err != nil {
			return fmt.Errorf("update %s: %w", m, err)
		}
	}
	return nil
}

// Block implements backend.Enforcer.
func (x *XDP) Block(ctx context.Context, rules []backend.Rule) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	cfg, err := x.settings()
	if err != nil {
		return err
	}
	v6bits := maskBits(cfg.V6Mask)
	if _, err := checkRules(backend.RuleList(rules), v6bits); err != nil {
		return err
	}
	return x.blockLocked(backend.RuleList(rules), v6bits)
}

// blockLocked is Block of checked rules with x.mu held.
func (x *XDP) blockLocked(rules backend.Rules, v6bits int) error {
	// Counters are carried over only when the whole batch is one window (keepCounters
	// bounds it further per map): the windows of a big load are fresh entries.
	small := rules.Len() <= window
	var cidrs atomic.Bool
	err := x.windows(rules, v6bits, func(s *byMap) error {
		if small {
			keepCounters(x.objs.Block4, s.k4, s.v4)
			keepCounters(x.objs.Block6, s.k6, s.v6)
			keepCounters(x.objs.Cidr4, s.c4, s.w4)
			keepCounters(x.objs.Cidr6, s.c6, s.w6)
		}
		if err := putBatch(x.objs.Block4, s.k4, s.v4); err != nil {
			return err
		}
		if err := putBatch(x.objs.Block6, s.k6, s.v6); err != nil {
			return err
		}
		if len(s.c4)+len(s.c6) == 0 {
			return nil
		}
		cidrs.Store(true)
		if err := putEach(x.objs.Cidr4, s.c4, s.w4); err != nil {
			return err
		}
		return putEach(x.objs.Cidr6, s.c6, s.w6)
	})
	if cidrs.Load() {
		// Also after a failure: some CIDRs may be in.
		err = errors.Join(err, x.recountCIDR())
	}
	return err
}

// recountCIDR stores how many entries each LPM trie holds, so the program can skip empty tries.
func (x *XDP) recountCIDR() error {
	n4, err := countKeys(x.objs.Cidr4)
	if err != nil {
		return err
	}
	n6, err := countKeys(x.objs.Cidr6)
	if err != nil {
		return err
	}
	return x.updateSettings(func(c *bpf.SnareConfig) {
		c.Cidr4Entries, c.Cidr6Entries = uint32(n4), uint32(n6)
	})
}

func countKeys(m *ebpf.Map) (int, error) {
	// Hash maps answer in batches of thousands per syscall; LPM tries and
	// arrays do not support batch lookup, so they are walked key by key
	// (they are small: CIDR lists and scan state).
	if m.Type() == ebpf.Hash || m.Type() == ebpf.LRUHash {
		kb, vb := byteRecords(batchSize, m.KeySize()), byteRecords(batchSize, m.ValueSize())
		var (
			cursor ebpf.MapBatchCursor
			n      int
		)
		for {
			c, err := m.BatchLookup(&cursor, kb, vb, nil)
			n += c
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, nil
			}
			if err != nil {
				return 0, fmt.Errorf("count %s: %w", m, err)
			}
		}
	}
	var (
		key  = make([]byte, m.KeySize())
		next = make([]byte, m.KeySize())
		n    int
		cur  any // nil: start from the first key
	)
	for {
		err := m.NextKey(cur, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("count %s: %w", m, err)
		}
		n++
		copy(key, next)
		cur = key
	}
}

// byteRecords returns n records of size bytes each as a slice of byte arrays: batch operations
// count elements, so a flat []byte would not do.
func byteRecords(n int, size uint32) any {
	return reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(int(size), reflect.TypeFor[byte]())), n, n).Interface()
}

// deleteBatch deletes keys with BPF_MAP_DELETE_BATCH, stepping over keys that are not there.
func deleteBatch[K any](m *ebpf.Map, keys []K) error {
	for len(keys) > 0 {
		chunk := keys[:min(batchSize, len(keys))]
		n, err := m.BatchDelete(chunk, nil)
		switch {
		case err == nil:
			keys = keys[len(chunk):]
		case errors.Is(err, ebpf.ErrKeyNotExist):
			keys = keys[n+1:] // the n-th key was missing: skip it, go on
		default:
			return fmt.Errorf("batch delete %s: %w", m, err)
		}
	}
	return nil
}

func deleteEach[K any](m *ebpf.Map, keys []K) error {
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", m, err)
		}
	}
	return nil
}

// Unblock implements backend.Enforcer. A bad prefix anywhere refuses the whole call before
// anything is deleted.
func (x *XDP) Unblock(ctx context.Context, prefixes []netip.Prefix) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	cfg, err := x.settings()
	if err != nil {
		return err
	}
	var cidrs atomic.Bool
	err = x.inWindows(prefixRules(prefixes), maskBits(cfg.V6Mask), func(s *byMap) error {
		if err := deleteBatch(x.objs.Block4, s.k4); err != nil {
			return err
		}
		if err := deleteBatch(x.objs.Block6, s.k6); err != nil {
			return err
		}
		if len(s.c4)+len(s.c6) == 0 {
			return nil
		}
		cidrs.Store(true)
		if err := deleteEach(x.objs.Cidr4, s.c4); err != nil {
			return err
		}
		return deleteEach(x.objs.Cidr6, s.c6)
	})
	if cidrs.Load() {
		err = errors.Join(err, x.recountCIDR())
	}
	return err
}

// prefixRules reads prefixes as rules (no deadline) in place: a sweep of a million held a 56 MB
// []backend.Rule copy of them otherwise.
type prefixRules []netip.Prefix

func (p prefixRules) Len() int              { return len(p) }
func (p prefixRules) At(i int) backend.Rule { return backend.Rule{Prefix: p[i]} }

// readAll reads a hash map with BPF_MAP_LOOKUP_BATCH (or an iterator for LPM tries, which have no
// batch lookup). Not a consistent snapshot under concurrent change; the sweeper reconciles.
func readAll[K any](m *ebpf.Map) ([]K, []bpf.SnareBlockVal, error) {
	return readAllSized[K](m, 0)
}

// readAllSized is readAll for a map expected to hold about hint entries: the result is
// allocated for that many up front instead of doubling its way there (each doubling faults in
// fresh memory, which costs more than the copy on a VM).
func readAllSized[K any](m *ebpf.Map, hint int) ([]K, []bpf.SnareBlockVal, error) {
	var (
		keys []K
		vals []bpf.SnareBlockVal
	)
	if m.Type() == ebpf.LPMTrie {
		var (
			k K
			v bpf.SnareBlockVal
		)
		it := m.Iterate()
		for it.Next(&k, &v) {
			keys = append(keys, k)
			vals = append(vals, v)
		}
		return keys, vals, it.Err()
	}
	// Batches land straight in the result, which doubles when full: a million entries read
	// through a bounce buffer and grown by append were copied several times over.
	size := 4 * batchSize
	if hint > 0 {
		size = hint + hint/16 + batchSize // trap blocks may have come in beside the expected ones
	}
	keys, vals = make([]K, 0, size), make([]bpf.SnareBlockVal, 0, size)
	var cursor ebpf.MapBatchCursor
	for {
		if cap(keys)-len(keys) < batchSize {
			keys = slices.Grow(keys, len(keys))
		}
		if cap(vals)-len(vals) < batchSize { // not always with keys: capacities round differently
			vals = slices.Grow(vals, len(vals))
		}
		l := len(keys)
		n, err := m.BatchLookup(&cursor, keys[l:l+batchSize], vals[l:l+batchSize], nil)
		keys, vals = keys[:l+n], vals[:l+n]
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return keys, vals, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("batch lookup %s: %w", m, err)
		}
	}
}

// blockV6Bits is the length IPv6 sources are blocked at, as the settings map holds it.
func (x *XDP) blockV6Bits() (int, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	cfg, err := x.settings()
	if err != nil {
		return 0, err
	}
	return maskBits(cfg.V6Mask), nil
}

// ruleState is one map entry as the Enforcer reports it, deadlines on the wall clock.
func ruleState(c clock, p netip.Prefix, v bpf.SnareBlockVal) backend.RuleState {
	return backend.RuleState{
		Rule:     backend.Rule{Prefix: p, Deadline: deadlineWall(c, v.Deadline)},
		Hits:     v.Hits,
		LastHit:  c.toWall(v.LastHit),
		FromTrap: v.Flags&flagFromTrap != 0,
	}
}

// flagFromTrap marks an entry the program inserted at a trap.
const flagFromTrap = uint32(bpf.SnareBlockFlagBLOCK_F_TRAP)

// readMaps reads the four block maps, the two big ones side by side: a batch lookup walks every
// bucket of a map sized for the whole capacity, however few entries it holds. hint4 and hint6
// are the entries expected in the exact-address maps (0: unknown).
func (x *XDP) readMaps(hint4, hint6 int) (byMap, error) {
	var r byMap
	var g errgroup.Group
	g.Go(func() (err error) {
		r.k6, r.v6, err = readAllSized[bpf.SnareAddr6](x.objs.Block6, hint6)
		return err
	})
	var err error
	if r.k4, r.v4, err = readAllSized[uint32](x.objs.Block4, hint4); err == nil {
		if r.c4, r.w4, err = readAll[bpf.SnareLpm4Key](x.objs.Cidr4); err == nil {
			r.c6, r.w6, err = readAll[bpf.SnareLpm6Key](x.objs.Cidr6)
		}
	}
	return r, errors.Join(err, g.Wait())
}

func (r *byMap) len() int { return len(r.k4) + len(r.k6) + len(r.c4) + len(r.c6) }

// Rules implements backend.Enforcer.
func (x *XDP) Rules(ctx context.Context) ([]backend.RuleState, error) {
	v6bits, err := x.blockV6Bits()
	if err != nil {
		return nil, err
	}
	r, err := x.readMaps(0, 0)
	if err != nil {
		return nil, err
	}
	// Allocated once: RuleState holds pointers (times, prefixes), so growing it by append
	// would copy under write barriers again and again.
	out := make([]backend.RuleState, 0, r.len())
	c := now()
	add := func(p netip.Prefix, v bpf.SnareBlockVal) { out = append(out, ruleState(c, p, v)) }
	for i, k := range r.k4 {
		add(netip.PrefixFrom(addrFromBE32(k), 32), r.v4[i])
	}
	for i, k := range r.k6 {
		add(netip.PrefixFrom(netip.AddrFrom16(k.Addr), v6bits), r.v6[i])
	}
	for i, k := range r.c4 {
		add(netip.PrefixFrom(netip.AddrFrom4(k.Addr), int(k.Prefixlen)), r.w4[i])
	}
	for i, k := range r.c6 {
		add(netip.PrefixFrom(netip.AddrFrom16(k.Addr), int(k.Prefixlen)), r.w6[i])
	}
	return out, nil
}

// deadlineWall converts a kernel deadline to wall clock; an expired entry keeps a deadline in the
// past (never the zero time, which means permanent).
func deadlineWall(c clock, k uint64) time.Time {
	if k == permanent {
		return time.Time{}
	}
	if k <= 1 {
		return c.wall.Add(-time.Duration(c.mono)) // set already expired: boot time
	}
	return c.toWall(k)
}

// sameDeadline tells whether two kernel deadlines are the same block deadline, allowing for the
// rounding of two clock conversions of one wall-clock deadline.
func sameDeadline(have, want uint64) bool {
	if have == permanent || want == permanent {
		return have == want
	}
	d := int64(have) - int64(want)
	return d > -int64(2*time.Millisecond) && d < int64(2*time.Millisecond)
}

// Replace implements backend.Enforcer: the kernel ends up holding rules, and the trap blocks the
// program made itself that rules lack (unexpired), which are returned for adoption. The maps' raw
// keys are compared with the wanted ones, both in key order, so a restart over a million pinned
// entries builds no Go value per entry beyond an index. Entries already present with the same
// deadline are left alone; rewritten ones keep their hit counters. It returns how many entries
// were (re)inserted.
func (x *XDP) Replace(ctx context.Context, rules backend.Rules) (int, []backend.RuleState, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	cfg, err := x.settings()
	if err != nil {
		return 0, nil, err
	}
	v6bits := maskBits(cfg.V6Mask)
	counts, err := checkRules(rules, v6bits)
	if err != nil {
		return 0, nil, err
	}
	have, err := x.readMaps(counts[backend.Exact4], counts[backend.Exact6])
	if err != nil {
		return 0, nil, err
	}
	if have.len() == 0 {
		// Empty maps (a start after a reboot): nothing to compare, one batch load.
		if err := x.blockLocked(rules, v6bits); err != nil {
			return 0, nil, err
		}
		return rules.Len(), nil, nil
	}
	c := now()
	trapBlock := func(v bpf.SnareBlockVal) bool {
		return v.Flags&flagFromTrap != 0 && (v.Deadline == permanent || v.Deadline > c.mono)
	}
	want := wantedKeys(rules, v6bits, counts)
	d4 := diffMap(cmpKey4, have.k4, have.v4, keyOrder4(have.k4), want.k4, want.d4, keyOrder4(want.k4), trapBlock)
	d6 := diffMap(cmpKey6, have.k6, have.v6, keyOrder6(have.k6), want.k6, want.d6, keyOrder6(want.k6), trapBlock)
	// The program inserts trap blocks into the exact-address maps only: the tries keep nothing.
	never := func(bpf.SnareBlockVal) bool { return false }
	e4 := diffMap(cmpLpm4, have.c4, have.w4, keyOrder(have.c4, cmpLpm4), want.c4, want.e4, keyOrder(want.c4, cmpLpm4), never)
	e6 := diffMap(cmpLpm6, have.c6, have.w6, keyOrder(have.c6, cmpLpm6), want.c6, want.e6, keyOrder(want.c6, cmpLpm6), never)
	have, want = byMap{}, wanted{}
	var trapped []backend.RuleState
	for i, k := range d4.keepK {
		trapped = append(trapped, ruleState(c, netip.PrefixFrom(addrFromBE32(k), 32), d4.keepV[i]))
	}
	for i, k := range d6.keepK {
		trapped = append(trapped, ruleState(c, netip.PrefixFrom(netip.AddrFrom16(k.Addr), v6bits), d6.keepV[i]))
	}

	err = errors.Join(
		parallelChunks(len(d4.del), func(i, j int) error { return deleteBatch(x.objs.Block4, d4.del[i:j]) }),
		parallelChunks(len(d6.del), func(i, j int) error { return deleteBatch(x.objs.Block6, d6.del[i:j]) }),
		parallelChunks(len(d4.putK), func(i, j int) error { return putBatch(x.objs.Block4, d4.putK[i:j], d4.putV[i:j]) }),
		parallelChunks(len(d6.putK), func(i, j int) error { return putBatch(x.objs.Block6, d6.putK[i:j], d6.putV[i:j]) }),
	)
	if err != nil {
		return 0, nil, err
	}
	if len(e4.del)+len(e6.del)+len(e4.putK)+len(e6.putK) > 0 {
		err = errors.Join(deleteEach(x.objs.Cidr4, e4.del), deleteEach(x.objs.Cidr6, e6.del),
			putEach(x.objs.Cidr4, e4.putK, e4.putV), putEach(x.objs.Cidr6, e6.putK, e6.putV))
		if err = errors.Join(err, x.recountCIDR()); err != nil {
			return 0, nil, err
		}
	}
	return len(d4.putK) + len(d6.putK) + len(e4.putK) + len(e6.putK), trapped, nil
}

// wanted is a batch of rules split by map: keys and kernel deadlines, in the batch's order.
type wanted struct {
	k4 []uint32
	d4 []uint64
	k6 []bpf.SnareAddr6
	d6 []uint64
	c4 []bpf.SnareLpm4Key
	e4 []uint64
	c6 []bpf.SnareLpm6Key
	e6 []uint64
}

// wantedKeys splits checked rules by map; each slice is allocated at its final size, n (the
// counts checkRules returned).
func wantedKeys(rules backend.Rules, v6bits int, n [backend.Placements]int) wanted {
	w := wanted{
		k4: make([]uint32, 0, n[backend.Exact4]), d4: make([]uint64, 0, n[backend.Exact4]),
		k6: make([]bpf.SnareAddr6, 0, n[backend.Exact6]), d6: make([]uint64, 0, n[backend.Exact6]),
		c4: make([]bpf.SnareLpm4Key, 0, n[backend.CIDR4]), e4: make([]uint64, 0, n[backend.CIDR4]),
		c6: make([]bpf.SnareLpm6Key, 0, n[backend.CIDR6]), e6: make([]uint64, 0, n[backend.CIDR6]),
	}
	c := now()
	for i := range rules.Len() {
		r := rules.At(i)
		p, _ := backend.Normalize(r.Prefix)
		d := c.toKernel(r.Deadline)
		switch backend.Place(p, v6bits) {
		case backend.Exact4:
			w.k4, w.d4 = append(w.k4, be32(p.Addr())), append(w.d4, d)
		case backend.Exact6:
			w.k6, w.d6 = append(w.k6, bpf.SnareAddr6{Addr: p.Addr().As16()}), append(w.d6, d)
		case backend.CIDR4:
			w.c4, w.e4 = append(w.c4, lpm4(p)), append(w.e4, d)
		case backend.CIDR6:
			w.c6, w.e6 = append(w.c6, lpm6(p)), append(w.e6, d)
		}
	}
	return w
}

// Key orders. Any total order would do for the merge; address order makes a batch in store
// order (what the daemon passes) already sorted, which the sort then only confirms.
func cmpKey4(a, b uint32) int { return cmp.Compare(bits.ReverseBytes32(a), bits.ReverseBytes32(b)) }

func cmpKey6(a, b bpf.SnareAddr6) int { return bytes.Compare(a.Addr[:], b.Addr[:]) }

func cmpLpm4(a, b bpf.SnareLpm4Key) int {
	if c := bytes.Compare(a.Addr[:], b.Addr[:]); c != 0 {
		return c
	}
	return cmp.Compare(a.Prefixlen, b.Prefixlen)
}

func cmpLpm6(a, b bpf.SnareLpm6Key) int {
	if c := bytes.Compare(a.Addr[:], b.Addr[:]); c != 0 {
		return c
	}
	return cmp.Compare(a.Prefixlen, b.Prefixlen)
}

// mapChange is what one map needs to hold exactly the wanted entries, and the entries kept
// although not wanted.
type mapChange[K any] struct {
	del   []K
	putK  []K
	putV  []bpf.SnareBlockVal
	keepK []K
	keepV []bpf.SnareBlockVal
}

// diffMap compares one map's entries as read (hk, hv, visited in key order h) with the wanted
// keys and kernel deadlines (wk, wd, in key order w; for a key given twice the later one counts,
// as in a batch update). An entry whose deadline is the wanted one is left alone; one written
// again keeps its counters and flags; an entry not wanted is deleted unless keep says so.
func diffMap[K any](order func(a, b K) int, hk []K, hv []bpf.SnareBlockVal, h []int32, wk []K, wd []uint64, w []int32, keep func(bpf.SnareBlockVal) bool) mapChange[K] {
	var c mapChange[K]
	i, j := 0, 0
	for i < len(h) || j < len(w) {
		if j+1 < len(w) && order(wk[w[j]], wk[w[j+1]]) == 0 {
			j++ // a later duplicate wins
			continue
		}
		var o int
		switch {
		case j == len(w):
			o = -1
		case i == len(h):
			o = 1
		default:
			o = order(hk[h[i]], wk[w[j]])
		}
		switch {
		case o < 0:
			if v := hv[h[i]]; keep(v) {
				c.keepK, c.keepV = append(c.keepK, hk[h[i]]), append(c.keepV, v)
			} else {
				c.del = append(c.del, hk[h[i]])
			}
			i++
		case o > 0:
			c.putK = append(c.putK, wk[w[j]])
			c.putV = append(c.putV, bpf.SnareBlockVal{Deadline: wd[w[j]]})
			j++
		default:
			if old := hv[h[i]]; !sameDeadline(old.Deadline, wd[w[j]]) {
				c.putK = append(c.putK, wk[w[j]])
				c.putV = append(c.putV, bpf.SnareBlockVal{Deadline: wd[w[j]], Hits: old.Hits, LastHit: old.LastHit, Flags: old.Flags})
			}
			i++
			j++
		}
	}
	return c
}

// keyOrder4 is keyOrder for IPv4 keys in cmpKey4's order, by radix sort (a million in ~20 ms).
// Keys in order already (the wanted side of a restart, in store order) cost only the check.
func keyOrder4(keys []uint32) []int32 {
	if slices.IsSortedFunc(keys, cmpKey4) {
		return radix.Identity(len(keys))
	}
	ord, idx := make([]uint32, len(keys)), radix.Identity(len(keys))
	for i, k := range keys {
		ord[i] = bits.ReverseBytes32(k)
	}
	radix.Sort(ord, idx)
	return idx
}

// keyOrder6 is keyOrder for IPv6 keys in cmpKey6's order: by the low half of the address, then
// (stably) by the high half. With the default /64 blocks the low half is all zero, and its
// passes cost one count each.
func keyOrder6(keys []bpf.SnareAddr6) []int32 {
	if slices.IsSortedFunc(keys, cmpKey6) {
		return radix.Identity(len(keys))
	}
	ord, idx := make([]uint64, len(keys)), radix.Identity(len(keys))
	for i, k := range keys {
		ord[i] = binary.BigEndian.Uint64(k.Addr[8:])
	}
	var sorter radix.Sorter[uint64]
	sorter.Sort(ord, idx)
	for j, i := range idx {
		ord[j] = binary.BigEndian.Uint64(keys[i].Addr[:8])
	}
	sorter.Sort(ord, idx)
	return idx
}

// keyOrder returns the indexes of keys in key order, equal keys in index order. Sorting 4-byte
// indexes moves far less memory than sorting the keys with their values.
func keyOrder[K any](keys []K, order func(a, b K) int) []int32 {
	idx := radix.Identity(len(keys))
	less := func(a, b int32) int {
		if c := order(keys[a], keys[b]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	}
	if !slices.IsSortedFunc(idx, less) {
		slices.SortFunc(idx, less)
	}
	return idx
}

// SetAllow implements backend.Enforcer.
func (x *XDP) SetAllow(ctx context.Context, prefixes []netip.Prefix) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	want4 := map[bpf.SnareLpm4Key]bool{}
	want6 := map[bpf.SnareLpm6Key]bool{}
	for _, p := range prefixes {
		p, err := backend.Normalize(p)
		if err != nil {
			return fmt.Errorf("allowlist: %w", err)
		}
		if p.Addr().Is4() {
			want4[lpm4(p)] = true
		} else {
			want6[lpm6(p)] = true
		}
	}
	if err := syncSet(x.objs.Allow4, want4); err != nil {
		return fmt.Errorf("allowlist v4: %w", err)
	}
	if err := syncSet(x.objs.Allow6, want6); err != nil {
		return fmt.Errorf("allowlist v6: %w", err)
	}
	return nil
}

// syncSet makes the keys of m equal to want (value 1).
func syncSet[K comparable](m *ebpf.Map, want map[K]bool) error {
	var (
		k     K
		v     uint8
		stale []K
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for i := range stale {
		if err := m.Delete(&stale[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	one := uint8(1)
	for k := range want {
		if err := m.Put(&k, &one); err != nil {
			return err
		}
	}
	return nil
}

// SetSettings implements backend.Enforcer. Changing the IPv6 block length re-places every IPv6
// entry, since the program masks sources with it.
func (x *XDP) SetSettings(ctx context.Context, s backend.Settings) error {
	bits, err := s.IPv6Bits()
	if err != nil {
		return err
	}
	x.mu.Lock()
	cfg, err := x.settings()
	x.mu.Unlock()
	if err != nil {
		return err
	}
	var moved []backend.RuleState
	if maskBits(cfg.V6Mask) != bits {
		all, err := x.Rules(ctx)
		if err != nil {
			return err
		}
		for _, r := range all {
			if r.Prefix.Addr().Is6() {
				moved = append(moved, r)
			}
		}
		prefixes := make([]netip.Prefix, len(moved))
		for i, r := range moved {
			prefixes[i] = r.Prefix
		}
		if err := x.Unblock(ctx, prefixes); err != nil {
			return err
		}
	}
	x.mu.Lock()
	err = x.updateSettings(func(c *bpf.SnareConfig) {
		c.V6Mask = v6Mask(bits)
		c.Flags &^= cfgDryRun
		if s.DryRun {
			c.Flags |= cfgDryRun
		}
	})
	x.mu.Unlock()
	if err != nil || len(moved) == 0 {
		return err
	}
	rules := make([]backend.Rule, len(moved))
	for i, r := range moved {
		rules[i] = r.Rule
	}
	return x.Block(ctx, rules)
}

// Flags of bpf.SnareConfig.
const (
	cfgDryRun       = uint32(bpf.SnareCfgFlagCFG_DRY_RUN)
	cfgTrapTCPBlock = uint32(bpf.SnareCfgFlagCFG_TRAP_TCP_BLOCK)
	cfgTrapUDPBlock = uint32(bpf.SnareCfgFlagCFG_TRAP_UDP_BLOCK)
	cfgTrapOn       = uint32(bpf.SnareCfgFlagCFG_TRAP_ON)
)
