package control

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
)

// importBatch across several chunks, with holes, in random order and already sorted, IPv4
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
			// Every third slot is a hole (a comment, a bad line), filled from the end, as the
			// pieces of a list are parsed on several goroutines.
			b := newImportBatch(0)
			if err := b.room(3 * n); err != nil {
				t.Fatal(err)
			}
			for i := n - 1; i >= 0; i-- {
				*b.at(3*i + 1) = recOf(lines[i].p, lines[i].ns)
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
				if r := u.at(i); r.prefix() != uniq[i].p || r.ms() != uniq[i].ns {
					t.Fatalf("sorted=%v latest=%v: position %d is %s at %d, want %s at %d", sorted, latest, i, r.prefix(), r.ms(), uniq[i].p, uniq[i].ns)
				}
			}
			if !slices.Equal(u.repeated, rep) {
				t.Fatalf("sorted=%v latest=%v: %d repeated, want %d", sorted, latest, len(u.repeated), len(rep))
			}
		}
	}
}

// A record gives back the prefix it was made of, IPv4 and IPv6, and sorts as netip does.
func TestImportRecPrefix(t *testing.T) {
	ps := []netip.Prefix{
		netip.MustParsePrefix("198.18.0.1/32"),
		netip.MustParsePrefix("198.18.0.0/15"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("2001:db8:1:2::/64"),
		netip.MustParsePrefix("2001:db8::ff/128"),
	}
	for _, p := range ps {
		for _, ms := range []int64{7, 0, -86_400_000, time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC).UnixMilli(), 1 << 46, -1 << 46} {
			r := recOf(p, ms)
			if got := r.prefix(); got != p || r.ms() != ms || !r.time().Equal(time.UnixMilli(ms)) || r.hole() {
				t.Errorf("recOf(%s, %d): prefix %s, ms %d, time %s, hole %v", p, ms, got, r.ms(), r.time(), r.hole())
			}
		}
		r := recOf(p, 7)
		for _, q := range ps {
			o := recOf(q, 0)
			if r.before(&o) != (p.Compare(q) < 0) || r.samePrefix(&o) != (p == q) {
				t.Errorf("%s before %s: %v, same %v; netip says %d", p, q, r.before(&o), r.samePrefix(&o), p.Compare(q))
			}
		}
	}
}

// A list longer than its limit is refused before any slot is made. The limit follows
// block.capacity, between 1M and maxImportLines lines.
func TestImportBatchTooLong(t *testing.T) {
	b := newImportBatch(1000)
	var ue *UserError
	if err := b.room(1<<20 + 1); !errors.As(err, &ue) || !strings.Contains(err.Error(), "more than 1048576 lines") || b.n != 0 || b.chunks[0] != nil {
		t.Fatalf("room for more than the limit: %v, %d slots", err, b.n)
	}
	for _, tc := range []struct{ capacity, want int }{{1000, 1 << 20}, {1_000_000, 4_000_000}, {100_000_000, maxImportLines}} {
		if got := importLineLimit(tc.capacity); got != tc.want {
			t.Errorf("importLineLimit(%d) = %d, want %d", tc.capacity, got, tc.want)
		}
	}
}

// A restore's compact rules give back each prefix with its deadline, a zero time staying
// permanent, as the store keeps them (to the millisecond).
func TestStoredRules(t *testing.T) {
	soon := time.Date(2026, 12, 5, 10, 0, 0, 123_000_000, time.UTC)
	want := []backend.Rule{
		{Prefix: netip.MustParsePrefix("198.18.0.7/32"), Deadline: soon},
		{Prefix: netip.MustParsePrefix("198.18.4.0/24")},
		{Prefix: netip.MustParsePrefix("2001:db8:1:2::/64"), Deadline: soon.Add(time.Hour)},
		{Prefix: netip.MustParsePrefix("2001:db8::ff/128")},
	}
	var rs storedRules
	for _, r := range want {
		rs = append(rs, recOf(r.Prefix, unixMs(r.Deadline)))
	}
	if rs.Len() != len(want) {
		t.Fatalf("Len %d, want %d", rs.Len(), len(want))
	}
	for i, w := range want {
		if got := rs.At(i); got.Prefix != w.Prefix || !got.Deadline.Equal(w.Deadline) || got.Permanent() != w.Permanent() {
			t.Errorf("At(%d) = %s until %v, want %s until %v", i, got.Prefix, got.Deadline, w.Prefix, w.Deadline)
		}
	}
}
