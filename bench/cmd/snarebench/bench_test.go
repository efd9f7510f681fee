package main

import (
	"net/netip"
	"strings"
	"testing"
)

func TestBlockList(t *testing.T) {
	for _, n := range []int{1, 2, 10000, 70000} {
		l := blockList(n)
		if len(l) != n {
			t.Fatalf("blockList(%d) has %d entries", n, len(l))
		}
		if l[n-1] != attacker {
			t.Errorf("blockList(%d): last is %s, want the attacker %s", n, l[n-1], attacker)
		}
		seen := map[netip.Addr]bool{}
		for _, a := range l {
			if seen[a] {
				t.Fatalf("blockList(%d): %s twice", n, a)
			}
			seen[a] = true
			// Only the lab's range and the reserved filler range, never anything routable.
			if !netip.MustParsePrefix("198.18.0.0/15").Contains(a) && !netip.MustParsePrefix("240.0.0.0/8").Contains(a) {
				t.Fatalf("blockList(%d): %s outside 198.18.0.0/15 and 240.0.0.0/8", n, a)
			}
		}
	}
	// The whole random range is blocked once the list is large enough.
	l := blockList(70000)
	seen := map[netip.Addr]bool{}
	for _, a := range l {
		seen[a] = true
	}
	for _, a := range []string{"198.19.0.0", "198.19.255.255", "198.19.0.7", "198.19.0.1"} {
		if !seen[netip.MustParseAddr(a)] {
			t.Errorf("blockList(70000) lacks %s", a)
		}
	}
	if blockList(0) != nil {
		t.Error("blockList(0) not empty")
	}
}

func TestTableMarkdown(t *testing.T) {
	tb := newTable("T", "name", "value", "result")
	tb.add("a", "1,000", "PASS")
	tb.add("b", "2.5x", "**MISS**")
	md := tb.markdown()
	for _, want := range []string{"### T", "| name | value | result |", "|---|--:|---|", "| b | 2.5x | **MISS** |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestNum(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -4500: "-4,500"} {
		if got := num(in); got != want {
			t.Errorf("num(%v) = %q, want %q", in, got, want)
		}
	}
}
