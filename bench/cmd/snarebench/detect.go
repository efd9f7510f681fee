package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/internal/netlab"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/backend"
)

// scan is one nmap run against the host.
type scan struct {
	name  string
	flags []string
	v6    bool
	proto layers.IPProtocol
}

// pktKey identifies one probe on both sides of the link.
type pktKey struct {
	proto layers.IPProtocol
	dport uint16
	id    uint32 // IPv4 ID or IPv6 flow label
	seq   uint32 // TCP sequence number
}

// readProbes returns the scanner's packets in a capture, in order, and when each was captured.
func readProbes(path string, src netip.Addr) ([]pktKey, []time.Time, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	var out []pktKey
	var at []time.Time
	for {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return out, at, nil
		}
		if err != nil {
			return out, at, nil // a capture cut short by SIGINT ends with a partial record
		}
		var p gopacket.Packet
		if r.LinkType() == linkTypeNFLOG {
			payload, first, ok := nflogPayload(data)
			if !ok {
				continue
			}
			p = gopacket.NewPacket(payload, first, gopacket.NoCopy)
		} else {
			p = gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.NoCopy)
		}
		var k pktKey
		switch ip := p.NetworkLayer().(type) {
		case *layers.IPv4:
			if a, _ := netip.AddrFromSlice(ip.SrcIP); a.Unmap() != src {
				continue
			}
			k.id, k.proto = uint32(ip.Id), ip.Protocol
		case *layers.IPv6:
			if a, _ := netip.AddrFromSlice(ip.SrcIP); a != src {
				continue
			}
			k.id, k.proto = ip.FlowLabel, ip.NextHeader
		default:
			continue
		}
		switch l4 := p.TransportLayer().(type) {
		case *layers.TCP:
			k.dport, k.seq, k.proto = uint16(l4.DstPort), l4.Seq, layers.IPProtocolTCP
		case *layers.UDP:
			k.dport, k.proto = uint16(l4.DstPort), layers.IPProtocolUDP
		default:
			continue
		}
		out = append(out, k)
		at = append(at, ci.Timestamp)
	}
}

// linkTypeNFLOG is DLT_NFLOG, what tcpdump -i nflog:N writes (gopacket has no decoder for it).
const linkTypeNFLOG = 239

