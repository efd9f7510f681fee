package loader

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/bpf"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("needs root (BPF); CI must run as root")
	}
	t.Skip("SKIPPED: needs root to load BPF programs; run the tests as root")
}

// newUnattached loads the program with fresh maps pinned in a temporary bpffs directory, without
// attaching it anywhere: enough for BPF_PROG_TEST_RUN.
func newUnattached(t testing.TB, capacity int) *XDP {
	t.Helper()
	requireRoot(t)
	dir, err := os.MkdirTemp("/sys/fs/bpf", "snare-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	x := &XDP{log: testLogger(t), pinDir: dir, capacity: capacity}
	if err := x.load(capacity); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	return x
}

type pkt struct {
	src, dst string
	proto    string // "tcp", "udp", "icmp"
	dport    uint16
	flags    string // TCP flags: any of "SFRPAU", "" = NULL
	vlans    int
	frag     bool // IPv4 non-first fragment / IPv6 fragment header with offset
	ext      bool // IPv6 hop-by-hop options header before L4
	ipOpts   bool // IPv4 options (ihl > 5)
}

// frame crafts the packet with gopacket.
func frame(t testing.TB, p pkt) []byte {
	t.Helper()
	src, dst := netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst)
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
	var ls []gopacket.SerializableLayer
	ls = append(ls, eth)
	etype := layers.EthernetTypeIPv4
	if src.Is6() {
		etype = layers.EthernetTypeIPv6
	}
	if p.vlans > 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		for i := 0; i < p.vlans; i++ {
			next := layers.EthernetTypeDot1Q
			if i == p.vlans-1 {
				next = etype
			}
			ls = append(ls, &layers.Dot1Q{VLANIdentifier: uint16(100 + i), Type: next})
		}
	} else {
		eth.EthernetType = etype
	}
	var l4proto layers.IPProtocol
	switch p.proto {
	case "tcp":
		l4proto = layers.IPProtocolTCP
	case "udp":
		l4proto = layers.IPProtocolUDP
	default:
		l4proto = layers.IPProtocolICMPv4
		if src.Is6() {
			l4proto = layers.IPProtocolICMPv6
		}
	}
	var netLayer gopacket.NetworkLayer
	if src.Is4() {
		ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Protocol: l4proto}
		if p.frag {
			ip.FragOffset = 100
		}
		if p.ipOpts {
			ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		}
		ls = append(ls, ip)
		netLayer = ip
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), NextHeader: l4proto}
		ls = append(ls, ip)
		netLayer = ip
		if p.ext {
			ip.NextHeader = layers.IPProtocolIPv6HopByHop
			hbh := &layers.IPv6HopByHop{}
			hbh.NextHeader = l4proto
			hbh.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionLength: 4, OptionData: []byte{0, 0, 0, 0}}}
			ls = append(ls, hbh)
		}
		if p.frag {
			ls = append(ls, gopacket.Payload(nil))
			ip.NextHeader = layers.IPProtocolIPv6Fragment
			ls[len(ls)-1] = &layers.IPv6Fragment{NextHeader: l4proto, FragmentOffset: 100}
		}
	}
	switch p.proto {
	case "tcp":
		tcp := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(p.dport), Window: 1024}
		for _, f := range p.flags {
			switch f {
			case 'S':
				tcp.SYN = true
			case 'F':
				tcp.FIN = true
			case 'R':
				tcp.RST = true
			case 'P':
				tcp.PSH = true
			case 'A':
				tcp.ACK = true
			case 'U':
				tcp.URG = true
			}
		}
		if err := tcp.SetNetworkLayerForChecksum(netLayer); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, tcp)
	case "udp":
		udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(p.dport)}
		if err := udp.SetNetworkLayerForChecksum(netLayer); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, udp)
	default:
		if src.Is4() {
			ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)})
		} else {
			icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}
			if err := icmp.SetNetworkLayerForChecksum(netLayer); err != nil {
				t.Fatal(err)
			}
			ls = append(ls, icmp)
		}
	}
	ls = append(ls, gopacket.Payload([]byte("snare-test-payload")))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func run(t testing.TB, x *XDP, data []byte) string {
	t.Helper()
	ret, err := x.objs.SnareXdp.Run(&ebpf.RunOptions{Data: data})
	if err != nil {
		t.Fatal(err)
	}
	switch ret {
	case 1:
		return "drop"
	case 2:
		return "pass"
	}
	t.Fatalf("unexpected xdp verdict %d", ret)
	return ""
}

func block(t testing.TB, x *XDP, prefix string, ttl time.Duration) {
	t.Helper()
	r := backend.Rule{Prefix: netip.MustParsePrefix(prefix)}
	if ttl != 0 {
		r.Deadline = time.Now().Add(ttl)
	}
	if err := x.Block(context.Background(), []backend.Rule{r}); err != nil {
		t.Fatal(err)
	}
}

