package fleet

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/control/store"
)

var testLimits = limits{rules: input.TargetRules{IPv6Prefix: 64, MinPrefixV4: 8, MinPrefixV6: 32}, maxTTL: 90 * 24 * time.Hour}

// A bulk value gives back every block as the host that made it stored it, split into values
// of at most maxBulkBytes, whatever the reasons' lengths.
func TestBulkRoundTrip(t *testing.T) {
	now := time.UnixMilli(time.Now().UnixMilli())
	var rules []store.Rule
	for i := range 60_000 {
		r := store.Rule{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32),
			Origin: api.OriginImport, Created: now.Add(-time.Duration(i) * time.Millisecond), Deadline: now.Add(time.Hour + time.Duration(i)*time.Millisecond)}
		switch i % 1000 {
		case 1:
			r.Prefix = netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::/48", i))
			r.Deadline = time.Time{} // permanent
		case 2:
			r.Reason = strings.Repeat("r", input.MaxReasonLen)
		case 3:
			r.Origin, r.LastOffence = api.OriginTrap, now
		}
		rules = append(rules, r)
	}
	at := func(i int) store.Rule { return rules[i] }
	var got []store.Rule
	values := 0
	for i := 0; i < len(rules); {
		first := i
		var value []byte
		value, i = EncodeBulk("web-1", first, len(rules), at)
		values++
		if len(value) > maxBulkBytes {
			t.Fatalf("bulk value of %d bytes, over %d", len(value), maxBulkBytes)
		}
		count, deadline, err := BulkInfo(value)
		if err != nil || count != i-first {
			t.Fatalf("BulkInfo: %d blocks, %v; want %d", count, err, i-first)
		}
		if !deadline.IsZero() && first <= 1 {
			t.Errorf("the value holding a permanent block says its latest deadline is %s", deadline)
		}
		out, node, refused, bad, err := testLimits.decodeBulk("b.x", value, 7, now)
		if err != nil || refused != 0 || bad != nil || node != "web-1" {
			t.Fatalf("decode: node %q, %d refused (%v), %v", node, refused, bad, err)
		}
		got = append(got, out...)
	}
	if values < 2 {
		t.Errorf("%d blocks in %d bulk value(s): the size bound did not split them", len(rules), values)
	}
	if len(got) != len(rules) {
		t.Fatalf("%d blocks back, want %d", len(got), len(rules))
	}
	for i, r := range rules {
		g := got[i]
		made := r.LastOffence
		if made.IsZero() {
			made = r.Created
		}
		if g.Prefix != r.Prefix || !g.Deadline.Equal(r.Deadline) || g.Reason != r.Reason || g.Origin != api.OriginFleet ||
			g.Node != "web-1" || g.Revision != 7 || !g.LastOffence.Equal(made) {
			t.Fatalf("block %d: got %+v, want %+v", i, g, r)
		}
	}
}

// A value that does not parse is refused whole; a block in it that does not check is refused
// alone, and an expired one skipped.
func TestBulkRefusesBadValues(t *testing.T) {
	now := time.UnixMilli(time.Now().UnixMilli())
	good := store.Rule{Prefix: netip.MustParsePrefix("198.18.0.7/32"), Origin: api.OriginManual, Created: now, Deadline: now.Add(time.Hour)}
	rules := []store.Rule{
		good,
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Origin: api.OriginManual, Created: now, Deadline: now.Add(time.Hour)},
		{Prefix: netip.MustParsePrefix("198.18.0.8/32"), Origin: api.OriginManual, Created: now, Deadline: now.Add(365 * 24 * time.Hour)},
		{Prefix: netip.MustParsePrefix("198.18.0.9/32"), Origin: api.OriginManual, Created: now, Deadline: now.Add(-time.Second)},
		{Prefix: netip.MustParsePrefix("198.18.0.10/32"), Origin: api.OriginManual, Created: now, Deadline: now.Add(time.Hour), Reason: "bell\a"},
	}
	value, next := EncodeBulk("web-1", 0, len(rules), func(i int) store.Rule { return rules[i] })
	if next != len(rules) {
		t.Fatalf("packed %d of %d", next, len(rules))
	}
	out, _, refused, bad, err := testLimits.decodeBulk("b.x", value, 1, now)
	if err != nil || refused != 3 || len(out) != 1 || out[0].Prefix != good.Prefix {
		t.Fatalf("got %d blocks, %d refused, %v", len(out), refused, err)
	}
	if bad == nil || !strings.Contains(bad.Error(), "0.0.0.0/0") {
		t.Errorf("first refusal %v, want it to name 0.0.0.0/0", bad)
	}
	for name, v := range map[string][]byte{
		"empty":          nil,
		"other magic":    append([]byte("SNB9"), value[4:]...),
		"cut short":      value[:len(value)-3],
		"trailing bytes": append(bytes.Clone(value), 0),
		"huge count":     append([]byte("SNB1\xff\xff\xff\xff\x0f"), value[5:]...),
	} {
		if out, _, _, _, err := testLimits.decodeBulk("b.x", v, 1, now); err == nil {
			t.Errorf("%s: decoded %d blocks, want an error", name, len(out))
		}
	}
	noNode, _ := EncodeBulk("", 0, 1, func(int) store.Rule { return good })
	if _, _, _, _, err := testLimits.decodeBulk("b.x", noNode, 1, now); err == nil || !strings.Contains(err.Error(), "bad node") {
		t.Errorf("a bulk value of no node: %v, want it refused", err)
	}
}
