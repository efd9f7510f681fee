package input

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// defaultRules are the target rules of the default configuration (block.* in defaults.yaml).
var defaultRules = TargetRules{IPv6Prefix: 64, MinPrefixV4: 8, MinPrefixV6: 32}

func TestParseTarget(t *testing.T) {
	good := []struct{ in, want string }{
		{"198.18.0.7", "198.18.0.7/32"},
		{" 198.18.0.7 ", "198.18.0.7/32"},
		{"198.18.0.0/24", "198.18.0.0/24"},
		{"198.18.0.77/24", "198.18.0.0/24"}, // host bits masked
		{"198.0.0.0/8", "198.0.0.0/8"},      // exactly the minimum
		{"::ffff:198.18.0.7", "198.18.0.7/32"},
		{"::ffff:198.18.0.0/120", "198.18.0.0/24"},
		{"2001:db8::1", "2001:db8::/64"},
		{"2001:db8:0:1:2:3:4:5", "2001:db8:0:1::/64"},
		{"2001:db8::/48", "2001:db8::/48"},
		{"2001:db8::1/128", "2001:db8::1/128"},
		{"2001:db8::/32", "2001:db8::/32"},
		{"169.253.255.255", "169.253.255.255/32"}, // next to link-local, not in it
		{"223.255.255.0/24", "223.255.255.0/24"},  // next to multicast
		{"fec0::1", "fec0::/64"},                  // past fe80::/10
	}
	for _, tc := range good {
		p, err := ParseTarget(tc.in, defaultRules)
		if err != nil || p.String() != tc.want {
			t.Errorf("ParseTarget(%q) = %v, %v; want %s", tc.in, p, err, tc.want)
		}
	}
	bad := []struct{ in, want string }{
		{"", "empty address"},
		{"banana", `"banana" is not an IP address or CIDR`},
		{"198.18.0.256", "not an IP address"},
		{"198.18.0", "not an IP address"},
		{"198.18.0.7/33", "prefix length /33 out of range for IPv4 (0-32)"},
		{"198.18.0.7/-1", "prefix length /-1 out of range"},
		{"198.18.0.7/x", `prefix length "x" is not a number`},
		{"198.18.0.7/", `prefix length "" is not a number`},
		{"198.18.0.7/024", `prefix length "024" is not a number`},
		{"2001:db8::/129", "prefix length /129 out of range for IPv6 (0-128)"},
		{"0.0.0.0/0", "would block every IPv4 address"},
		{"::/0", "would block every IPv6 address"},
		{"::ffff:0.0.0.0/96", "would block every IPv4 address"},
		{"::ffff:198.18.0.0/64", "at least /96"},
		{"198.0.0.0/7", "prefix /7 is wider than the configured minimum /8 (block.min_prefix_v4)"},
		{"2001:db8::/31", "prefix /31 is wider than the configured minimum /32 (block.min_prefix_v6)"},
		{"0.0.0.0", "unspecified address"},
		{"::", "unspecified address"},
		{"fe80::1%eth0", "zone"},
		{"198.18.0.7 198.18.0.8", "not an IP address"},
		// Loopback is loopback, not "unspecified" (::1 alone would be blocked as ::/64).
		{"::1", `"::1" is a loopback address`},
		{"127.0.0.1", `"127.0.0.1" is a loopback address`},
		{"::ffff:127.0.0.1", "loopback address"},
		{"127.0.0.1/32", `"127.0.0.1/32" is inside the loopback range`},
		{"127.0.0.0/8", "inside the loopback range"},
		{"::1/128", "inside the loopback range"},
		{"::5", "would be blocked as ::/64, which holds the unspecified and loopback addresses"},
		// The same as CIDRs: the unspecified address alone, or an IPv6 range that holds ::1.
		{"::/128", `"::/128" is the unspecified address`},
		{"0.0.0.0/32", `"0.0.0.0/32" is the unspecified address`},
		{"::/127", `"::/127" holds the unspecified and loopback addresses`},
		{"::/64", `"::/64" holds the unspecified and loopback addresses`},
		// Link-local and multicast: as addresses, and as CIDRs inside or around them.
		{"fe80::5", `"fe80::5" is a link-local address (fe80::/10)`},
		{"fe80::/64", "overlaps the link-local range fe80::/10"},
		{"169.254.3.4", `"169.254.3.4" is a link-local address (169.254.0.0/16)`},
		{"::ffff:169.254.3.4", "link-local address (169.254.0.0/16)"},
		{"169.254.3.0/24", "overlaps the link-local range 169.254.0.0/16"},
		{"169.0.0.0/8", "overlaps the link-local range 169.254.0.0/16"},
		{"224.0.0.1", `"224.0.0.1" is a multicast address (224.0.0.0/4)`},
		{"239.255.0.0/16", "overlaps the multicast range 224.0.0.0/4"},
		{"ff02::1", `"ff02::1" is a multicast address (ff00::/8)`},
		{"ff02::/16", "overlaps the multicast range ff00::/8"},
		// Too long to be an address: named by its start, not echoed whole.
		{strings.Repeat("1", 5000), `"` + strings.Repeat("1", 100) + `"... is 5000 bytes long`},
	}
	for _, tc := range bad {
		p, err := ParseTarget(tc.in, defaultRules)
		if err == nil {
			t.Errorf("ParseTarget(%q) = %v, want error %q", tc.in, p, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseTarget(%q) error %q, want it to contain %q", tc.in, err, tc.want)
		}
		if len(err.Error()) > 300 {
			t.Errorf("ParseTarget(%.20q...) error is %d bytes long", tc.in, len(err.Error()))
		}
	}
}

func TestParseTargetRules(t *testing.T) {
	r := TargetRules{IPv6Prefix: 128, MinPrefixV4: 24, MinPrefixV6: 48}
	if p, err := ParseTarget("2001:db8::1", r); err != nil || p.String() != "2001:db8::1/128" {
		t.Errorf("ipv6_prefix 128: %v %v", p, err)
	}
	if _, err := ParseTarget("198.18.0.0/16", r); err == nil || !strings.Contains(err.Error(), "/16 is wider than the configured minimum /24") {
		t.Errorf("min_prefix_v4 24: %v", err)
	}
	if _, err := ParseTarget("2001:db8::/40", r); err == nil || !strings.Contains(err.Error(), "minimum /48") {
		t.Errorf("min_prefix_v6 48: %v", err)
	}
	// An IPv6 prefix config wider than min_prefix_v6 is caught per target too.
	r = TargetRules{IPv6Prefix: 16, MinPrefixV4: 8, MinPrefixV6: 32}
	if _, err := ParseTarget("2001:db8::1", r); err == nil {
		t.Error("a /16 from block.ipv6_prefix passed the /32 minimum")
	}
}

func TestParsePorts(t *testing.T) {
	ports, err := ParsePorts("1,11,32771-32774")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ports, []uint16{1, 11, 32771, 32772, 32773, 32774}) {
		t.Errorf("got %v", ports)
	}
	ports, err = ParsePorts(" 80 443, 22,80 , 65535 ")
	if err != nil || !slices.Equal(ports, []uint16{22, 80, 443, 65535}) {
		t.Errorf("spaces and duplicates: %v %v", ports, err)
	}
	if ports, err := ParsePorts(""); err != nil || len(ports) != 0 {
		t.Errorf("empty: %v %v", ports, err)
	}
	for _, in := range []string{"0", "65536", "1-0", "x", "1,,y", "5-", "-5", "1-2-3", "80/tcp", "1.5"} {
		if p, err := ParsePorts(in); err == nil {
			t.Errorf("ParsePorts(%q) = %v, want an error", in, p)
		} else if !strings.Contains(err.Error(), in) {
			t.Errorf("ParsePorts(%q) error %q does not name the input", in, err)
		}
	}
}

