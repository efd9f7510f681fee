package control

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// importRec is one parsed import line, without pointers: a million of them are 24 MB that the
// garbage collector never scans and that move without write barriers. (The []backend.Rule the
// import parsed into before, netip.Prefix and time.Time holding pointers, made every collection
// during the parse scan it.) 24 bytes, not 32: memory an import touches for the first time is
// dear on a VM, and the time goes at millisecond precision, as the store keeps it.
type importRec struct {
	hi, lo uint64 // the address as two big-endian halves (addrHalves): IPv4 in the top of hi
	// meta packs the unix milliseconds (the deadline of a TTL import, when the block was made
	// for a permanent one) above the prefix length (bits 8-15) and the family (bit 0: IPv6).
	meta int64
}

func recOf(p netip.Prefix, ms int64) importRec {
	hi, lo := addrHalves(p.Addr())
	r := importRec{hi: hi, lo: lo, meta: int64(p.Bits()) << 8}
	if !p.Addr().Is4() {
		r.meta |= 1
	}
	r.setMs(ms)
	return r
}

func (r *importRec) bits() uint8 { return uint8(r.meta >> 8) }
func (r *importRec) v6() bool    { return r.meta&1 != 0 }

// ms is the record's time in unix milliseconds (47 bits with the sign: ±4,000 years).
func (r *importRec) ms() int64       { return r.meta >> 16 }
func (r *importRec) setMs(ms int64)  { r.meta = ms<<16 | r.meta&0xffff }
func (r *importRec) time() time.Time { return time.UnixMilli(r.ms()) }

func (r *importRec) prefix() netip.Prefix {
	if !r.v6() {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(r.hi>>32))
		return netip.PrefixFrom(netip.AddrFrom4(b), int(r.bits()))
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], r.hi)
	binary.BigEndian.PutUint64(b[8:], r.lo)
	return netip.PrefixFrom(netip.AddrFrom16(b), int(r.bits()))
}

// samePrefix reports whether r and o are the same prefix.
func (r *importRec) samePrefix(o *importRec) bool {
	return r.hi == o.hi && r.lo == o.lo && r.meta&0xffff == o.meta&0xffff
}

// before reports whether r sorts before o in store order (family, address, length).
func (r *importRec) before(o *importRec) bool {
	switch {
	case r.v6() != o.v6():
		return o.v6()
	case r.hi != o.hi:
		return r.hi < o.hi
	case r.lo != o.lo:
		return r.lo < o.lo
	}
	return r.bits() < o.bits()
}

// recChunk is how many records one chunk of an importBatch holds (1.5 MB).
const recChunk = 1 << 16

// maxImportLines bounds the lines of one import list whatever the capacity (32M). Every line
// takes a 24-byte slot while the list is read, comments and blank lines too.
const maxImportLines = 1 << 25

// importLineLimit is how many lines an import list may have: four times block.capacity (a list
// longer than the maps can hold is a mistake, and this bounds its slots to 96 MB for the
// default million), at least 1M, at most maxImportLines.
func importLineLimit(capacity int) int {
	return min(max(4*capacity, 1<<20), maxImportLines)
}

// importBatch holds an import's records, one slot per line of the list, in fixed chunks: it
// never copies what it holds to grow, and holds at most one part-filled chunk beyond the list.
// The chunks are a fixed array so that lines can be parsed into their slots on several
// goroutines while room is made for the next ones (no slice header changes under them). A slot
// left zero (a comment, a bad or expired line) is a hole: a zero record is 0.0.0.0/0, which no
// line can block. compact removes the holes.
type importBatch struct {
	chunks [maxImportLines / recChunk]*[recChunk]importRec
	n      int // slots, then records once compacted
	limit  int // lines the list may have (importLineLimit)
}

func newImportBatch(capacity int) *importBatch {
	return &importBatch{limit: importLineLimit(capacity)}
}

// room makes slots for lines up to (and including) line number last.
func (b *importBatch) room(last int) error {
	if last > b.limit {
		return userErrorf("more than %d lines (4 times block.capacity, at least 1M): split the list", b.limit)
	}
	for k := (b.n + recChunk - 1) / recChunk; k*recChunk < last; k++ {
		b.chunks[k] = new([recChunk]importRec)
	}
	b.n = max(b.n, last)
	return nil
}

