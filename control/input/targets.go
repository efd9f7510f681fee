// Package input parses and checks what users type, the same way in the daemon, its
// configuration and snarectl: block targets (addresses and CIDRs), TTLs and durations with days,
// port lists and free-text reasons. Errors name the input and the problem.
package input

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// TargetRules bound what a block target may be (from block.* in the config).
type TargetRules struct {
	IPv6Prefix  int // a single IPv6 address is blocked as its /IPv6Prefix (default 64)
	MinPrefixV4 int // refuse IPv4 prefixes shorter than this (default 8)
	MinPrefixV6 int // refuse IPv6 prefixes shorter than this (default 32)
}

// ParseTarget turns a block target (an IPv4 or IPv6 address, or a CIDR) into the prefix to block.
// An IPv4-mapped IPv6 address (::ffff:198.18.0.7) is the IPv4 address; a single IPv6 address
// becomes its /IPv6Prefix; a CIDR with host bits set is masked. The whole address space and
// prefixes shorter than the configured minimum are refused. Errors name the input and the problem.
func ParseTarget(s string, r TargetRules) (netip.Prefix, error) {
	p, _, err := ParseTargetAddr(s, r)
	return p, err
}

// ParseTargetAddr is ParseTarget that also returns the address given when s is a single address
// (unmapped), and the zero Addr for a CIDR: an import needs both, and parsing each of a
// million lines once is what it can afford.
func ParseTargetAddr(s string, r TargetRules) (netip.Prefix, netip.Addr, error) {
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
	if err := checkTarget(s, p, given, r); err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	return p, given, nil
}

// CheckTarget checks a prefix to block as ParseTarget checks the prefix a target gives: for
// a prefix that arrives parsed already (from another host of a fleet). It must be canonical.
func CheckTarget(p netip.Prefix, r TargetRules) error {
	if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return fmt.Errorf("%s is not a canonical prefix", p)
	}
	return checkTarget(p.String(), p, netip.Addr{}, r)
}

// checkTarget refuses the prefix p that target s gives (given: its address, when s is a single
// address) when it may not be blocked.
func checkTarget(s string, p netip.Prefix, given netip.Addr, r TargetRules) error {
	single := given.IsValid()
	if p.Bits() == 0 {
		return fmt.Errorf("%q would block every %s address: refused", s, family(p.Addr()))
	}
	// Judged by the address given where there is one: "::1" is blocked as ::/64, which starts
	// with the unspecified address.
	switch {
	case single && given.IsUnspecified():
		return fmt.Errorf("%q is the unspecified address, not a source", s)
	case single && given.IsLoopback():
		return fmt.Errorf("%q is a loopback address, never a source on the network", s)
	case p.Addr().IsLoopback():
		return fmt.Errorf("%q is inside the loopback range, never a source on the network", s)
	case p.IsSingleIP() && p.Addr().IsUnspecified():
		return fmt.Errorf("%q is the unspecified address, not a source", s)
	case single && p.Addr().Is6() && p.Addr().IsUnspecified():
		return fmt.Errorf("%q would be blocked as %s, which holds the unspecified and loopback addresses: refused", s, p)
	case p.Addr().Is6() && p.Addr().IsUnspecified():
		return fmt.Errorf("%q holds the unspecified and loopback addresses (::, ::1): refused", s)
	}
	if err := refuseNeverBlocked(s, p, given); err != nil {
		return err
	}
	minBits, key := r.MinPrefixV4, "block.min_prefix_v4"
	if p.Addr().Is6() {
		minBits, key = r.MinPrefixV6, "block.min_prefix_v6"
	}
	if p.Bits() < minBits {
		return fmt.Errorf("%q: prefix /%d is wider than the configured minimum /%d (%s)", s, p.Bits(), minBits, key)
	}
	return nil
}

// neverBlocked are the ranges no block may touch. A link-local block cuts the host off its own
// link: an IPv6 address is blocked as its /64, and fe80::/64 holds the host's own link-local
// addresses, its neighbours and often its IPv6 gateway. A multicast address is never the source
// of a packet, so a block on one can only be a mistake.
var neverBlocked = []struct {
	prefix netip.Prefix
	kind   string
}{
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// refuseNeverBlocked refuses a target whose block p overlaps a neverBlocked range; given is the
// address given for a single-address target (invalid for a CIDR).
func refuseNeverBlocked(s string, p netip.Prefix, given netip.Addr) error {
	// A prefix at least as long as the ranges (every address, most CIDRs) overlaps one only if
	// its address lies in it: two bit tests, where the loop costs a tenth of a 1M import's parse.
	if p.Bits() >= 16 || p.Addr().Is6() && p.Bits() >= 10 {
		if a := p.Addr(); !a.IsLinkLocalUnicast() && !a.IsMulticast() {
			return nil
		}
	}
	for _, nb := range neverBlocked {
		switch {
		case !nb.prefix.Overlaps(p):
		case given.IsValid() && nb.prefix.Contains(given):
			return fmt.Errorf("%q is a %s address (%s): link-local and multicast addresses are never blocked", s, nb.kind, nb.prefix)
		default:
			return fmt.Errorf("%q overlaps the %s range %s: link-local and multicast addresses are never blocked", s, nb.kind, nb.prefix)
		}
	}
	return nil
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
	if len(in) > maxTargetLen {
		return netip.Prefix{}, false, fmt.Errorf("%s is %d bytes long: not an IP address or CIDR", QuoteInput(in), len(in))
	}
	s := strings.TrimSpace(in)
	if s == "" {
		return netip.Prefix{}, false, fmt.Errorf("%q: empty address", in)
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

// maxTargetLen bounds an address or CIDR as given; the longest real one,
// "0000:0000:0000:0000:0000:ffff:255.255.255.255/128", has 49 bytes. Messages quote a target
// whole (QuoteInput cuts after as many bytes).
const maxTargetLen = 100

// QuoteInput quotes user input for a message, cut after its first 100 bytes ("..." marks the
// cut), so that an error about a huge input stays short; control characters come out escaped.
func QuoteInput(s string) string {
	const n = maxTargetLen
	if len(s) <= n {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:n]) + "..."
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}
