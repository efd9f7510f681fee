package e2e

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control/api"
)

// nmapScan runs a short nmap scan from the attacker namespace and logs its output.
func (e *labEnv) nmapScan(t *testing.T, v6 bool, args ...string) string {
	t.Helper()
	requireTools(t, "nmap")
	all := append([]string{"-n", "-Pn", "-r", "--max-retries", "1", "--host-timeout", "60s"}, args...)
	dst := e.hostFor("attacker", false)
	if v6 {
		all = append(all, "-6", "-S", attackerV6.String(), "-e", e.lab.Attacker().Ifaces[0].Name)
		dst = e.hostFor("attacker", true)
	}
	all = append(all, dst.String())
	out, err := e.lab.Run(e.lab.Attacker().NS, "nmap", all...)
	t.Logf("nmap %s:\n%s", strings.Join(all, " "), out)
	if err != nil {
		t.Fatalf("nmap: %v", err)
	}
	return out
}

// listedByTrap waits for a trap entry covering a.
func listedByTrap(t *testing.T, d *daemon, a netip.Addr) {
	t.Helper()
	if err := eventually(5*time.Second, func() error {
		en := covering(d.list(t), a)
		switch {
		case en == nil:
			return fmt.Errorf("%s not in snarectl list: %v", a, prefixes(d.list(t)))
		case en.Origin != "trap":
			return fmt.Errorf("entry %+v: origin %q, want trap", *en, en.Origin)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// A trap block the XDP program made while no daemon ran, or whose event the daemon never
// handled because it was killed, is adopted into the store on the next start: nothing is lost.
// XDP only: the iptables back-end detects traps in user space (NFLOG), so with no daemon
// running nothing can be trapped there.
func TestTrapAdoptionXDP(t *testing.T) {
	e := newEnv(t, "xdp", options{})
	d := e.d
	ports := "T:" + trapTCPPorts + "," + strconv.Itoa(webPort)

	t.Run("scan while the daemon is stopped", func(t *testing.T) {
		d.stop()
		e.nmapScan(t, false, "-sS", "-p", ports)
		e.dropped(t, e.attackerV4Peer()) // blocked by the data path itself
		e.served(t, e.clientV4Peer())
		d.start()
		listedByTrap(t, d, e.attacker4())
		e.dropped(t, e.attackerV4Peer())
	})

	t.Run("kill -9 right after the scan", func(t *testing.T) {
		e.nmapScan(t, true, "-sS", "-p", ports)
		d.kill9()
		e.dropped(t, e.attackerV6Peer())
		d.start()
		listedByTrap(t, d, attackerV6)
		listedByTrap(t, d, e.attacker4())
		e.dropped(t, e.attackerV6Peer())
		e.served(t, e.clientV6Peer())
	})
}

// trap.tcp_mode log records TCP scans without blocking; UDP (still in block mode) blocks.
func TestTrapLogMode(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{config: map[string]any{"trap.tcp_mode": "log"}})
		d := e.d
		if st := d.status(t); st.Trap.TCPMode != "log" || st.Trap.UDPMode != "block" {
			t.Errorf("status trap modes tcp %q udp %q, want log and block", st.Trap.TCPMode, st.Trap.UDPMode)
		}
		e.nmapScan(t, false, "-sS", "-p", "T:"+trapTCPPorts+","+strconv.Itoa(webPort))
		var ev *api.Event
		if err := eventually(5*time.Second, func() error {
			if ev = findScan(d.events(t), e.attacker4()); ev == nil {
				return fmt.Errorf("no scan event for %s", e.attacker4())
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if ev.Action != "logged" || ev.Proto != "tcp" {
			t.Errorf("scan event %+v: want a logged tcp scan", *ev)
		}
		if l := d.list(t); len(l) != 0 {
			t.Errorf("log mode blocked: %v", prefixes(l))
		}
		e.served(t, e.attackerV4Peer())

		// The same source now scans UDP, which is in block mode, within trap.window: the logged
		// TCP scan must not spend its UDP trigger.
		e.nmapScan(t, false, "-sU", "-p", "U:"+trapUDPPorts)
		listedByTrap(t, d, e.attacker4())
		if t.Failed() {
			t.Logf("UDP scan (udp_mode block) after a logged TCP scan did not block; trap status %+v; events:\n%s",
				d.status(t).Trap, d.mustCtl(t, "events"))
		}
		e.dropped(t, e.attackerV4Peer())
		e.served(t, e.clientV4Peer())
	})
}

// Advanced mode: every port below trap.advanced_below that nothing listens on is a trap, minus
// trap.exclude; a port that starts listening stops being a trap, and one that stops listening
// becomes one again, while the daemon runs.
func TestTrapPortsFollowListeners(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{config: map[string]any{
			"trap.advanced_below": 1024,
			"trap.exclude":        "22",
		}})
		d := e.d
		const service, unused = 443, 444

		trapPorts := func() []uint16 {
			ports, err := input.ParsePorts(d.status(t).Trap.TCPPorts)
			if err != nil {
				t.Fatalf("status trap tcp_ports: %v", err)
			}
			return ports
		}
		// A service starts listening on 443 in the host namespace.
		var ln net.Listener
		if err := e.lab.Do(e.lab.Host.NS, func() error {
			var err error
			ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", service))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, "service ok\n")
				c.Close()
			}
		}()
		defer ln.Close()
		if err := eventually(5*time.Second, func() error {
			ports := trapPorts()
			if slices.Contains(ports, service) || !slices.Contains(ports, unused) || slices.Contains(ports, 22) ||
				!slices.Contains(ports, 1) || slices.Contains(ports, webPort) {
				return fmt.Errorf("trap tcp ports %s: want 1-1023 without %d (listening) and 22 (excluded)",
					input.FormatPorts(ports), service)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}

		// The client uses the service and is not blocked.
		dial := func(ns string, port int, timeout time.Duration) error {
			return e.lab.Do(ns, func() error {
				c, err := net.DialTimeout("tcp", netip.AddrPortFrom(e.hostFor("client", false), uint16(port)).String(), timeout)
				if err == nil {
					c.Close()
				}
				return err
			})
		}
		if err := dial(e.lab.Client().NS, service, 2*time.Second); err != nil {
			t.Fatalf("client to the service on %d: %v", service, err)
		}
		// The attacker probes a port nothing listens on: blocked.
		e.nmapScan(t, false, "-sS", "-p", strconv.Itoa(unused))
		listedByTrap(t, d, e.attacker4())
		e.dropped(t, e.attackerV4Peer())
		if l := d.list(t); len(l) != 1 {
			t.Errorf("list %v: want only the attacker", prefixes(l))
		}

		// The service stops: its port is a trap again, so the next connection to it is trapped.
		ln.Close()
		if err := eventually(5*time.Second, func() error {
			if !slices.Contains(trapPorts(), service) {
				return fmt.Errorf("port %d not a trap after its listener closed", service)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		dial(e.lab.Client().NS, service, time.Second)
		listedByTrap(t, d, e.client4())
	})
}
