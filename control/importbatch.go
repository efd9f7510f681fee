package control

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// importRec is one parsed import line, without pointers. A million of them are 32 MB that the
// garbage collector never scans and that move without write barriers. The []backend.Rule the
// import parsed into before (netip.Prefix and time.Time hold pointers) made every collection
// during the parse scan it, presized capacity included, which cost more than the parse itself.
type importRec struct {
	hi, lo uint64 // the address as two big-endian halves (addrHalves): IPv4 in the top of hi
	ns     int64  // unix ns: the deadline (TTL imports) or when the block was made (permanent)
	bits   uint8
	v6     bool
}

func recOf(p netip.Prefix, ns int64) importRec {
	hi, lo := addrHalves(p.Addr())
	return importRec{hi: hi, lo: lo, ns: ns, bits: uint8(p.Bits()), v6: !p.Addr().Is4()}
}

func (r *importRec) prefix() netip.Prefix {
	if !r.v6 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(r.hi>>32))
		return netip.PrefixFrom(netip.AddrFrom4(b), int(r.bits))
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], r.hi)
	binary.BigEndian.PutUint64(b[8:], r.lo)
	return netip.PrefixFrom(netip.AddrFrom16(b), int(r.bits))
}

func (r *importRec) time() time.Time { return time.Unix(0, r.ns) }

// samePrefix reports whether r and o are the same prefix.
func (r *importRec) samePrefix(o *importRec) bool {
	return r.hi == o.hi && r.lo == o.lo && r.bits == o.bits && r.v6 == o.v6
}

// before reports whether r sorts before o in store order (family, address, length).
func (r *importRec) before(o *importRec) bool {
	switch {
	case r.v6 != o.v6:
		return o.v6
	case r.hi != o.hi:
		return r.hi < o.hi
	case r.lo != o.lo:
		return r.lo < o.lo
	}
	return r.bits < o.bits
}

// recChunk is how many records one chunk of an importBatch holds (2 MB).
const recChunk = 1 << 16

// importBatch is the growing list of an import's records, in fixed chunks: it never copies what
// it holds to grow, and holds at most one part-filled chunk, whatever the size of the list.
type importBatch struct {
	chunks [][]importRec
	n      int
}

func (b *importBatch) add(r importRec) {
	if b.n%recChunk == 0 {
		b.chunks = append(b.chunks, make([]importRec, recChunk))
	}
	b.chunks[b.n/recChunk][b.n%recChunk] = r
	b.n++
}

func (b *importBatch) at(i int) *importRec { return &b.chunks[i/recChunk][i%recChunk] }

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
		return r.hi, r.lo, r.bits, r.v6
	})
}

// inOrder is the record at position j of order (nil: the identity).
func (b *importBatch) inOrder(order []int32, j int) *importRec {
	if order != nil {
		j = int(order[j])
	}
	return b.at(j)
}

// unique gathers b's records in order (from b.order) into one slice that the store then reads
// in turn, one per prefix: of repeated prefixes the first line's, which with latest (TTL
// imports) takes the latest deadline of them all; a permanent import keeps the first line's
// date. repeated holds the indexes (into out, ascending) of the prefixes that were repeated.
func (b *importBatch) unique(order []int32, latest bool) (out []importRec, repeated []int32) {
	out = make([]importRec, b.n)
	for j := range out {
		out[j] = *b.inOrder(order, j)
	}
	if len(out) < 2 {
		return out, nil
	}
	w := 0
	for j := 1; j < len(out); j++ {
		if out[j].samePrefix(&out[w]) {
			if latest && out[j].ns > out[w].ns {
				out[w].ns = out[j].ns
			}
			if len(repeated) == 0 || repeated[len(repeated)-1] != int32(w) {
				repeated = append(repeated, int32(w))
			}
			continue
		}
		w++
		out[w] = out[j]
	}
	return out[:w+1], repeated
}
