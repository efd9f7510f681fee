package control

import (
	"bytes"
	"slices"

	"github.com/snare-dev/snare/backend"
)

// sortStates sorts the kernel's rules into store order (netip.Prefix.Compare, the order of
// prefixKey). Sorting a million RuleStates directly moves 96-byte structs with pointers under
// write barriers and compares prefixes the slow way; this sorts small byte keys and then moves
// every state once.
func sortStates(states []backend.RuleState) {
	type key struct {
		k [18]byte
		n uint8
		i int32
	}
	keys := make([]key, len(states))
	for i := range states {
		keys[i].n = uint8(len(appendPrefixKey(keys[i].k[:0], states[i].Prefix)))
		keys[i].i = int32(i)
	}
	sorted := true
	for i := 1; i < len(keys) && sorted; i++ {
		sorted = bytes.Compare(keys[i-1].k[:keys[i-1].n], keys[i].k[:keys[i].n]) <= 0
	}
	if sorted {
		return
	}
	slices.SortFunc(keys, func(a, b key) int { return bytes.Compare(a.k[:a.n], b.k[:b.n]) })
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
