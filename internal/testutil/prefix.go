package testutil

import (
	"net/netip"
	"testing"
)

// CheckPrefix fails unless p is what a parser may hand on: valid, masked, IPv4 unmapped, and
// the same prefix again when its text is parsed.
func CheckPrefix(t testing.TB, in string, p netip.Prefix) {
	t.Helper()
	switch back, err := netip.ParsePrefix(p.String()); {
	case !p.IsValid():
		t.Fatalf("%q: invalid prefix %v", in, p)
	case p != p.Masked():
		t.Fatalf("%q: %v is not masked", in, p)
	case p.Addr().Is4In6():
		t.Fatalf("%q: %v is IPv4-mapped", in, p)
	case p.Addr().Zone() != "":
		t.Fatalf("%q: %v has a zone", in, p)
	case err != nil || back != p:
		t.Fatalf("%q: %v does not round-trip through its text: %v %v", in, p, back, err)
	}
}