// nflogPayload returns the packet inside an NFLOG record: a 4-byte header (address family,
// version, group) and then TLVs (16-bit length and type in host order, padded to 4 bytes), the
// packet being the NFULA_PAYLOAD (9) one.
func nflogPayload(data []byte) ([]byte, gopacket.LayerType, bool) {
	if len(data) < 4 {
		return nil, 0, false
	}
	first := layers.LayerTypeIPv4
	if data[0] == unix.AF_INET6 {
		first = layers.LayerTypeIPv6
	}
	for b := data[4:]; len(b) >= 4; {
		l, typ := int(b[0])|int(b[1])<<8, int(b[2])|int(b[3])<<8
		if l < 4 {
			return nil, 0, false
		}
		if typ == 9 { // the capture's snap length may cut it short: the headers are enough
			return b[4:min(l, len(b))], first, true
		}
		if l > len(b) {
			return nil, 0, false
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return nil, 0, false
}

func (e *env) sectionDetect() ([]*table, error) {
	t := newTable("Detection: nmap from the attacker namespace against snare's trap ports",
		"scan", "probes sent", "trigger = probe #", "reached the host before the trigger", "reached the host after the trigger (non-trap ports)", "reached the host after the trigger (any)", "target", "result", "blocked by the trap", "nmap says open", "last non-trap probe through, after the trigger")
	t.note("snare's program on the host end of the attacker's veth (native XDP), trap detection on with the default port lists and threshold 1, holding 999,000 blocks. " +
		"tcpdump on the attacker's side records every probe in the order sent; tcpdump on the host's side sees only what XDP passed " +
		"(packet taps run after XDP). Probes are matched across the two captures (IP ID / flow label, port, TCP sequence; copies of one key by count); the trigger is the " +
		"first probe to a trap port; 'before the trigger' shows the host-side capture works. A web server listens on port 80 of the host. 'portsentry:' rows: the seed's setup under the same scans, snare's program detached: portsentry 1.2 (Debian package, fetched with apt-get download and run from the extracted files in the host namespace only) in -stcp or -sudp mode on the same trap ports, SCAN_TRIGGER=0, KILL_RUN_CMD inserting an iptables DROP rule for the source. There 'reached the host' is what passed the INPUT chain (an NFLOG rule after portsentry's DROP rules, captured with tcpdump -i nflog), since a tap on the veth also sees packets iptables drops later.")
	scans := []scan{
		{"-sS (SYN)", []string{"-sS"}, false, layers.IPProtocolTCP},
		{"-sT (connect)", []string{"-sT"}, false, layers.IPProtocolTCP},
		{"-sF (FIN)", []string{"-sF"}, false, layers.IPProtocolTCP},
		{"-sN (NULL)", []string{"-sN"}, false, layers.IPProtocolTCP},
		{"-sX (XMAS)", []string{"-sX"}, false, layers.IPProtocolTCP},
		{"-sU (UDP)", []string{"-sU"}, false, layers.IPProtocolUDP},
		{"-6 -sS (SYN over IPv6)", []string{"-6", "-sS"}, true, layers.IPProtocolTCP},
	}
	ports := "1-1024,31337"
	if e.quick {
		scans = scans[:1]
		ports = "1-200"
	}
	tcpTraps, _ := input.ParsePorts(defaultTCPTraps)
	udpTraps, _ := input.ParsePorts(defaultUDPTraps)
	isTrap := func(k pktKey) bool {
		list := tcpTraps
		if k.proto == layers.IPProtocolUDP {
			list = udpTraps
		}
		for _, p := range list {
			if p == k.dport {
				return true
			}
		}
		return false
	}

	// Room below capacity: at capacity the trap blocks nothing more, never evicting a block.
	if _, err := e.setSnareEntries(capacity-1000, false); err != nil {
		return []*table{t}, err
	}
	hostIf := e.lab.HostIface("attacker")
	detach, err := e.attachTo(e.prog, hostIf, "native")
	if err != nil {
		return []*table{t}, err
	}
	defer detach()
	// A one-second window, so that each scan starts with fresh scan state once the previous
	// block is lifted.
	trap := func(window time.Duration) error {
		cfg := backend.TrapConfig{Threshold: 1, Window: window, TTL: 5 * 24 * time.Hour, BlockTCP: true, BlockUDP: true, EventsPerSecond: 200, EventBurst: 500}
		cfg.TCPPorts, cfg.UDPPorts = tcpTraps, udpTraps
		return e.snare.SetTrap(context.Background(), cfg)
	}
	if err := trap(time.Second); err != nil {
		return []*table{t}, err
	}
	defer e.setTrap(true)

	// The web server: a listener in the host namespace (the socket stays there).
	var ln4, ln6 net.Listener
	if err := e.lab.Do(e.lab.Host.NS, func() error {
		var err error
		if ln4, err = net.Listen("tcp4", "0.0.0.0:80"); err != nil {
			return err
		}
		ln6, err = net.Listen("tcp6", "[::]:80")
		return err
	}); err != nil {
		return []*table{t}, fmt.Errorf("web server: %w", err)
	}
	defer ln4.Close()
	defer ln6.Close()
	for _, ln := range []net.Listener{ln4, ln6} {
		go func(ln net.Listener) {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}(ln)
	}

	dir, err := os.MkdirTemp("", "snarebench-pcap-")
	if err != nil {
		return []*table{t}, err
	}
	defer os.RemoveAll(dir)
	for i, s := range scans {
		src, dst := e.lab.Attacker().Addr4(), hostIf.Addr4.Addr()
		if s.v6 {
			src, dst = e.lab.Attacker().Addr6(), hostIf.Addr6.Addr()
		}
		if err := e.snare.Unblock(context.Background(), []netip.Prefix{netip.PrefixFrom(src, src.BitLen())}); err != nil {
			return []*table{t}, err
		}
		time.Sleep(1200 * time.Millisecond) // the scan window passes: fresh state
		res, err := e.captureScan(s, src, dst, ports, dir, fmt.Sprint(i), func(path string) (*netlab.Proc, error) {
			return e.startCapture(e.lab.Host.NS, hostIf.Name, path, "src host "+src.String())
		})
		if err != nil {
			return []*table{t}, err
		}
		if res.nerr != nil {
			t.add(s.name, "", "", "", "n/a: "+oneLine(res.nerr), "", "0", "")
			continue
		}
		trigger, before, leakNonTrap, leakAny := countLeaks(res.sent, res.got, s.proto, isTrap)
		blocked := "no"
		if rs, err := e.snare.Rules(context.Background()); err == nil {
			for _, r := range rs {
				if r.Prefix.Contains(src) && r.FromTrap {
					blocked = "yes"
				}
			}
		}
		open := openPorts(res.out)
		trig := "no trap probe"
		if trigger >= 0 {
			trig = num(float64(trigger + 1))
		}
		t.add(s.name, num(float64(len(res.sent))), trig, num(float64(before)), num(float64(leakNonTrap)), num(float64(leakAny)), "0",
			passMiss(trigger >= 0 && leakNonTrap == 0), blocked, open, leakTime(res, trigger, isTrap))
	}
	// The comparison: portsentry with the seed's setup, snare's program detached.
	detach()
	e.portsentryRows(t, scans, ports, dir, isTrap)
	return []*table{t}, nil
}

// scanResult is one nmap run: what the attacker sent, what reached the host, nmap's output.
type scanResult struct {
	sent, got     []pktKey
	sentAt, gotAt []time.Time
	out           string
	nerr          error
}

// captureScan runs one nmap scan from the attacker with a capture on the attacker's veth and
// the host-side capture that hostCap starts, and reads both captures.
func (e *env) captureScan(s scan, src, dst netip.Addr, ports, dir, tag string, hostCap func(path string) (*netlab.Proc, error)) (scanResult, error) {
	var res scanResult
	aPcap, hPcap := filepath.Join(dir, "a"+tag+".pcap"), filepath.Join(dir, "h"+tag+".pcap")
	capA, err := e.startCapture(e.lab.Attacker().NS, e.lab.Attacker().Ifaces[0].Name, aPcap, "src host "+src.String())
	if err != nil {
		return res, err
	}
	capH, err := hostCap(hPcap)
	if err != nil {
		capA.Stop()
		return res, err
	}
	args := append([]string{}, s.flags...)
	args = append(args, "-Pn", "-n", "-T4", "--max-retries", "1", "--max-rtt-timeout", "100ms", "--min-rate", "1000", "--host-timeout", "90s", "-p", ports, dst.String())
	t0 := time.Now()
	res.out, res.nerr = e.lab.Run(e.lab.Attacker().NS, "nmap", args...)
	e.log.Info("nmap done", "scan", s.name, "took", time.Since(t0).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)
	for _, c := range []*netlab.Proc{capA, capH} {
		c.Signal(unix.SIGINT)
		if err := c.Wait(10 * time.Second); err != nil {
			c.Stop()
		}
	}
	if res.nerr != nil {
		return res, nil
	}
	if res.sent, res.sentAt, err = readProbes(aPcap, src); err != nil {
		return res, err
	}
	res.got, res.gotAt, err = readProbes(hPcap, src)
	return res, err
}

// countLeaks finds the trigger (the first probe of proto to a trap port) in what was sent and
// counts the probes that reached the host before it and after it.
func countLeaks(sent, got []pktKey, proto layers.IPProtocol, isTrap func(pktKey) bool) (trigger, before, leakNonTrap, leakAny int) {
	// Probes that share a key (a retransmission with the same IP ID, say) are matched by
	// count: of the copies of a key that reached the host, as many as were sent before the
	// trigger can be those; every further copy was sent after it.
	trigger = -1
	pre := map[pktKey]int{}
	for j, k := range sent {
		if trigger < 0 && k.proto == proto && isTrap(k) {
			trigger = j
		}
		if trigger < 0 {
			pre[k]++
		}
	}
	host := map[pktKey]int{}
	for _, k := range got {
		host[k]++
	}
	for k, n := range host {
		before += min(n, pre[k])
		if trigger < 0 || n <= pre[k] {
			continue
		}
		leakAny += n - pre[k]
		if !isTrap(k) {
			leakNonTrap += n - pre[k]
		}
	}
	return trigger, before, leakNonTrap, leakAny
}

// lastLeak is the time from the trigger probe leaving the attacker to the last non-trap probe
// sent after it reaching the host (copies of a key matched by count, as in countLeaks): how long
// the source still got through. ok is false when nothing leaked.
func lastLeak(res scanResult, trigger int, isTrap func(pktKey) bool) (d time.Duration, ok bool) {
	if trigger < 0 || trigger >= len(res.sentAt) || len(res.gotAt) != len(res.got) {
		return 0, false
	}
	pre := map[pktKey]int{}
	for _, k := range res.sent[:trigger] {
		pre[k]++
	}
	seen := map[pktKey]int{}
	var last time.Time
	for i, k := range res.got {
		seen[k]++
		if seen[k] > pre[k] && !isTrap(k) && res.gotAt[i].After(last) {
			last = res.gotAt[i]
		}
	}
	if last.IsZero() {
		return 0, false
	}
	return last.Sub(res.sentAt[trigger]), true
}

// leakTime formats lastLeak for a table cell.
func leakTime(res scanResult, trigger int, isTrap func(pktKey) bool) string {
	d, ok := lastLeak(res, trigger, isTrap)
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

var openRe = regexp.MustCompile(`(?m)^(\d+)/(tcp|udp)\s+open\s`)

// openPorts lists the ports nmap reported open, sorted.
func openPorts(out string) string {
	var open []string
	for _, m := range openRe.FindAllStringSubmatch(out, -1) {
		open = append(open, m[1]+"/"+m[2])
	}
	sort.Strings(open)
	return strings.Join(open, " ")
}

// startCapture starts tcpdump writing to path and waits until it is capturing.
func (e *env) startCapture(ns, iface, path, filter string) (*netlab.Proc, error) {
	args := []string{"-i", iface, "-n", "-U", "--immediate-mode", "-s", "256", "-w", path}
	if strings.HasPrefix(iface, "nflog:") {
		// NFLOG records carry metadata before the packet; a large socket buffer, so that a
		// burst of probes is not lost between kernel and tcpdump.
		args = []string{"-i", iface, "-n", "-U", "--immediate-mode", "-s", "0", "-B", "32768", "-w", path}
	}
	if filter != "" {
		args = append(args, filter)
	}
	p, err := e.lab.Start(ns, "tcpdump", args...)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(p.Output(), "listening on") {
			return p, nil
		}
		if exited, _ := p.Exited(); exited {
			return nil, fmt.Errorf("tcpdump on %s exited: %s", iface, tail(p.Output()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.Stop()
	return nil, fmt.Errorf("tcpdump on %s did not start: %s", iface, tail(p.Output()))
}
