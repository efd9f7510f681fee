package backend

import (
	"net/netip"
	"strings"
	"testing"
)

func TestNormalizeAndPlace(t *testing.T) {
	for _, tc := range []struct {
		in     netip.Prefix
		v6Bits int
		want   string    // the normalized prefix; empty when refused
		err    string    // part of the error Normalize gives; empty when accepted
		place  Placement // when accepted
		whole  bool      // accepted by Normalize, refused by NormalizeBlock
	}{
		{in: pfx("198.18.0.1/32"), v6Bits: 64, want: "198.18.0.1/32", place: Exact4},
		{in: pfx("198.18.7.9/24"), v6Bits: 64, want: "198.18.7.0/24", place: CIDR4},
		{in: pfx("198.18.0.0/15"), v6Bits: 64, want: "198.18.0.0/15", place: CIDR4},
		{in: pfx("2001:db8:1:2::/64"), v6Bits: 64, want: "2001:db8:1:2::/64", place: Exact6},
		{in: pfx("2001:db8:1:2:3:4:5:6/64"), v6Bits: 64, want: "2001:db8:1:2::/64", place: Exact6},
		{in: pfx("2001:db8:1:2::9/128"), v6Bits: 64, want: "2001:db8:1:2::9/128", place: CIDR6},
		{in: pfx("2001:db8:1:2::9/128"), v6Bits: 128, want: "2001:db8:1:2::9/128", place: Exact6},
		{in: pfx("2001:db8:1::/48"), v6Bits: 64, want: "2001:db8:1::/48", place: CIDR6},
		{in: pfx("2001:db8:1:2::/64"), v6Bits: 56, want: "2001:db8:1:2::/64", place: CIDR6},
		// IPv4-mapped: the IPv4 prefix, placed as IPv4 whatever the IPv6 block length.
		{in: pfx("::ffff:198.18.0.1/128"), v6Bits: 128, want: "198.18.0.1/32", place: Exact4},
		{in: pfx("::ffff:198.18.3.4/112"), v6Bits: 64, want: "198.18.0.0/16", place: CIDR4},
		{in: pfx("::ffff:0.0.0.0/96"), v6Bits: 64, want: "0.0.0.0/0", place: CIDR4, whole: true},
		{in: pfx("::ffff:0.0.0.0/95"), v6Bits: 64, err: "IPv4-mapped prefix shorter than /96"},
		// A zone is never part of a prefix: netip.PrefixFrom drops it.
		{in: netip.PrefixFrom(netip.MustParseAddr("2001:db8::1%eth0"), 64), v6Bits: 64, want: "2001:db8::/64", place: Exact6},
		{in: pfx("0.0.0.0/0"), v6Bits: 64, want: "0.0.0.0/0", place: CIDR4, whole: true},
		{in: pfx("::/0"), v6Bits: 64, want: "::/0", place: CIDR6, whole: true},
		{in: netip.Prefix{}, v6Bits: 64, err: "invalid prefix"},
		{in: netip.PrefixFrom(netip.MustParseAddr("198.18.0.1"), 33), v6Bits: 64, err: "invalid prefix"},
	} {
		got, err := Normalize(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Normalize(%s) = %s, %v; want error %q", tc.in, got, err, tc.err)
			}
			if _, berr := NormalizeBlock(tc.in); berr == nil || berr.Error() != err.Error() {
				t.Errorf("NormalizeBlock(%s) error %v, want Normalize's %v", tc.in, berr, err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("Normalize(%s) = %s, %v; want %s", tc.in, got, err, tc.want)
			continue
		}
		if got.Addr().Zone() != "" {
			t.Errorf("Normalize(%s) kept zone %q", tc.in, got.Addr().Zone())
		}
		if p := Place(got, tc.v6Bits); p != tc.place {
			t.Errorf("Place(%s, %d) = %d, want %d", got, tc.v6Bits, p, tc.place)
		}
		b, err := NormalizeBlock(tc.in)
		switch {
		case tc.whole && (err == nil || !strings.Contains(err.Error(), "covers every address")):
			t.Errorf("NormalizeBlock(%s) = %s, %v; want refused as covering every address", tc.in, b, err)
		case !tc.whole && (err != nil || b != got):
			t.Errorf("NormalizeBlock(%s) = %s, %v; want %s", tc.in, b, err, got)
		}
	}
}

// TestNormalizePlaceAllocFree: both run once per rule of a million-rule load.
func TestNormalizePlaceAllocFree(t *testing.T) {
	ps := []netip.Prefix{pfx("198.18.0.1/32"), pfx("2001:db8::/64"), pfx("::ffff:198.18.0.1/128"), pfx("198.18.0.0/15")}
	n := testing.AllocsPerRun(100, func() {
		for _, p := range ps {
			q, err := NormalizeBlock(p)
			if err != nil {
				t.Fatal(err)
			}
			_ = Place(q, 64)
		}
	})
	if n != 0 {
		t.Errorf("NormalizeBlock and Place allocate %v times per run", n)
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestIPv6Bits(t *testing.T) {
	for _, tc := range []struct {
		in, want int
		err      bool
	}{
		{in: 0, want: DefaultIPv6Prefix},
		{in: 1, want: 1},
		{in: 48, want: 48},
		{in: 128, want: 128},
		{in: 129, err: true},
		{in: -1, err: true},
	} {
		got, err := Settings{IPv6Prefix: tc.in}.IPv6Bits()
		switch {
		case tc.err && (err == nil || !strings.Contains(err.Error(), "out of range 1..128")):
			t.Errorf("IPv6Bits(%d) = %d, %v; want the range error", tc.in, got, err)
		case !tc.err && (err != nil || got != tc.want):
			t.Errorf("IPv6Bits(%d) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}
