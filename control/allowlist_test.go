package control

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/input"
)

// defaultRules are the target rules of the default configuration (block.* in defaults.yaml).
var defaultRules = input.TargetRules{IPv6Prefix: 64, MinPrefixV4: 8, MinPrefixV6: 32}

func TestAllowlistRefuse(t *testing.T) {
	list := Allowlist{
		{netip.MustParsePrefix("127.0.0.0/8"), api.AllowLoopback},
		{netip.MustParsePrefix("198.18.1.1/32"), api.AllowOwnAddress},
		{netip.MustParsePrefix("198.18.1.254/32"), api.AllowGateway},
		{netip.MustParsePrefix("2001:db8:1::1/128"), api.AllowOwnAddress},
		{netip.MustParsePrefix("198.18.200.0/24"), api.AllowConfig},
	}
	for _, tc := range []struct {
		target  string
		refused string // substring of the error, "" for allowed
	}{
		{"198.18.1.1", "allowlisted (own-address"},
		{"198.18.1.254", "allowlisted (gateway"},
		{"198.18.1.0/24", "covers allowlisted 198.18.1.1/32"},
		{"198.18.0.0/15", "covers allowlisted"},
		{"198.18.200.128/25", "inside allowlisted 198.18.200.0/24"},
		{"198.18.200.7", "allowlisted (config"},
		{"2001:db8:1::1", "allowlisted (own-address"},
		{"2001:db8:1::/48", "covers allowlisted 2001:db8:1::1/128"},
		// A single address is judged by itself: its /64 may hold the host (allowlist wins in XDP).
		{"2001:db8:1::2", ""},
		{"198.18.1.2", ""},
		{"198.18.2.0/24", ""},
	} {
		rules := defaultRules
		p, err := input.ParseTarget(tc.target, rules)
		if err != nil {
			t.Fatal(err)
		}
		single := !strings.Contains(tc.target, "/")
		var addr netip.Addr
		if single {
			addr = netip.MustParseAddr(tc.target)
		}
		err = list.Refuse(tc.target, p, addr, single)
		switch {
		case tc.refused == "" && err != nil:
			t.Errorf("%s refused: %v", tc.target, err)
		case tc.refused != "" && (err == nil || !strings.Contains(err.Error(), tc.refused)):
			t.Errorf("%s: error %v, want one containing %q", tc.target, err, tc.refused)
		}
	}
}

func TestParseResolvConf(t *testing.T) {
	in := "# generated\nsearch example.test\nnameserver 198.18.3.53\nnameserver   2001:db8:3::53\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n"
	got := parseResolvConf(strings.NewReader(in))
	want := []string{"198.18.3.53", "2001:db8:3::53", "fe80::1"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("resolver %d: %s, want %s", i, got[i], want[i])
		}
	}
}

// Covers is "all of p is allowlisted": a /64 that merely holds an allowlisted address is not.
func TestAllowlistCovers(t *testing.T) {
	a := Allowlist{
		{netip.MustParsePrefix("2001:db8:1::/48"), api.AllowConfig},
		{netip.MustParsePrefix("2001:db8:2::1/128"), api.AllowOwnAddress},
		{netip.MustParsePrefix("198.18.0.1/32"), api.AllowGateway},
	}
	for p, want := range map[string]bool{
		"2001:db8:1:5::/64": true,
		"2001:db8:2::/64":   false,
		"198.18.0.1/32":     true,
		"198.18.0.2/32":     false,
		"198.18.0.0/24":     false,
	} {
		if _, got := a.Covers(netip.MustParsePrefix(p)); got != want {
			t.Errorf("Covers(%s) = %v, want %v", p, got, want)
		}
	}
}

// Link-local sources are never blocked: one spoofed fe80:: probe of a trap port would otherwise
// block its whole /64, every neighbour's discovery on the link with it.
func TestImplicitAllowlistHasLinkLocal(t *testing.T) {
	list, err := ImplicitAllowlist("")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"fe80::5", "febf::1", "169.254.1.1"} {
		if item, ok := list.Contains(netip.MustParseAddr(a)); !ok || item.Source != api.AllowLinkLocal {
			t.Errorf("%s: %+v (%v), want allowlisted as link-local", a, item, ok)
		}
	}
	if item, ok := list.Contains(netip.MustParseAddr("fec0::1")); ok && item.Source == api.AllowLinkLocal {
		t.Errorf("fec0::1 (outside fe80::/10) taken for link-local")
	}
}
