package control

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/snare-dev/snare/backend"
)

// importBatch across several chunks, with empty slots, in random order and already sorted, IPv4
// and IPv6, several lengths, many repeats: order and unique give what a stable comparison sort
// and a plain dedupe give, and repeated names exactly the prefixes that had more than one line.
func TestImportBatchOrderUnique(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	n := 2*recChunk + 1234
	type line struct {
		p  netip.Prefix
		ns int64
	}
	lines := make([]line, n)
	for i := range lines {
		var p netip.Prefix
		switch k := rng.IntN(60000); k % 4 {
		case 0:
			p = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(k&1), byte(k >> 8), byte(k)}), 32)
		case 1:
			p = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(k >> 4), 0}), 24+4*(k/4%3)) // one address, three lengths
		case 2:
			p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(k >> 8), 0, byte(k)}), 64)
		default:
			p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(k)}), 128)
		}
		lines[i] = line{p, rng.Int64N(1000)}
	}
	for _, sorted := range []bool{false, true} {
		if sorted {
			slices.SortStableFunc(lines, func(a, b line) int { return a.p.Compare(b.p) })
		}
		for _, latest := range []bool{false, true} {
			// Every third slot is empty (a comment, a bad line), filled from the end, as the
			// pieces of a list are parsed on several goroutines.
			b := newImportBatch(0)
			if err := b.makeSlots(3 * n); err != nil {
				t.Fatal(err)
			}
			for i := n - 1; i >= 0; i-- {
				*b.at(3*i + 1) = backend.RecordOf(lines[i].p, lines[i].ns)
			}
			b.compact()
			if b.n != n || b.chunks[(n-1)/recChunk] == nil || b.chunks[(n-1)/recChunk+1] != nil {
				t.Fatalf("compacted to %d records, want %d, in %d chunks", b.n, n, (n-1)/recChunk+1)
			}
			// The reference: a stable sort, then the first line of each prefix, with the
			// latest time when latest.
			want := slices.Clone(lines)
			slices.SortStableFunc(want, func(a, b line) int { return a.p.Compare(b.p) })
			var uniq []line
			var rep []int32
			for _, l := range want {
				if k := len(uniq) - 1; k >= 0 && uniq[k].p == l.p {
					if latest {
						uniq[k].ns = max(uniq[k].ns, l.ns)
					}
					if len(rep) == 0 || rep[len(rep)-1] != int32(k) {
						rep = append(rep, int32(k))
					}
					continue
				}
				uniq = append(uniq, l)
			}
			order := b.order()
			if sorted != (order == nil) {
				t.Fatalf("sorted=%v: order %d long (nil means the list was in order)", sorted, len(order))
			}
			u := b.unique(order, latest)
			if u.len() != len(uniq) {
				t.Fatalf("sorted=%v latest=%v: %d unique, want %d", sorted, latest, u.len(), len(uniq))
			}
			for i := range u.len() {
				if r := u.at(i); r.Prefix() != uniq[i].p || r.Ms() != uniq[i].ns {
					t.Fatalf("sorted=%v latest=%v: position %d is %s at %d, want %s at %d", sorted, latest, i, r.Prefix(), r.Ms(), uniq[i].p, uniq[i].ns)
				}
			}
			if !slices.Equal(u.repeated, rep) {
				t.Fatalf("sorted=%v latest=%v: %d repeated, want %d", sorted, latest, len(u.repeated), len(rep))
			}
		}
	}
}

// A list longer than its limit is refused before any slot is made. The limit follows
// block.capacity, between 1M and maxImportLines lines.
func TestImportBatchTooLong(t *testing.T) {
	b := newImportBatch(1000)
	var ue *UserError
	if err := b.makeSlots(1<<20 + 1); !errors.As(err, &ue) || !strings.Contains(err.Error(), "more than 1048576 lines") || b.n != 0 || b.chunks[0] != nil {
		t.Fatalf("slots for more than the limit: %v, %d slots", err, b.n)
	}
	for _, tc := range []struct{ capacity, want int }{{1000, 1 << 20}, {1_000_000, 4_000_000}, {100_000_000, maxImportLines}} {
		if got := importLineLimit(tc.capacity); got != tc.want {
			t.Errorf("importLineLimit(%d) = %d, want %d", tc.capacity, got, tc.want)
		}
	}
}
