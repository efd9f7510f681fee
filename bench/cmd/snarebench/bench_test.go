package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
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

func TestNflogPayload(t *testing.T) {
	ip := []byte{0x45, 0, 0, 40, 1, 2, 3, 4}
	// header (AF_INET, version 0, group 7), a 5-byte TLV of type 1 padded to 8, the payload TLV.
	rec := []byte{2, 0, 0, 7, 5, 0, 1, 0, 0xaa, 0, 0, 0}
	rec = append(rec, byte(4+len(ip)), 0, 9, 0)
	rec = append(rec, ip...)
	got, first, ok := nflogPayload(rec)
	if !ok || first != layers.LayerTypeIPv4 || string(got) != string(ip) {
		t.Fatalf("nflogPayload = %x, %v, %v; want %x, IPv4, true", got, first, ok, ip)
	}
	// Cut short by the snap length: what is there of the packet.
	if got, _, ok := nflogPayload(rec[:len(rec)-3]); !ok || string(got) != string(ip[:len(ip)-3]) {
		t.Errorf("truncated record: %x, %v", got, ok)
	}
	for _, bad := range [][]byte{nil, {2, 0}, {2, 0, 0, 7, 2, 0, 9, 0}, {2, 0, 0, 7, 5, 0, 1, 0}} {
		if _, _, ok := nflogPayload(bad); ok {
			t.Errorf("nflogPayload(%x) ok, want not", bad)
		}
	}
	v6 := append([]byte{10, 0, 0, 7}, rec[4:]...)
	if _, first, ok := nflogPayload(v6); !ok || first != layers.LayerTypeIPv6 {
		t.Errorf("AF_INET6 record: %v, %v", first, ok)
	}
}

func TestCountLeaks(t *testing.T) {
	tcp := layers.IPProtocolTCP
	k := func(port uint16, id uint32) pktKey { return pktKey{proto: tcp, dport: port, id: id} }
	isTrap := func(p pktKey) bool { return p.dport == 31337 }
	t0 := time.Unix(100, 0)
	res := scanResult{
		sent:   []pktKey{k(80, 1), k(22, 2), k(31337, 3), k(443, 4), k(31337, 5), k(80, 1)},
		sentAt: []time.Time{t0, t0, t0.Add(time.Millisecond), t0, t0, t0},
		// 80/1 twice: one copy from before the trigger, one retransmission after it.
		got:   []pktKey{k(80, 1), k(22, 2), k(31337, 3), k(443, 4), k(31337, 5), k(80, 1)},
		gotAt: []time.Time{t0, t0, t0, t0.Add(2 * time.Millisecond), t0, t0.Add(5 * time.Millisecond)},
	}
	trigger, before, nonTrap, anyLeak := countLeaks(res.sent, res.got, tcp, isTrap)
	if trigger != 2 || before != 2 || nonTrap != 2 || anyLeak != 4 {
		t.Errorf("countLeaks = %d %d %d %d, want 2 2 2 4", trigger, before, nonTrap, anyLeak)
	}
	if d, ok := lastLeak(res, trigger, isTrap); !ok || d != 4*time.Millisecond {
		t.Errorf("lastLeak = %v, %v; want 4ms, true", d, ok)
	}
	// Nothing got through after the trigger.
	res.got, res.gotAt = res.got[:2], res.gotAt[:2]
	if _, _, nonTrap, _ := countLeaks(res.sent, res.got, tcp, isTrap); nonTrap != 0 {
		t.Errorf("no leak: countLeaks says %d", nonTrap)
	}
	if _, ok := lastLeak(res, trigger, isTrap); ok {
		t.Error("no leak: lastLeak says ok")
	}
	if trigger, _, _, _ := countLeaks([]pktKey{k(80, 1)}, nil, tcp, isTrap); trigger != -1 {
		t.Errorf("no trap probe: trigger %d", trigger)
	}
}

