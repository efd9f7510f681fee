package control

import (
	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/internal/radix"
)

// prefixOrder returns the indexes 0..n-1 ordered by the prefix whose parts part(i) gives, in
// store order (the order of netip.Prefix.Compare on masked prefixes, and of prefixKey: family,
// address, length), equal prefixes in index order. It radix-sorts by each part in turn, least
// significant first, and skips a part every prefix shares (the family and length of a plain
// IPv4 list): a million prefixes in random order take tens of milliseconds, where a stable
// comparison sort of the structs holding them takes a second. hi and lo are the address's
// halves as addrHalves gives them. Keeps the 1M import of a list in random order under 1 s (a
// stable comparison sort: 1.87 s in process, this ~1.05 s).
func prefixOrder(n int, part func(i int) (hi, lo uint64, bits uint8, v6 bool)) []int32 {
	idx := radix.Identity(n)
	if n < 2 {
		return idx
	}
	// A part every prefix shares needs no pass (the family and length of a plain IPv4 list,
	// the low half of every IPv4 address).
	hi0, lo0, bits0, v60 := part(0)
	var difHi, difLo, difBits, difFam bool
	for i := 1; i < n; i++ {
		hi, lo, bits, v6 := part(i)
		difHi, difLo = difHi || hi != hi0, difLo || lo != lo0
		difBits, difFam = difBits || bits != bits0, difFam || v6 != v60
	}
	keys := make([]uint64, n)
	var sorter radix.Sorter[uint64]
	pass := func(key func(hi, lo uint64, bits uint8, v6 bool) uint64) {
		for j, i := range idx {
			keys[j] = key(part(int(i)))
		}
		sorter.Sort(keys, idx)
	}
	if difBits {
		pass(func(_, _ uint64, bits uint8, _ bool) uint64 { return uint64(bits) })
	}
	if difLo {
		pass(func(_, lo uint64, _ uint8, _ bool) uint64 { return lo })
	}
	if difHi {
		pass(func(hi, _ uint64, _ uint8, _ bool) uint64 { return hi })
	}
	if difFam {
		pass(func(_, _ uint64, _ uint8, v6 bool) uint64 {
			if v6 {
				return 1
			}
			return 0
		})
	}
	return idx
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
	permute(states, prefixOrder(len(states), func(i int) (hi, lo uint64, bits uint8, v6 bool) {
		p := states[i].Prefix
		hi, lo = backend.AddrHalves(p.Addr())
		return hi, lo, uint8(p.Bits()), !p.Addr().Is4()
	}))
}
