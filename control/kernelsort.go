package control

import (
	"cmp"
	"encoding/binary"
	"slices"

	"github.com/snare-dev/snare/backend"
)

// stateKey is a RuleState's place in store order (netip.Prefix.Compare, the order of prefixKey:
// family, address, prefix length) as plain integers: comparing two of them is a few integer
// compares, where comparing the byte keys cost a call and a loop each (a million states take
// ~20 million compares).
type stateKey struct {
	hi, lo uint64 // the address, big-endian; an IPv4 address is the top 32 bits of hi
	v6     bool
	bits   uint8
	i      int32 // the state's index before sorting
}

func compareStateKeys(a, b stateKey) int {
	if a.v6 != b.v6 {
		if b.v6 {
			return -1
		}
		return 1
	}
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(a.lo, b.lo); c != 0 {
		return c
	}
	return cmp.Compare(a.bits, b.bits)
}

// sortStates sorts the kernel's rules into store order. Sorting a million RuleStates directly
// moves 96-byte structs with pointers under write barriers and compares prefixes the slow way;
// this sorts small integer keys and then moves every state once.
func sortStates(states []backend.RuleState) {
	keys := make([]stateKey, len(states))
	for i := range states {
		p := states[i].Prefix
		k := stateKey{bits: uint8(p.Bits()), i: int32(i)}
		if a := p.Addr(); a.Is4() {
			b := a.As4()
			k.hi = uint64(binary.BigEndian.Uint32(b[:])) << 32
		} else {
			b := a.As16()
			k.hi, k.lo, k.v6 = binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), true
		}
		keys[i] = k
	}
	if slices.IsSortedFunc(keys, compareStateKeys) {
		return
	}
	slices.SortFunc(keys, compareStateKeys)
	// Position j takes the state at keys[j].i: follow each cycle of the permutation once.
	done := make([]bool, len(states))
	for start := range states {
		if done[start] {
			continue
		}
		tmp := states[start]
		j := start
		for {
			done[j] = true
			k := int(keys[j].i)
			if k == start {
				states[j] = tmp
				break
			}
			states[j] = states[k]
			j = k
		}
	}
}