func counter(t testing.TB, x *XDP, name string) uint64 {
	t.Helper()
	s, err := x.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s[name].Packets
}

const (
	host4 = "198.18.0.1"
	host6 = "2001:db8::1"
)

func TestVerdicts(t *testing.T) {
	x := newUnattached(t, 1024)
	block(t, x, "198.18.1.1/32", time.Hour)
	block(t, x, "198.18.2.0/24", time.Hour)
	block(t, x, "198.18.3.3/32", 0) // permanent
	block(t, x, "2001:db8:1::/64", time.Hour)
	block(t, x, "2001:db8:2::/48", time.Hour)
	block(t, x, "2001:db8:3::7/128", time.Hour)
	block(t, x, "198.18.4.4/32", -time.Second) // already expired
	block(t, x, "198.18.9.0/24", time.Hour)
	block(t, x, "198.18.5.14/32", -time.Second) // expired, inside a live CIDR
	block(t, x, "198.18.5.12/30", time.Hour)
	block(t, x, "2001:db8:5::/64", -time.Second) // expired /64, inside a live /48
	block(t, x, "2001:db8:5::/48", time.Hour)
	if err := x.SetAllow(context.Background(), []netip.Prefix{netip.MustParsePrefix("198.18.9.9/32"), netip.MustParsePrefix("2001:db8:1::1/128")}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		p    pkt
		want string
	}{
		{"v4 exact", pkt{src: "198.18.1.1", dst: host4, proto: "tcp", dport: 80, flags: "S"}, "drop"},
		{"v4 other source", pkt{src: "198.18.1.2", dst: host4, proto: "tcp", dport: 80, flags: "S"}, "pass"},
		{"v4 cidr", pkt{src: "198.18.2.200", dst: host4, proto: "udp", dport: 53}, "drop"},
		{"v4 permanent", pkt{src: "198.18.3.3", dst: host4, proto: "icmp"}, "drop"},
		{"v4 expired passes without a sweep", pkt{src: "198.18.4.4", dst: host4, proto: "icmp"}, "pass"},
		{"v4 expired exact inside a live cidr", pkt{src: "198.18.5.14", dst: host4, proto: "tcp", dport: 80, flags: "S"}, "drop"},
		{"v4 live cidr next to the expired exact", pkt{src: "198.18.5.13", dst: host4, proto: "icmp"}, "drop"},
		{"v6 expired /64 inside a live /48", pkt{src: "2001:db8:5::9", dst: host6, proto: "udp", dport: 53}, "drop"},
		{"v4 allowlisted inside a blocked cidr", pkt{src: "198.18.9.9", dst: host4, proto: "icmp"}, "pass"},
		{"v4 blocked inside cidr next to allowlisted", pkt{src: "198.18.9.8", dst: host4, proto: "icmp"}, "drop"},
		{"v4 one vlan", pkt{src: "198.18.1.1", dst: host4, proto: "tcp", dport: 80, flags: "S", vlans: 1}, "drop"},
		{"v4 two vlans", pkt{src: "198.18.1.1", dst: host4, proto: "tcp", dport: 80, flags: "S", vlans: 2}, "drop"},
		{"v4 options", pkt{src: "198.18.1.1", dst: host4, proto: "tcp", dport: 80, flags: "S", ipOpts: true}, "drop"},
		{"v4 fragment", pkt{src: "198.18.1.1", dst: host4, proto: "udp", dport: 80, frag: true}, "drop"},
		{"v6 in blocked /64", pkt{src: "2001:db8:1::99", dst: host6, proto: "tcp", dport: 443, flags: "S"}, "drop"},
		{"v6 allowlisted address inside a blocked /64", pkt{src: "2001:db8:1::1", dst: host6, proto: "tcp", dport: 443, flags: "S"}, "pass"},
		{"v6 next /64", pkt{src: "2001:db8:1:1::99", dst: host6, proto: "tcp", dport: 443, flags: "S"}, "pass"},
		{"v6 cidr /48", pkt{src: "2001:db8:2:5::1", dst: host6, proto: "udp", dport: 53}, "drop"},
		{"v6 /128", pkt{src: "2001:db8:3::7", dst: host6, proto: "icmp"}, "drop"},
		{"v6 /128 neighbour", pkt{src: "2001:db8:3::8", dst: host6, proto: "icmp"}, "pass"},
		{"v6 hop-by-hop", pkt{src: "2001:db8:1::5", dst: host6, proto: "udp", dport: 53, ext: true}, "drop"},
		{"v6 fragment", pkt{src: "2001:db8:1::5", dst: host6, proto: "udp", dport: 53, frag: true}, "drop"},
		{"v6 vlan", pkt{src: "2001:db8:1::5", dst: host6, proto: "icmp", vlans: 1}, "drop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := run(t, x, frame(t, tc.p)); got != tc.want {
				t.Fatalf("verdict %s, want %s", got, tc.want)
			}
		})
	}
}

