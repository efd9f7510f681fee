package input

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/snare-dev/snare/internal/testutil"
)

// namesInput fails unless err names the input, quoted (cut short if it is long).
func namesInput(t *testing.T, in string, err error) {
	t.Helper()
	if !strings.Contains(err.Error(), QuoteInput(in)) {
		t.Fatalf("error %q does not name the input %s", err, QuoteInput(in))
	}
	if len(err.Error()) > 1000 { // the input quoted cut after 100 bytes, escaped, and a sentence
		t.Fatalf("error for %s is %d bytes long", QuoteInput(in), len(err.Error()))
	}
}

func FuzzParseTarget(f *testing.F) {
	rules := []TargetRules{defaultRules, {}, {IPv6Prefix: 48, MinPrefixV4: 16, MinPrefixV6: 40}}
	f.Fuzz(func(t *testing.T, in string) {
		for _, r := range rules {
			p, err := ParseTarget(in, r)
			if err != nil {
				namesInput(t, in, err)
				continue
			}
			testutil.CheckPrefix(t, in, p)
			minBits := r.MinPrefixV4
			if p.Addr().Is6() {
				minBits = r.MinPrefixV6
			}
			if p.Bits() == 0 || p.Bits() < minBits {
				t.Fatalf("%q under %+v: %v is wider than allowed", in, r, p)
			}
			for _, nb := range neverBlocked {
				if nb.prefix.Overlaps(p) {
					t.Fatalf("%q: %v overlaps %s %v", in, p, nb.kind, nb.prefix)
				}
			}
			if p.Addr().IsLoopback() || p.Addr().IsUnspecified() && p.IsSingleIP() || p.Contains(netip.IPv6Loopback()) {
				t.Fatalf("%q: %v is loopback or unspecified", in, p)
			}
			if err := CheckTarget(p, r); err != nil {
				t.Fatalf("%q: %v parsed, but CheckTarget refuses it: %v", in, p, err)
			}
			// The prefix's own text is a target that parses to itself.
			if again, err := ParseTarget(p.String(), r); err != nil || again != p {
				t.Fatalf("%q: %v parsed again gives %v, %v", in, p, again, err)
			}
		}
		p, err := ParseAllowPrefix(in)
		if err != nil {
			namesInput(t, in, err)
			return
		}
		testutil.CheckPrefix(t, in, p)
		if p.Bits() == 0 {
			t.Fatalf("%q: allowlist entry %v covers everything", in, p)
		}
	})
}

func FuzzParseTTL(f *testing.F) {
	f.Fuzz(func(t *testing.T, in string) {
		d, err := ParseTTL(in)
		if err != nil {
			namesInput(t, in, err)
			return
		}
		permanent := strings.EqualFold(strings.TrimSpace(in), "permanent")
		switch {
		case d < 0 || d > MaxDuration:
			t.Fatalf("%q: TTL %v out of range", in, d)
		case (d == 0) != permanent:
			t.Fatalf("%q: TTL %v, permanent %v", in, d, permanent)
		}
		if back, err := ParseTTL(FormatTTL(d)); err != nil || back != d {
			t.Fatalf("%q: %v formats as %q, which parses as %v, %v", in, d, FormatTTL(d), back, err)
		}
	})
}
