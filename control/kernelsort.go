package control

import (
	"encoding/binary"
	"net/netip"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/internal/radix"
)

// prefixOrder returns the indexes 0..n-1 ordered by prefix(i) in store order (the order of
// netip.Prefix.Compare on masked prefixes, and of prefixKey: family, address, length), equal
// prefixes in index order. It radix-sorts by each part in turn, least significant first, and
// skips a part every prefix shares (the family and length of a plain IPv4 list): a million
// prefixes in random order take tens of milliseconds, where a stable comparison sort of the
// structs holding them took a second.
func prefixOrder(n int, prefix func(int) netip.Prefix) []int32 {
	idx := radix.Identity(n)
	if n < 2 {
		return idx
	}
	// Each part is read once, in index order; the passes gather from these flat arrays.
	bits, fam := make([]uint8, n), make([]uint8, n)
	hi, lo := make([]uint64, n), make([]uint64, n)
	for i := range n {
		p := prefix(i)
		bits[i] = uint8(p.Bits())
		hi[i], lo[i] = addrHalves(p.Addr())
		if !p.Addr().Is4() {
			fam[i] = 1
		}
	}
	keys := make([]uint64, n)
	var sorter radix.Sorter
	pass := func(key func(i int32) uint64) {
		for j, i := range idx {
			keys[j] = key(i)
		}
		sorter.Sort(keys, idx)
	}
	if !same(bits) {
		pass(func(i int32) uint64 { return uint64(bits[i]) })
	}
	if !same(lo) {
		pass(func(i int32) uint64 { return lo[i] })
	}
	if !same(hi) {
		pass(func(i int32) uint64 { return hi[i] })
	}
	if !same(fam) {
		pass(func(i int32) uint64 { return uint64(fam[i]) })
	}
	return idx
}

// same reports whether every element of s is the first.
func same[T comparable](s []T) bool {
	for _, v := range s {
		if v != s[0] {
			return false
		}
	}
	return true
}

// addrHalves is an address as two big-endian integers; an IPv4 address is the top 32 bits of hi.
func addrHalves(a netip.Addr) (hi, lo uint64) {
	if a.Is4() {
		b := a.As4()
		return uint64(binary.BigEndian.Uint32(b[:])) << 32, 0
	}
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

// permute reorders s so that position j holds what was at s[order[j]], moving each element
// once (following the permutation's cycles) instead of copying s.
func permute[T any](s []T, order []int32) {
	done := make([]bool, len(s))
	for start := range s {
		if done[start] {
			continue
		}
		tmp := s[start]
		j := start
		for {
			done[j] = true
			k := int(order[j])
			if k == start {
				s[j] = tmp
				break
			}
			s[j] = s[k]
			j = k
		}
	}
}

// sortStates sorts the kernel's rules into store order. Sorting a million RuleStates directly
// moves 96-byte structs with pointers under write barriers and compares prefixes the slow way;
// this sorts small integer keys and then moves every state once.
func sortStates(states []backend.RuleState) {
	permute(states, prefixOrder(len(states), func(i int) netip.Prefix { return states[i].Prefix }))
}
