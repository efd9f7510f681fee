package backend

import (
	"net/netip"
	"testing"
	"time"
)

// A record gives back the prefix it was made of, IPv4 and IPv6, and sorts as netip does.
func TestRecordPrefix(t *testing.T) {
	ps := []netip.Prefix{
		netip.MustParsePrefix("198.18.0.1/32"),
		netip.MustParsePrefix("198.18.0.0/15"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("2001:db8:1:2::/64"),
		netip.MustParsePrefix("2001:db8::ff/128"),
	}
	for _, p := range ps {
		for _, ms := range []int64{7, 0, -86_400_000, time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC).UnixMilli(), 1 << 46, -1 << 46} {
			r := RecordOf(p, ms)
			if got := r.Prefix(); got != p || r.Ms() != ms || !r.Time().Equal(time.UnixMilli(ms)) || r.Bits() == 0 {
				t.Errorf("RecordOf(%s, %d): prefix %s, ms %d, time %s, bits %d", p, ms, got, r.Ms(), r.Time(), r.Bits())
			}
		}
		r := RecordOf(p, 7)
		for _, q := range ps {
			o := RecordOf(q, 0)
			if r.Before(&o) != (p.Compare(q) < 0) || r.SamePrefix(&o) != (p == q) {
				t.Errorf("%s before %s: %v, same %v; netip says %d", p, q, r.Before(&o), r.SamePrefix(&o), p.Compare(q))
			}
		}
	}
}

// Records give back each prefix with its deadline, a zero time staying
// permanent, as the store keeps them (to the millisecond).
func TestRecords(t *testing.T) {
	soon := time.Date(2026, 12, 5, 10, 0, 0, 123_000_000, time.UTC)
	want := []Rule{
		{Prefix: netip.MustParsePrefix("198.18.0.7/32"), Deadline: soon},
		{Prefix: netip.MustParsePrefix("198.18.4.0/24")},
		{Prefix: netip.MustParsePrefix("2001:db8:1:2::/64"), Deadline: soon.Add(time.Hour)},
		{Prefix: netip.MustParsePrefix("2001:db8::ff/128")},
	}
	var rs Records
	for _, r := range want {
		rs = append(rs, RecordOf(r.Prefix, ms(r.Deadline)))
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

// ms is t in unix milliseconds, 0 for the zero time (permanent), as the store keeps it.
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}