func TestMalformedPasses(t *testing.T) {
	x := newUnattached(t, 1024)
	block(t, x, "198.18.1.1/32", time.Hour)
	good := frame(t, pkt{src: "198.18.1.1", dst: host4, proto: "tcp", dport: 80, flags: "S"})
	if run(t, x, good) != "drop" {
		t.Fatal("control packet not dropped")
	}
	before := counter(t, x, "pass_unparsed")

	// Truncated inside the IPv4 header: the program cannot see the source, so it passes.
	if got := run(t, x, good[:14+10]); got != "pass" {
		t.Fatalf("truncated ipv4: %s", got)
	}
	// ihl < 5 is malformed.
	bad := append([]byte(nil), good...)
	bad[14] = 0x44
	if got := run(t, x, bad); got != "pass" {
		t.Fatalf("ihl 4: %s", got)
	}
	// Not IP at all (ARP).
	arp := append([]byte(nil), good...)
	arp[12], arp[13] = 0x08, 0x06
	if got := run(t, x, arp); got != "pass" {
		t.Fatalf("arp: %s", got)
	}
	// A truncated VLAN tag.
	vl := frame(t, pkt{src: "198.18.1.1", dst: host4, proto: "icmp", vlans: 1})
	if got := run(t, x, vl[:16]); got != "pass" {
		t.Fatalf("truncated vlan: %s", got)
	}
	// A truncated IPv6 extension header.
	v6 := frame(t, pkt{src: "2001:db8::5", dst: host6, proto: "udp", dport: 53, ext: true})
	if got := run(t, x, v6[:14+40+4]); got != "pass" {
		t.Fatalf("truncated v6 ext: %s", got)
	}
	if got := counter(t, x, "pass_unparsed") - before; got != 5 {
		t.Fatalf("pass_unparsed grew by %d, want 5", got)
	}
}

func TestExactExpiry(t *testing.T) {
	x := newUnattached(t, 1024)
	block(t, x, "198.18.1.1/32", 300*time.Millisecond)
	p := frame(t, pkt{src: "198.18.1.1", dst: host4, proto: "icmp"})
	if got := run(t, x, p); got != "drop" {
		t.Fatalf("before deadline: %s", got)
	}
	time.Sleep(350 * time.Millisecond) // past the deadline plus a coarse-clock tick
	if got := run(t, x, p); got != "pass" {
		t.Fatalf("after deadline, no sweep: %s", got)
	}
	if counter(t, x, "pass_expired") == 0 {
		t.Fatal("expired pass not counted")
	}
}

func TestDryRunAndHits(t *testing.T) {
	x := newUnattached(t, 1024)
	block(t, x, "198.18.1.1/32", time.Hour)
	p := frame(t, pkt{src: "198.18.1.1", dst: host4, proto: "icmp"})
	for range 3 {
		run(t, x, p)
	}
	rules, err := x.Rules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 1 || rules[0].Hits != 3 || rules[0].LastHit.IsZero() {
		t.Fatalf("rules = %+v, want one with 3 hits and a last hit", rules)
	}
	if err := x.SetSettings(context.Background(), backend.Settings{DryRun: true}); err != nil {
		t.Fatal(err)
	}
	if got := run(t, x, p); got != "pass" {
		t.Fatalf("dry-run: %s", got)
	}
	if counter(t, x, "dry_run") != 1 || counter(t, x, "drop_exact") != 3 {
		t.Fatalf("counters: dry_run %d drop_exact %d", counter(t, x, "dry_run"), counter(t, x, "drop_exact"))
	}
	// Re-blocking (extending) keeps the hit counter.
	block(t, x, "198.18.1.1/32", 2*time.Hour)
	rules, _ = x.Rules(context.Background())
	if rules[0].Hits != 4 {
		t.Fatalf("hits after re-block = %d, want 4", rules[0].Hits)
	}
}

