package control

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/snare-dev/snare/control/api"

	"github.com/vishvananda/netlink"
)

// AllowItem is one allowlist prefix and where it comes from.
type AllowItem struct {
	Prefix netip.Prefix
	Source string
}

// Allowlist is the set of prefixes that always pass and may never be blocked.
type Allowlist []AllowItem

// Prefixes returns the distinct prefixes, for the enforcer.
func (a Allowlist) Prefixes() []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	for _, it := range a {
		if !seen[it.Prefix] {
			seen[it.Prefix] = true
			out = append(out, it.Prefix)
		}
	}
	return out
}

// Refuse returns an error when blocking p would touch the allowlist. A single address (single
// true; an IPv6 address stands for its /64 block) is refused when the address itself is
// allowlisted: its /64 may well hold the host's own addresses, which the data path lets pass
// anyway, since the allowlist is checked first. A CIDR is refused when it overlaps an allowlisted
// prefix in either direction: inside one, or covering one.
func (a Allowlist) Refuse(target string, p netip.Prefix, addr netip.Addr, single bool) error {
	for _, it := range a {
		if single {
			if it.Prefix.Contains(addr) {
				return fmt.Errorf("%s is allowlisted (%s %s): refused", target, it.Source, it.Prefix)
			}
			continue
		}
		if it.Prefix.Overlaps(p) {
			if it.Prefix.Bits() <= p.Bits() {
				return fmt.Errorf("%s is inside allowlisted %s (%s): refused", target, it.Prefix, it.Source)
			}
			return fmt.Errorf("%s covers allowlisted %s (%s): refused", target, it.Prefix, it.Source)
		}
	}
	return nil
}

// Covers reports whether all of p is allowlisted, and by which entry.
func (a Allowlist) Covers(p netip.Prefix) (AllowItem, bool) {
	for _, it := range a {
		if it.Prefix.Bits() <= p.Bits() && it.Prefix.Contains(p.Addr()) {
			return it, true
		}
	}
	return AllowItem{}, false
}

// Contains reports whether addr is allowlisted, and by which entry.
func (a Allowlist) Contains(addr netip.Addr) (AllowItem, bool) {
	for _, it := range a {
		if it.Prefix.Contains(addr.Unmap()) {
			return it, true
		}
	}
	return AllowItem{}, false
}

// ImplicitAllowlist discovers what must never be blocked on this host: loopback, link-local
// sources (a trap block of one spoofed fe80:: source would cover a whole link's /64, its
// neighbour discovery included), every address of every interface, the default gateways (IPv4 and IPv6) and the resolvers in resolvConf
// (usually /etc/resolv.conf). It reads the network namespace of the calling thread.
func ImplicitAllowlist(resolvConf string) (Allowlist, error) {
	list := Allowlist{
		{netip.MustParsePrefix("127.0.0.0/8"), api.AllowLoopback},
		{netip.MustParsePrefix("::1/128"), api.AllowLoopback},
		{netip.MustParsePrefix("169.254.0.0/16"), api.AllowLinkLocal},
		{netip.MustParsePrefix("fe80::/10"), api.AllowLinkLocal},
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list own addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			ip = ip.Unmap()
			list = append(list, AllowItem{netip.PrefixFrom(ip, ip.BitLen()), api.AllowOwnAddress})
		}
	}
	gws, err := DefaultGateways()
	if err != nil {
		return nil, err
	}
	for _, g := range gws {
		list = append(list, AllowItem{netip.PrefixFrom(g, g.BitLen()), api.AllowGateway})
	}
	if resolvConf != "" {
		f, err := os.Open(resolvConf)
		switch {
		case err == nil:
			rs := parseResolvConf(f)
			f.Close()
			for _, r := range rs {
				list = append(list, AllowItem{netip.PrefixFrom(r, r.BitLen()), api.AllowResolver})
			}
		case !os.IsNotExist(err):
			return nil, fmt.Errorf("read resolvers: %w", err)
		}
	}
	return dedupeAllow(list), nil
}

func dedupeAllow(list Allowlist) Allowlist {
	seen := map[AllowItem]bool{}
	return slices.DeleteFunc(list, func(it AllowItem) bool {
		if seen[it] {
			return true
		}
		seen[it] = true
		return false
	})
}

// parseResolvConf returns the nameserver addresses of a resolv.conf.
func parseResolvConf(r io.Reader) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		out = append(out, a.WithZone("").Unmap())
	}
	return out
}

// DefaultGateways lists the next hops of the default routes, IPv4 and IPv6, multipath included.
func DefaultGateways() ([]netip.Addr, error) {
	var out []netip.Addr
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(nil, fam)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if !isDefault(r) {
				continue
			}
			hops := [][]byte{r.Gw}
			for _, nh := range r.MultiPath {
				hops = append(hops, nh.Gw)
			}
			for _, h := range hops {
				if ip, ok := netip.AddrFromSlice(h); ok && ip.IsValid() && !ip.IsUnspecified() {
					out = append(out, ip.Unmap())
				}
			}
		}
	}
	return out, nil
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// DefaultRouteInterfaces names the interfaces of the default routes (IPv4 first), the
// interfaces snared protects when none are configured.
func DefaultRouteInterfaces() ([]string, error) {
	var out []string
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(nil, fam)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if !isDefault(r) {
				continue
			}
			idx := []int{r.LinkIndex}
			for _, nh := range r.MultiPath {
				idx = append(idx, nh.LinkIndex)
			}
			for _, i := range idx {
				if i == 0 {
					continue
				}
				l, err := netlink.LinkByIndex(i)
				if err != nil {
					continue
				}
				if n := l.Attrs().Name; !slices.Contains(out, n) {
					out = append(out, n)
				}
			}
		}
		if len(out) > 0 {
			return out, nil
		}
	}
	return nil, fmt.Errorf("no default route: name the interfaces to protect (--iface or interfaces in the config)")
}