func TestPortsentryConf(t *testing.T) {
	conf, err := portsentryConf()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`TCP_PORTS="1,11,15,79,`, `,32771,32772,32773,32774,`, `UDP_PORTS="1,7,9,69,`, `,32770,32771,32772,32773,32774,`,
		`SCAN_TRIGGER="0"`, `BLOCK_TCP="1"`, `BLOCK_UDP="1"`,
		`KILL_RUN_CMD="/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP"`,
		`HISTORY_FILE="/etc/portsentry/`, `BLOCKED_FILE="/etc/portsentry/`,
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	// portsentry reads neither ranges nor these: the block must be the iptables rule only.
	for _, bad := range []string{"-", "KILL_ROUTE", "KILL_HOSTS_DENY"} {
		if strings.Contains(strings.ReplaceAll(conf, "-I INPUT -s $TARGET$ -j DROP", ""), bad) {
			t.Errorf("config has %q:\n%s", bad, conf)
		}
	}
}

func TestReportName(t *testing.T) {
	all := []section{{name: "testrun"}, {name: "control"}, {name: "fleet"}}
	now := time.Date(2026, 12, 6, 23, 30, 0, 0, time.UTC)
	for _, c := range []struct {
		quick bool
		want  map[string]bool
		name  string
	}{
		{false, map[string]bool{"testrun": true, "control": true, "fleet": true}, "2026-12-06-6.18-fc.md"},
		{true, map[string]bool{"testrun": true, "control": true, "fleet": true}, "2026-12-06-6.18-fc-quick.md"},
		// A subset never gets the full run's name, in the order the sections run.
		{false, map[string]bool{"fleet": true, "control": true}, "2026-12-06-6.18-fc-control-fleet.md"},
		{true, map[string]bool{"fleet": true}, "2026-12-06-6.18-fc-quick-fleet.md"},
	} {
		if got := reportName(now, "6.18-fc", c.quick, all, c.want); got != c.name {
			t.Errorf("reportName(quick %v, %v) = %q, want %q", c.quick, c.want, got, c.name)
		}
	}
}

func TestFleetSources(t *testing.T) {
	f := &fleetLab{}
	seen := map[netip.Addr]bool{}
	for _, n := range []int{1, 300, 1<<16 - 301} {
		got, err := f.sources(n)
		if err != nil || len(got) != n {
			t.Fatalf("sources(%d) = %d sources, %v", n, len(got), err)
		}
		for _, a := range got {
			// Never a lab interface's address (198.18.i.x), never outside the lab's range.
			if !netip.MustParsePrefix("198.19.0.0/16").Contains(a) || seen[a] {
				t.Fatalf("sources(%d): %s outside 198.19.0.0/16 or handed out twice", n, a)
			}
			seen[a] = true
		}
	}
	// The /16 is used up: no more, and nothing handed out.
	if got, err := f.sources(1); err == nil || got != nil {
		t.Errorf("sources past 198.19.255.255 = %v, %v; want an error", got, err)
	}
}

// The catch-up's list: a million addresses of the reserved filler range, none of them in the
// first list (blockList), which must be gone before it fits block.capacity.
func TestFillerList(t *testing.T) {
	const n = 1_000_000
	first := map[netip.Addr]bool{}
	for _, a := range blockList(n) {
		first[a] = true
	}
	l := fillerList(bulkFirst, n)
	if len(l) != n {
		t.Fatalf("fillerList: %d entries, want %d", len(l), n)
	}
	seen := map[netip.Addr]bool{}
	for i, a := range l {
		if !netip.MustParsePrefix("240.0.0.0/8").Contains(a) || first[a] || seen[a] {
			t.Fatalf("fillerList: entry %d, %s, outside 240.0.0.0/8, in blockList or twice", i, a)
		}
		seen[a] = true
	}
	if l[0] != bulkFirst || l[256] != netip.MustParseAddr("240.128.1.0") || l[n-1] != netip.MustParseAddr("240.143.66.63") {
		t.Errorf("fillerList: %s, %s, ..., %s; want consecutive addresses from %s", l[0], l[256], l[n-1], bulkFirst)
	}
}