func TestPinnedMapsSurviveReload(t *testing.T) {
	x := newUnattached(t, 1024)
	block(t, x, "198.18.1.1/32", time.Hour)
	x.Close()

	// Same pin directory, same capacity: maps re-used.
	y := &XDP{log: testLogger(t), pinDir: x.pinDir, capacity: 1024}
	if err := y.load(1024); err != nil {
		t.Fatal(err)
	}
	if got := run(t, y, frame(t, pkt{src: "198.18.1.1", dst: host4, proto: "icmp"})); got != "drop" {
		t.Fatalf("after reload: %s", got)
	}
	y.Close()

	// Larger capacity: the block maps are incompatible, so contents migrate to new maps.
	z := &XDP{log: testLogger(t), pinDir: x.pinDir, capacity: 4096}
	if err := z.load(4096); err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	want := uint32(4096 + 1024 + (cpus+1)*128)
	if z.objs.Block4.MaxEntries() != want {
		t.Fatalf("max entries %d, want %d (capacity, a quarter and the LRU's per-CPU reserve)", z.objs.Block4.MaxEntries(), want)
	}
	if got := run(t, z, frame(t, pkt{src: "198.18.1.1", dst: host4, proto: "icmp"})); got != "drop" {
		t.Fatalf("after migration: %s", got)
	}
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(x.pinDir, bpf.SnareMapBlock4), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if pinned.MaxEntries() != want {
		t.Fatalf("pin not replaced: max entries %d", pinned.MaxEntries())
	}
	// The block maps are created beside the collection: the pins must be the maps the program uses.
	for name, used := range map[string]*ebpf.Map{bpf.SnareMapBlock4: z.objs.Block4, bpf.SnareMapBlock6: z.objs.Block6} {
		p, err := ebpf.LoadPinnedMap(filepath.Join(x.pinDir, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := p.Info()
		uid, _ := used.Info()
		p.Close()
		id1, ok1 := pid.ID()
		id2, ok2 := uid.ID()
		if !ok1 || !ok2 || id1 != id2 {
			t.Fatalf("%s: pinned map id %d, program uses %d", name, id1, id2)
		}
	}
}

// A settings map pinned by an older program, whose struct config was shorter, is carried over
// field by field on upgrade: the trap stays on, IPv6 keeps its block length, and the new trap
// limit is set, with no moment of zeroed settings.
func TestSettingsCarriedOverFromShorterLayout(t *testing.T) {
	requireRoot(t)
	dir, err := os.MkdirTemp("/sys/fs/bpf", "snare-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cur bpf.SnareConfig
	oldSize := uint32(unsafe.Offsetof(cur.BlockLimit)) // the layout before block_limit
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: oldSize, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	val := make([]byte, oldSize)
	val[0] = byte(cfgTrapOn | cfgTrapTCPBlock)                             // flags
	val[4] = 3                                                             // trap_threshold
	copy(val[unsafe.Offsetof(cur.V6Mask):], bytes.Repeat([]byte{0xff}, 6)) // v6_mask: a /48
	if err := old.Put(uint32(0), val); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(dir, bpf.SnareMapSettings)); err != nil {
		t.Fatal(err)
	}

	x := &XDP{log: testLogger(t), pinDir: dir, capacity: 1024}
	if err := x.load(1024); err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	got, err := x.settings()
	if err != nil {
		t.Fatal(err)
	}
	if got.Flags != cfgTrapOn|cfgTrapTCPBlock || got.TrapThreshold != 3 || maskBits(got.V6Mask) != 48 || got.BlockLimit != 1024 {
		t.Fatalf("settings after the upgrade %+v: want the old flags, threshold 3, a /48 mask and block limit 1024", got)
	}
}

// TestIPv6PrefixReplacesCIDRs: a new IPv6 block length moves the prefixes of that length from the
// trie into the exact map and the old ones out of it, where Unblock looks for them
// (backend.Place).
func TestIPv6PrefixReplacesCIDRs(t *testing.T) {
	x := newUnattached(t, 64)
	ctx := context.Background()
	block(t, x, "2001:db8:48::/48", 0)
	block(t, x, "2001:db8:64::/64", 0)
	if err := x.SetSettings(ctx, backend.Settings{IPv6Prefix: 48}); err != nil {
		t.Fatal(err)
	}
	var v bpf.SnareBlockVal
	if err := x.objs.Block6.Lookup(bpf.SnareAddr6{Addr: netip.MustParseAddr("2001:db8:48::").As16()}, &v); err != nil {
		t.Errorf("the /48 is not in the exact map at length 48: %v", err)
	}
	if got := ruleMap(t, x); len(got) != 2 {
		t.Fatalf("rules after the change: %v", got)
	}
	if err := x.Unblock(ctx, []netip.Prefix{netip.MustParsePrefix("2001:db8:48::/48"), netip.MustParsePrefix("2001:db8:64::/64")}); err != nil {
		t.Fatal(err)
	}
	if got := ruleMap(t, x); len(got) != 0 {
		t.Errorf("still blocked after Unblock: %v", got)
	}
}
