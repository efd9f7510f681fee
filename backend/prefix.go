package backend

import (
	"errors"
	"fmt"
	"net/netip"
)

// Normalize returns p as both back-ends key it, so that one block has one entry: an
// IPv4-mapped IPv6 prefix (::ffff:198.18.0.0/112) becomes the IPv4 prefix it covers
// (198.18.0.0/16), and host bits are cleared. It refuses an invalid prefix and an IPv4-mapped one
// shorter than /96, which reaches beyond the IPv4 space.
func Normalize(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return p, errors.New("invalid prefix")
	}
	if p.Addr().Is4In6() {
		bits := p.Bits() - 96
		if bits < 0 {
			return p, fmt.Errorf("%s: IPv4-mapped prefix shorter than /96", p)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), bits)
	}
	return p.Masked(), nil
}

// NormalizeBlock is Normalize for a prefix to block. It also refuses a /0: dropping every source
// would cut the host off, the operator's own connection included.
func NormalizeBlock(p netip.Prefix) (netip.Prefix, error) {
	p, err := Normalize(p)
	if err != nil {
		return p, err
	}
	if p.Bits() == 0 {
		return p, fmt.Errorf("refusing to block %s: it covers every address", p)
	}
	return p, nil
}

// Placement is the kind of map (XDP) or set (ipset) a normalized block goes in. Exact entries
// are looked up by the source address alone, in a hash; everything else needs a longest-prefix
// match. The values count from 0, so they index an array [Placements]T.
type Placement uint8

const (
	// Exact4 is a single IPv4 address (a /32).
	Exact4 Placement = iota
	// Exact6 is an IPv6 prefix of exactly the configured block length (Settings.IPv6Prefix): the
	// enforcer masks each IPv6 source to that length before the lookup.
	Exact6
	// CIDR4 is any shorter IPv4 prefix.
	CIDR4
	// CIDR6 is an IPv6 prefix of any other length, shorter or longer than the block length.
	CIDR6

	// Placements is how many placements there are.
	Placements = iota
)

// Place says where the normalized prefix p goes when IPv6 sources are blocked at length v6Bits.
// It runs once per rule of a million-rule load: keep it small enough to inline.
func Place(p netip.Prefix, v6Bits int) Placement {
	if p.Addr().Is4() {
		if p.Bits() == 32 {
			return Exact4
		}
		return CIDR4
	}
	if p.Bits() == v6Bits {
		return Exact6
	}
	return CIDR6
}