func (b *importBatch) at(i int) *importRec { return &b.chunks[i/recChunk][i%recChunk] }

// readWindow is how many records inTurn gathers at a time (128 KB).
const readWindow = 4096

// inTurn returns a reader of the records at positions 0, 1, 2, ... of idx (nil: the identity),
// best read in that order: it gathers them a window at a time, in a loop that keeps many reads
// in flight. Read one by one between other work, a million records in random order waited for
// memory every time (0.2 s of an import). Each reader is for one goroutine.
func (b *importBatch) inTurn(idx []int32) func(j int) importRec {
	n := b.n
	if idx != nil {
		n = len(idx)
	}
	var win []importRec
	w0 := 0
	return func(j int) importRec {
		if j < w0 || j >= w0+len(win) {
			w0, win = j, win[:0]
			for k := j; k < min(j+readWindow, n); k++ {
				i := k
				if idx != nil {
					i = int(idx[k])
				}
				win = append(win, *b.at(i))
			}
		}
		return win[j-w0]
	}
}

func (r *importRec) hole() bool { return r.bits() == 0 }

// compact moves the records over the holes, keeping their order, and lets unused chunks go.
func (b *importBatch) compact() {
	w := 0
	for i := range b.n {
		if r := b.at(i); !r.hole() {
			if w != i {
				*b.at(w) = *r
			}
			w++
		}
	}
	for k := (w + recChunk - 1) / recChunk; k*recChunk < b.n; k++ {
		b.chunks[k] = nil
	}
	b.n = w
}

// order returns the indexes of b's records in store order, repeated prefixes in line order. A
// list in order costs only the check (and gives nil: the identity); one in random order (a
// blocked.list is in the order its blocks were made) is radix-sorted.
func (b *importBatch) order() []int32 {
	sorted := true
	for i := 1; i < b.n && sorted; i++ {
		sorted = !b.at(i).before(b.at(i - 1))
	}
	if sorted {
		return nil
	}
	return prefixOrder(b.n, func(i int) (hi, lo uint64, bits uint8, v6 bool) {
		r := b.at(i)
		return r.hi, r.lo, r.bits(), r.v6()
	})
}

// uniqueRecs is an import's records in store order, one per prefix, as indexes into its batch:
// a second copy of a million records in order cost 24 MB of the import's peak memory.
type uniqueRecs struct {
	b        *importBatch
	keep     []int32       // record indexes, in store order
	later    map[int]int64 // keep position -> the latest time of a repeated prefix, where later than its first line's
	repeated []int32       // keep positions of the prefixes given more than once, ascending
}

// unique picks, from b's records in order (from b.order), one per prefix: of repeated prefixes
// the first line's, which with latest (TTL imports) takes the latest deadline of them all; a
// permanent import keeps the first line's date. It only reads b and order.
func (b *importBatch) unique(order []int32, latest bool) *uniqueRecs {
	u := &uniqueRecs{b: b, keep: make([]int32, 0, b.n)}
	var first importRec // of the prefix being read
	for j := range b.n {
		i := int32(j)
		if order != nil {
			i = order[j]
		}
		r := b.at(int(i))
		if w := len(u.keep) - 1; w >= 0 && r.samePrefix(&first) {
			if latest && r.ms() > first.ms() {
				if u.later == nil {
					u.later = map[int]int64{}
				}
				first.setMs(r.ms())
				u.later[w] = r.ms()
			}
			if len(u.repeated) == 0 || u.repeated[len(u.repeated)-1] != int32(w) {
				u.repeated = append(u.repeated, int32(w))
			}
			continue
		}
		first = *r
		u.keep = append(u.keep, i)
	}
	return u
}

func (u *uniqueRecs) len() int { return len(u.keep) }

// at is the record at position i of the store order, with its latest time.
func (u *uniqueRecs) at(i int) importRec {
	return u.withLater(i, *u.b.at(int(u.keep[i])))
}

// inTurn is at for reading in order (see importBatch.inTurn).
func (u *uniqueRecs) inTurn() func(i int) importRec {
	read := u.b.inTurn(u.keep)
	return func(i int) importRec { return u.withLater(i, read(i)) }
}

func (u *uniqueRecs) withLater(i int, r importRec) importRec {
	if ms, ok := u.later[i]; ok {
		r.setMs(ms)
	}
	return r
}
