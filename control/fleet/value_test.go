package fleet

import (
	"net/netip"
	"testing"
)

func TestKeyRoundTrip(t *testing.T) {
	for _, tc := range []struct{ prefix, key string }{
		{"198.18.0.7/32", "4.198-18-0-7.32"},
		{"198.18.0.0/15", "4.198-18-0-0.15"},
		{"2001:db8::/64", "6.20010db8000000000000000000000000.64"},
		{"2001:db8:1:2:3:4:5:6/128", "6.20010db8000100020003000400050006.128"},
	} {
		p := netip.MustParsePrefix(tc.prefix)
		if k := Key(p); k != tc.key {
			t.Errorf("Key(%s) = %q, want %q", p, k, tc.key)
		}
		if got, err := ParseKey(tc.key); err != nil || got != p {
			t.Errorf("ParseKey(%q) = %s, %v", tc.key, got, err)
		}
	}
	for _, bad := range []string{"", "x", "4.198-18-0-7", "4.198-18-0-7.33", "4.198-18-0-7.-1", "4.198-18-0-300.32",
		"4.198-18-0-7.24", "6.2001.64", "6.20010db8000000000000000000000000.129", "5.1-2-3-4.32", "4.198-18-0-07.32",
		"4.::ffff:1-2-3-4.32", "6.c6120007.32"} {
		if p, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) = %s, want an error", bad, p)
		}
	}
}
