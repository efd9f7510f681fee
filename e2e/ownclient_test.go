package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// udpEcho answers every datagram to addr inside namespace ns until the test ends.
func (e *labEnv) udpEcho(ns string, addr netip.AddrPort) {
	e.t.Helper()
	var conn *net.UDPConn
	if err := e.lab.Do(ns, func() error {
		var err error
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		e.t.Fatalf("udp server at %s in %s: %v", addr, ns, err)
	}
	e.t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// udpAsk sends one datagram from local to remote inside namespace ns and reports whether the
// answer came back (three tries, each waiting up to 500 ms).
func (e *labEnv) udpAsk(ns string, local, remote netip.AddrPort) error {
	var conn *net.UDPConn
	if err := e.lab.Do(ns, func() error {
		var err error
		conn, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(local), net.UDPAddrFromAddrPort(remote))
		return err
	}); err != nil {
		return fmt.Errorf("udp socket %s -> %s: %w", local, remote, err)
	}
	defer conn.Close()
	buf := make([]byte, 64)
	for range 3 {
		if _, err := conn.Write([]byte("snare-e2e")); err != nil {
			return err
		}
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, err := conn.Read(buf); err == nil && string(buf[:n]) == "snare-e2e" {
			return nil
		}
	}
	return fmt.Errorf("no answer from %s to %s", remote, local)
}

// The host's own UDP client traffic never trips a trap: replies to a socket the host opened on an
// ephemeral port arrive at that port, which may be one of portsentry's trap ports (32770-32774,
// 34555, 37444, 54321 lie in Linux's default range). Ports inside the range are no traps even when
// listed; the server answering the host stays reachable. A real probe of a trap port outside the
// range still blocks.
func TestOwnUDPClientNeverTrips(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{noStart: true, config: map[string]any{
			"trap.udp_ports": trapUDPPorts + ",32771,54321",
		}})
		if _, err := e.lab.Run(e.lab.Host.NS, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=32768 60999"); err != nil {
			t.Fatal(err)
		}
		e.d.start()
		for _, v6 := range []bool{false, true} {
			server := e.client4()
			if v6 {
				server = e.client6()
			}
			host := e.hostFor("client", v6)
			ntp := netip.AddrPortFrom(server, 123)
			e.udpEcho(e.lab.Client().NS, ntp)
			for _, port := range []uint16{32771, 54321, 40000} {
				if err := e.udpAsk(e.lab.Host.NS, netip.AddrPortFrom(host, port), ntp); err != nil {
					t.Errorf("host's own udp client on port %d: %v", port, err)
				}
			}
			if en := find(e.d.list(t), host32(server)); en != nil {
				t.Errorf("%s blocked by a reply to the host's own client: %+v", server, *en)
			}
		}
		for _, ev := range e.d.events(t) {
			if ev.Event == "scan" && (ev.Address == e.client4().String() || ev.Address == e.client6().String()) {
				t.Errorf("a reply to the host's own client was taken for a scan: %+v", ev)
			}
		}

		// The trap itself works in this lab: a probe of UDP port 7 blocks the attacker.
		if err := e.udpAsk(e.lab.Attacker().NS, netip.AddrPortFrom(e.attacker4(), 0),
			netip.AddrPortFrom(e.hostFor("attacker", false), 7)); err == nil {
			t.Error("udp/7 answered: nothing should listen there")
		}
		if err := eventually(5*time.Second, func() error {
			if find(e.d.list(t), host32(e.attacker4())) == nil {
				return errors.New("attacker not blocked by its probe of udp/7")
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		if got := e.d.status(t).Trap.UDPPorts; got != trapUDPPorts {
			t.Errorf("udp trap ports in force %q, want %q (the listed ports inside the ephemeral range left out)", got, trapUDPPorts)
		}
	})
}
