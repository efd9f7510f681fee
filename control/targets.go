package control

import (
	"fmt"
	"net/netip"
	"strings"
)

// TargetRules bound what a block target may be (from block.* in the config).
type TargetRules struct {
	IPv6Prefix  int // a single IPv6 address is blocked as its /IPv6Prefix (default 64)
	MinPrefixV4 int // refuse IPv4 prefixes shorter than this (default 8)
	MinPrefixV6 int // refuse IPv6 prefixes shorter than this (default 32)
}

// DefaultTargetRules are the rules of the embedded defaults.
var DefaultTargetRules = TargetRules{IPv6Prefix: 64, MinPrefixV4: 8, MinPrefixV6: 32}

// ParseTarget turns a block target (an IPv4 or IPv6 address, or a CIDR) into the prefix to block.
// An IPv4-mapped IPv6 address (::ffff:198.18.0.7) is the IPv4 address; a single IPv6 address
// becomes its /IPv6Prefix; a CIDR with host bits set is masked. The whole address space and
// prefixes shorter than the configured minimum are refused. Errors name the input and the problem.
func ParseTarget(s string, r TargetRules) (netip.Prefix, error) {
	p, _, err := parseTarget(s, r)
	return p, err
}

// parseTarget is ParseTarget that also returns the address given when s is a single address
// (unmapped), and the zero Addr for a CIDR: an import needs both, and parsing each of a
// million lines once is what it can afford.
func parseTarget(s string, r TargetRules) (netip.Prefix, netip.Addr, error) {
	p, single, err := parsePrefix(s)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	var given netip.Addr
	if single {
		given = p.Addr()
	}
	if single && p.Addr().Is6() && r.IPv6Prefix > 0 {
		p = netip.PrefixFrom(p.Addr(), r.IPv6Prefix).Masked()
	}
	if p.Bits() == 0 {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("%q would block every %s address: refused", s, family(p.Addr()))
	}
	if single && p.Addr().IsUnspecified() {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("%q is the unspecified address, not a source", s)
	}
	minBits, key := r.MinPrefixV4, "block.min_prefix_v4"
	if p.Addr().Is6() {
		minBits, key = r.MinPrefixV6, "block.min_prefix_v6"
	}
	if p.Bits() < minBits {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("%q: prefix /%d is wider than the configured minimum /%d (%s)", s, p.Bits(), minBits, key)
	}
	return p, given, nil
}

// ParseAllowPrefix parses an allowlist entry: an address (as its /32 or /128) or a CIDR; IPv4-mapped
// IPv6 is the IPv4 address. The whole address space is refused (it would disable snare).
func ParseAllowPrefix(s string) (netip.Prefix, error) {
	p, _, err := parsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Bits() == 0 {
		return netip.Prefix{}, fmt.Errorf("%q would allow every %s address: refused", s, family(p.Addr()))
	}
	return p, nil
}

// parsePrefix parses an address or CIDR, unmapping IPv4-mapped IPv6 and masking host bits.
// single reports whether the input was a plain address.
func parsePrefix(in string) (p netip.Prefix, single bool, err error) {
	s := strings.TrimSpace(in)
	if s == "" {
		return netip.Prefix{}, false, fmt.Errorf("empty address")
	}
	addrPart, bitsPart, isCIDR := strings.Cut(s, "/")
	addr, err := netip.ParseAddr(addrPart)
	if err != nil {
		return netip.Prefix{}, false, fmt.Errorf("%q is not an IP address or CIDR", in)
	}
	if addr.Zone() != "" {
		return netip.Prefix{}, false, fmt.Errorf("%q: an address with a zone (%%%s) cannot be blocked", in, addr.Zone())
	}
	if !isCIDR {
		addr = addr.Unmap()
		return netip.PrefixFrom(addr, addr.BitLen()), true, nil
	}
	var bits int
	if _, err := fmt.Sscanf(bitsPart, "%d", &bits); err != nil || fmt.Sprint(bits) != bitsPart {
		return netip.Prefix{}, false, fmt.Errorf("%q: prefix length %q is not a number", in, bitsPart)
	}
	if bits < 0 || bits > addr.BitLen() {
		return netip.Prefix{}, false, fmt.Errorf("%q: prefix length /%d out of range for %s (0-%d)", in, bits, family(addr), addr.BitLen())
	}
	if addr.Is4In6() {
		if bits < 96 {
			return netip.Prefix{}, false, fmt.Errorf("%q: an IPv4-mapped prefix needs a length of at least /96", in)
		}
		addr, bits = addr.Unmap(), bits-96
	}
	return netip.PrefixFrom(addr, bits).Masked(), false, nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}
