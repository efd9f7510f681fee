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

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control"
	"github.com/snare-dev/snare/internal/testutil"
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

// readProbes returns the scanner's packets in a capture, in order.
func readProbes(path string, src netip.Addr) ([]pktKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var out []pktKey
	for {
		data, _, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, nil // a capture cut short by SIGINT ends with a partial record
		}
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.NoCopy)
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
	}
}

func (e *env) sectionDetect() ([]*table, error) {
	t := newTable("Detection: nmap from the attacker namespace against snare's trap ports",
		"scan", "probes sent", "trigger = probe #", "reached the host before the trigger", "reached the host after the trigger (non-trap ports)", "reached the host after the trigger (any)", "target", "result", "blocked by the trap", "nmap says open")
	t.note("snare's program on the host end of the attacker's veth (native XDP), trap detection on with the default port lists and threshold 1. " +
		"tcpdump on the attacker's side records every probe in the order sent; tcpdump on the host's side sees only what XDP passed " +
		"(packet taps run after XDP). Probes are matched across the two captures (IP ID / flow label, port, TCP sequence; copies of one key by count); the trigger is the " +
		"first probe to a trap port; 'before the trigger' shows the host-side capture works. A web server listens on port 80 of the host. portsentry is not installed here: no comparison row.")
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
	tcpTraps, _ := control.ParsePorts(defaultTCPTraps)
	udpTraps, _ := control.ParsePorts(defaultUDPTraps)
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

	hostIf, attIf := e.lab.HostIface("attacker"), e.lab.Attacker().Ifaces[0]
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
	openRe := regexp.MustCompile(`(?m)^(\d+)/(tcp|udp)\s+open\s`)
	for i, s := range scans {
		src, dst := e.lab.Attacker().Addr4(), hostIf.Addr4.Addr()
		if s.v6 {
			src, dst = e.lab.Attacker().Addr6(), hostIf.Addr6.Addr()
		}
		if err := e.snare.Unblock(context.Background(), []netip.Prefix{netip.PrefixFrom(src, src.BitLen())}); err != nil {
			return []*table{t}, err
		}
		time.Sleep(1200 * time.Millisecond) // the scan window passes: fresh state
		aPcap, hPcap := filepath.Join(dir, fmt.Sprintf("a%d.pcap", i)), filepath.Join(dir, fmt.Sprintf("h%d.pcap", i))
		filter := "src host " + src.String()
		capA, err := e.startCapture(e.lab.Attacker().NS, attIf.Name, aPcap, filter)
		if err != nil {
			return []*table{t}, err
		}
		capH, err := e.startCapture(e.lab.Host.NS, hostIf.Name, hPcap, filter)
		if err != nil {
			capA.Stop()
			return []*table{t}, err
		}
		args := append([]string{}, s.flags...)
		args = append(args, "-Pn", "-n", "-T4", "--max-retries", "1", "--max-rtt-timeout", "100ms", "--min-rate", "1000", "--host-timeout", "90s", "-p", ports, dst.String())
		t0 := time.Now()
		out, nerr := e.lab.Run(e.lab.Attacker().NS, "nmap", args...)
		e.log.Info("nmap done", "scan", s.name, "took", time.Since(t0).Round(time.Millisecond))
		time.Sleep(300 * time.Millisecond)
		for _, c := range []*testutil.Proc{capA, capH} {
			c.Signal(unix.SIGINT)
			if err := c.Wait(10 * time.Second); err != nil {
				c.Stop()
			}
		}
		if nerr != nil {
			t.add(s.name, "", "", "", "n/a: "+oneLine(nerr), "", "0", "")
			continue
		}
		sent, err := readProbes(aPcap, src)
		if err != nil {
			return []*table{t}, err
		}
		got, err := readProbes(hPcap, src)
		if err != nil {
			return []*table{t}, err
		}
		// Probes that share a key (a retransmission with the same IP ID, say) are matched by
		// count: of the copies of a key that reached the host, as many as were sent before the
		// trigger can be those; every further copy was sent after it.
		trigger := -1
		pre := map[pktKey]int{}
		for j, k := range sent {
			if trigger < 0 && k.proto == s.proto && isTrap(k) {
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
		leakNonTrap, leakAny, before := 0, 0, 0
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
		blocked := "no"
		if rs, err := e.snare.Rules(context.Background()); err == nil {
			for _, r := range rs {
				if r.Prefix.Contains(src) && r.FromTrap {
					blocked = "yes"
				}
			}
		}
		var open []string
		for _, m := range openRe.FindAllStringSubmatch(out, -1) {
			open = append(open, m[1]+"/"+m[2])
		}
		sort.Strings(open)
		trig := "no trap probe"
		if trigger >= 0 {
			trig = num(float64(trigger + 1))
		}
		t.add(s.name, num(float64(len(sent))), trig, num(float64(before)), num(float64(leakNonTrap)), num(float64(leakAny)), "0",
			passMiss(trigger >= 0 && leakNonTrap == 0), blocked, strings.Join(open, " "))
	}
	return []*table{t}, nil
}

// startCapture starts tcpdump writing to path and waits until it is capturing.
func (e *env) startCapture(ns, iface, path, filter string) (*testutil.Proc, error) {
	p, err := e.lab.Start(ns, "tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-s", "128", "-w", path, filter)
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