func TestFormatPorts(t *testing.T) {
	cases := map[string][]uint16{
		"":                     nil,
		"1":                    {1},
		"1,2":                  {2, 1},
		"1-3":                  {1, 2, 3},
		"1,11,32771-32774":     {32774, 1, 11, 32772, 32771, 32773, 11},
		"12345,12346,31337":    {12345, 12346, 31337},
		"65533-65535":          {65535, 65534, 65533},
		"32770-32774,34555":    {32770, 32771, 32772, 32773, 32774, 34555},
		"1,7,9,69,161,162,513": {1, 7, 9, 69, 161, 162, 513},
	}
	for want, in := range cases {
		if got := FormatPorts(in); got != want {
			t.Errorf("FormatPorts(%v) = %q, want %q", in, got, want)
		}
		back, err := ParsePorts(want)
		if err != nil || FormatPorts(back) != want {
			t.Errorf("round trip of %q: %v %v", want, back, err)
		}
	}
}

// CheckTarget refuses what ParseTarget refuses of a CIDR, and a prefix that is not canonical.
func TestCheckTarget(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0.0.0.0/0", "every IPv4 address"},
		{"::/64", "holds the unspecified and loopback addresses"},
		{"127.0.0.0/8", "loopback range"},
		{"fe80::/64", "link-local range"},
		{"198.0.0.0/7", "wider than the configured minimum /8"},
		{"198.18.0.7/24", "not a canonical prefix"},
		{"::ffff:198.18.0.7/128", "not a canonical prefix"},
	} {
		if err := CheckTarget(netip.MustParsePrefix(tc.in), defaultRules); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckTarget(%s) = %v, want %q", tc.in, err, tc.want)
		}
	}
	if err := CheckTarget(netip.Prefix{}, defaultRules); err == nil {
		t.Error("CheckTarget of the zero prefix passed")
	}
	for _, ok := range []string{"198.18.0.7/32", "198.18.0.0/15", "2001:db8::/64", "2001:db8::1/128"} {
		if err := CheckTarget(netip.MustParsePrefix(ok), defaultRules); err != nil {
			t.Errorf("CheckTarget(%s): %v", ok, err)
		}
	}
}
