package radix

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSortMatchesStableSort compares Sort with a stable comparison sort over keys with shared
// bytes and many duplicates, random and already in order, and checks idx is permuted along.
func TestSortMatchesStableSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 2, 3, 100, 10000} {
		for _, mask := range []uint64{^uint64(0), 0xff, 0xff00ff0000000f00, 0xff00ff00, 0xffffffff00000000} {
			keys := make([]uint64, n)
			for i := range keys {
				keys[i] = rng.Uint64() & mask
			}
			for _, sorted := range []bool{false, true} {
				if sorted {
					slices.Sort(keys)
				}
				checkSort(t, keys, fmt.Sprintf("64-bit n=%d mask=%x sorted=%v", n, mask, sorted))
				keys32 := make([]uint32, n)
				for i, k := range keys {
					keys32[i] = uint32(k ^ k>>32) // bytes from either half
				}
				checkSort(t, keys32, fmt.Sprintf("32-bit n=%d mask=%x sorted=%v", n, mask, sorted))
			}
		}
	}
}

func checkSort[K Key](t *testing.T, keys []K, what string) {
	t.Helper()
	type pair struct {
		k K
		i int32
	}
	want := make([]pair, len(keys))
	for i, k := range keys {
		want[i] = pair{k, int32(i)}
	}
	slices.SortStableFunc(want, func(a, b pair) int { return cmp.Compare(a.k, b.k) })
	k, idx := slices.Clone(keys), Identity(len(keys))
	Sort(k, idx)
	for j := range want {
		if k[j] != want[j].k || idx[j] != want[j].i {
			t.Fatalf("%s: position %d is (%x, %d), want (%x, %d)", what, j, k[j], idx[j], want[j].k, want[j].i)
		}
	}
}

func TestSortLengthMismatchPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for keys and idx of different lengths")
		}
	}()
	Sort(make([]uint64, 2), make([]int32, 1))
}

func BenchmarkSortMillion(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 8))
	keys := make([]uint64, 1_000_000)
	for i := range keys {
		keys[i] = uint64(rng.Uint32())
	}
	for b.Loop() {
		Sort(slices.Clone(keys), Identity(len(keys)))
	}
}

// BenchmarkSortMillion32 is BenchmarkSortMillion with 32-bit keys (IPv4 addresses).
func BenchmarkSortMillion32(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 8))
	keys := make([]uint32, 1_000_000)
	for i := range keys {
		keys[i] = rng.Uint32()
	}
	for b.Loop() {
		Sort(slices.Clone(keys), Identity(len(keys)))
	}
}

// TestSorterReuse sorts by two keys in turn with one Sorter, smaller batches after bigger ones,
// and checks the order by both keys.
func TestSorterReuse(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	var s Sorter[uint64]
	for _, n := range []int{1000, 10, 500} {
		lo, hi := make([]uint64, n), make([]uint64, n)
		for i := range n {
			lo[i], hi[i] = rng.Uint64N(50), rng.Uint64N(5)
		}
		idx := Identity(n)
		keys := slices.Clone(lo)
		s.Sort(keys, idx)
		for j, i := range idx {
			keys[j] = hi[i]
		}
		s.Sort(keys, idx)
		for j := 1; j < n; j++ {
			a, b := idx[j-1], idx[j]
			if hi[a] > hi[b] || hi[a] == hi[b] && (lo[a] > lo[b] || lo[a] == lo[b] && a > b) {
				t.Fatalf("n=%d: %d (%d,%d) before %d (%d,%d)", n, a, hi[a], lo[a], b, hi[b], lo[b])
			}
		}
	}
}
