package control

import (
	"context"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// listenBoth opens a TCP listener and a UDP socket on loopback (no traffic is sent) and returns
// their ports; both are closed when the test ends.
func listenBoth(t *testing.T, network4or6 string) (tcpPort, udpPort uint16) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network4or6 == "6" {
		addr = "[::1]:0"
	}
	l, err := net.Listen("tcp"+network4or6, addr)
	if err != nil {
		t.Fatalf("listen tcp%s: %v", network4or6, err)
	}
	t.Cleanup(func() { l.Close() })
	u, err := net.ListenPacket("udp"+network4or6, addr)
	if err != nil {
		t.Fatalf("listen udp%s: %v", network4or6, err)
	}
	t.Cleanup(func() { u.Close() })
	return uint16(l.Addr().(*net.TCPAddr).Port), uint16(u.LocalAddr().(*net.UDPAddr).Port)
}

func TestListeningPortsSeesRealSockets(t *testing.T) {
	families := []string{"4"}
	if l, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		l.Close()
		families = append(families, "6")
	} else {
		t.Logf("no IPv6 loopback, testing IPv4 only: %v", err)
	}
	for _, fam := range families {
		t.Run("ipv"+fam, func(t *testing.T) {
			tp, up := listenBoth(t, fam)
			tcp, udp, err := ListeningPorts(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !tcp[tp] {
				t.Errorf("TCP listener on port %d missing from %v", tp, sortedPorts(tcp))
			}
			if !udp[up] {
				t.Errorf("UDP socket on port %d missing from %v", up, sortedPorts(udp))
			}

			// The listening ports never become traps, even when configured or in advanced mode.
			spec := TrapPortSpec{TCP: []uint16{tp, 1}, UDP: []uint16{up, 1}, AdvancedBelow: 1 << 16}
			ttrap, utrap := TrapPorts(spec, tcp, udp)
			if slices.Contains(ttrap, tp) {
				t.Errorf("listening TCP port %d is a trap", tp)
			}
			if slices.Contains(utrap, up) {
				t.Errorf("bound UDP port %d is a trap", up)
			}
		})
	}
}

func TestListeningPortsForgetsClosedSockets(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	tcp, _, err := ListeningPorts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !tcp[port] {
		t.Fatalf("listener on %d not seen", port)
	}
	l.Close()
	tcp, _, err = ListeningPorts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if tcp[port] {
		t.Errorf("closed listener on %d still reported", port)
	}
}

func TestListeningPortsCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := ListeningPorts(ctx); err == nil {
		t.Fatal("want an error from a cancelled context")
	}
}

// The /proc fallback must agree with sock_diag on the real host.
func TestProcNetFallbackSeesRealSockets(t *testing.T) {
	tp, up := listenBoth(t, "4")
	tcp, udp := map[uint16]bool{}, map[uint16]bool{}
	if err := procNetPorts("/proc/net/tcp", true, tcp); err != nil {
		t.Fatal(err)
	}
	if err := procNetPorts("/proc/net/udp", false, udp); err != nil {
		t.Fatal(err)
	}
	if !tcp[tp] || !udp[up] {
		t.Errorf("want tcp %d and udp %d, got tcp %v udp %v", tp, up, sortedPorts(tcp), sortedPorts(udp))
	}
}

func TestParseProcNet(t *testing.T) {
	const table = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1003 1
`
	listen := map[uint16]bool{}
	if err := parseProcNet(strings.NewReader(table), true, listen); err != nil {
		t.Fatal(err)
	}
	if len(listen) != 2 || !listen[53] || !listen[22] {
		t.Errorf("listening: got %v, want [22 53] (8080 is an established connection)", sortedPorts(listen))
	}
	all := map[uint16]bool{}
	if err := parseProcNet(strings.NewReader(table), false, all); err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || !all[8080] {
		t.Errorf("all sockets: got %v, want [22 53 8080]", sortedPorts(all))
	}

	bad := "header\n 0: 0100007F:ZZZZ 00000000:0000 0A\n"
	if err := parseProcNet(strings.NewReader(bad), false, map[uint16]bool{}); err == nil {
		t.Error("bad port: want an error")
	}
}

// sortedPorts lists a port set for messages.
func sortedPorts(m map[uint16]bool) []uint16 {
	return slices.Sorted(maps.Keys(m))
}

// sock_diag is the primary path: make sure it works here rather than silently falling back.
func TestSockDiagSeesRealSockets(t *testing.T) {
	tp, up := listenBoth(t, "4")
	tcp, udp := map[uint16]bool{}, map[uint16]bool{}
	if err := sockDiagPorts(unix.IPPROTO_TCP, unix.AF_INET, 1<<tcpListen, tcp); err != nil {
		t.Fatalf("sock_diag tcp: %v", err)
	}
	if err := sockDiagPorts(unix.IPPROTO_UDP, unix.AF_INET, 0xfff, udp); err != nil {
		t.Fatalf("sock_diag udp: %v", err)
	}
	if !tcp[tp] || !udp[up] {
		t.Errorf("want tcp %d and udp %d, got tcp %v udp %v", tp, up, sortedPorts(tcp), sortedPorts(udp))
	}
}
