package backend

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// Record is a rule in 24 bytes without pointers, for the million-rule paths (an import, a
// restore): a million of them are 24 MB that the garbage collector never scans and that move
// without write barriers, where a []Rule (netip.Prefix and time.Time hold pointers) is 56 MB that
// every collection scans. Memory touched for the first time is dear on a VM. The time is kept to
// the millisecond, as the store keeps it. Keeps the 1M import's peak under 150 MB (32-byte
// records: 102 MB, these: 82 MB).
type Record struct {
	hi, lo uint64 // the address as two big-endian halves (AddrHalves): IPv4 in the top of hi
	// meta packs the unix milliseconds (the deadline of a TTL import, when the block was made
	// for a permanent one) above the prefix length (bits 8-15) and the family (bit 0: IPv6).
	meta int64
}

// RecordOf is p with the time ms (unix milliseconds).
func RecordOf(p netip.Prefix, ms int64) Record {
	hi, lo := AddrHalves(p.Addr())
	r := Record{hi: hi, lo: lo, meta: int64(p.Bits()) << 8}
	if !p.Addr().Is4() {
		r.meta |= 1
	}
	r.SetMs(ms)
	return r
}

// Bits is the prefix length.
func (r *Record) Bits() uint8 { return uint8(r.meta >> 8) }

// V6 reports an IPv6 prefix.
func (r *Record) V6() bool { return r.meta&1 != 0 }

// Halves is the address as AddrHalves gives it.
func (r *Record) Halves() (hi, lo uint64) { return r.hi, r.lo }

// Ms is the record's time in unix milliseconds (47 bits with the sign: ±4,000 years).
func (r *Record) Ms() int64 { return r.meta >> 16 }

// SetMs sets the record's time.
func (r *Record) SetMs(ms int64) { r.meta = ms<<16 | r.meta&0xffff }

// Time is the record's time.
func (r *Record) Time() time.Time { return time.UnixMilli(r.Ms()) }

// Prefix is the record's prefix.
func (r *Record) Prefix() netip.Prefix {
	if !r.V6() {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(r.hi>>32))
		return netip.PrefixFrom(netip.AddrFrom4(b), int(r.Bits()))
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], r.hi)
	binary.BigEndian.PutUint64(b[8:], r.lo)
	return netip.PrefixFrom(netip.AddrFrom16(b), int(r.Bits()))
}

// SamePrefix reports whether r and o are the same prefix.
func (r *Record) SamePrefix(o *Record) bool {
	return r.hi == o.hi && r.lo == o.lo && r.meta&0xffff == o.meta&0xffff
}

// Before reports whether r sorts before o in store order (family, address, length).
func (r *Record) Before(o *Record) bool {
	switch {
	case r.V6() != o.V6():
		return o.V6()
	case r.hi != o.hi:
		return r.hi < o.hi
	case r.lo != o.lo:
		return r.lo < o.lo
	}
	return r.Bits() < o.Bits()
}

// AddrHalves is an address as two big-endian integers; an IPv4 address is the top 32 bits of hi.
func AddrHalves(a netip.Addr) (hi, lo uint64) {
	if a.Is4() {
		b := a.As4()
		return uint64(binary.BigEndian.Uint32(b[:])) << 32, 0
	}
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

// Records are rules as Records (Rules): a zero time is permanent, as in the store.
type Records []Record

// Len implements Rules.
func (r Records) Len() int { return len(r) }

// At implements Rules.
func (r Records) At(i int) Rule {
	var d time.Time
	if ms := r[i].Ms(); ms != 0 {
		d = time.UnixMilli(ms)
	}
	return Rule{Prefix: r[i].Prefix(), Deadline: d}
}
