package e2e

import (
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/input"
)

// Every config key can come from SNARE_* environment variables, for snared and snarectl alike.
func TestEnvironmentConfig(t *testing.T) {
	requireBinaries(t)
	dir := t.TempDir()
	cmd := exec.Command(bins.snared, "--check-config")
	cmd.Env = append(cleanEnv()[1:], "SNARE_BLOCK_TTL=36h", "SNARE_TRAP_TCP_PORTS=79,31337",
		"SNARE_STATE_DIR="+dir, "SNARE_INTERFACES=lo")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("snared --check-config with SNARE_* settings: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "36h") && !strings.Contains(string(out), "1d12h") {
		t.Errorf("merged config does not show block.ttl 36h:\n%s", out)
	}
	for _, want := range []string{"79,31337", dir} {
		if !strings.Contains(string(out), want) {
			t.Errorf("merged config does not show %s:\n%s", want, out)
		}
	}
	cmd = exec.Command(bins.snared, "--check-config")
	cmd.Env = append(cleanEnv()[1:], "SNARE_BLOCK_TTL=-3h")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "-3h") {
		t.Errorf("SNARE_BLOCK_TTL=-3h: err %v, want a refusal naming the value:\n%s", err, out)
	}
}

// snarectl finds the daemon through SNARE_SOCKET.
func TestSnarectlSocketFromEnvironment(t *testing.T) {
	e := newEnv(t, "xdp", options{})
	cmd := exec.Command(bins.snarectl, "block", e.attacker4().String())
	cmd.Env = append(cleanEnv()[1:], "SNARE_SOCKET="+e.d.socket)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("snarectl with SNARE_SOCKET: %v\n%s", err, out)
	}
	if find(e.d.list(t), host32(e.attacker4())) == nil {
		t.Errorf("block through SNARE_SOCKET not listed")
	}
}

// A configured trap port that a service listens on is not a trap: its clients are never blocked.
func TestTrapNeverAListeningPort(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{noStart: true})
		const port = 143 // in the suite's trap.tcp_ports
		var ln net.Listener
		if err := e.lab.Do(e.lab.Host.NS, func() error {
			var err error
			ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, "imap\n")
				c.Close()
			}
		}()
		e.d.start()
		ports, err := input.ParsePorts(e.d.status(t).Trap.TCPPorts)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(ports, port) || !slices.Contains(ports, 79) {
			t.Fatalf("trap tcp ports %v: want 79 but not %d (a service listens there)", ports, port)
		}
		for i := 0; i < 3; i++ {
			if err := e.lab.Do(e.lab.Client().NS, func() error {
				c, err := net.DialTimeout("tcp", net.JoinHostPort(e.hostFor("client", false).String(), strconv.Itoa(port)), 2*time.Second)
				if err == nil {
					c.Close()
				}
				return err
			}); err != nil {
				t.Fatalf("client to the service on %d: %v", port, err)
			}
		}
		time.Sleep(500 * time.Millisecond) // a (wrong) trap event would have arrived by now
		if l := e.d.list(t); len(l) != 0 {
			t.Errorf("blocked for using a listening service: %v", prefixes(l))
		}
		e.served(t, e.clientV4Peer())
	})
}

// --xdp-mode generic attaches in generic (skb) mode and enforces all the same.
func TestXDPGenericMode(t *testing.T) {
	e := newEnv(t, "xdp", options{noStart: true})
	e.d.extra = []string{"--xdp-mode", "generic"}
	e.d.start()
	st := e.d.status(t)
	for _, ifc := range st.Interfaces {
		if ifc.Mode != "generic" {
			t.Errorf("interface %+v, want generic", ifc)
		}
	}
	for _, ifc := range e.lab.HostIfaceNames() {
		out, err := e.lab.Run(e.lab.Host.NS, "ip", "link", "show", "dev", ifc)
		if err != nil || !strings.Contains(out, "xdpgeneric") {
			t.Errorf("%s not in generic XDP mode: %v\n%s", ifc, err, out)
		}
	}
	e.d.mustCtl(t, "block", e.attacker4().String())
	e.dropped(t, e.attackerV4Peer())
	e.served(t, e.clientV4Peer())
}
