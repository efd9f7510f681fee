package netlab_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestLabPing(t *testing.T) {
	lab := testutil.NewLab(t)
	for _, peer := range lab.Peers {
		host := lab.HostIface(peer.Role)
		for _, dst := range []netip.Addr{host.Addr4.Addr(), host.Addr6.Addr()} {
			if err := lab.Ping(peer.NS, dst, 2*time.Second); err != nil {
				t.Errorf("%s -> host %s: %v", peer.Role, dst, err)
			}
		}
		// and back from the host
		if err := lab.Ping(lab.Host.NS, peer.Addr6(), 2*time.Second); err != nil {
			t.Errorf("host -> %s %s: %v", peer.Role, peer.Addr6(), err)
		}
	}
}

func TestPingFailsWhenUnreachable(t *testing.T) {
	lab := testutil.NewLab(t)
	// An address in the attacker's subnet that nobody has: no reply, so Ping must fail.
	if err := lab.Ping(lab.Attacker().NS, netip.MustParseAddr("198.18.1.99"), 500*time.Millisecond); err == nil {
		t.Error("Ping to a missing address succeeded")
	}
}

func TestLabNoWayOut(t *testing.T) {
	lab := testutil.NewLab(t)
	for _, n := range lab.Nodes() {
		for _, fam := range []string{"-4", "-6"} {
			out, err := lab.Run(n.NS, "ip", fam, "route", "show", "default")
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(out) != "" {
				t.Errorf("%s has a default route: %s", n.NS, out)
			}
		}
		for _, ifc := range n.Ifaces {
			for _, p := range []netip.Prefix{ifc.Addr4, ifc.Addr6} {
				if !netip.MustParsePrefix("198.18.0.0/15").Contains(p.Addr()) &&
					!netip.MustParsePrefix("2001:db8::/32").Contains(p.Addr()) {
					t.Errorf("%s has address %s outside the test ranges", ifc.Name, p)
				}
			}
		}
	}
	// The attacker cannot reach the client: the host does not forward and there is no route.
	if err := lab.Ping(lab.Attacker().NS, lab.Client().Addr4(), time.Second); err == nil {
		t.Error("attacker reached the client through the host")
	}
}

func TestLabNamesUnique(t *testing.T) {
	a := testutil.NewLab(t)
	b := testutil.NewLab(t)
	if a.Suffix == b.Suffix {
		t.Fatalf("two labs share the suffix %s", a.Suffix)
	}
	seen := map[string]bool{}
	for _, lab := range []*netlab.Lab{a, b} {
		for _, n := range lab.Nodes() {
			if seen[n.NS] {
				t.Errorf("namespace %s used twice", n.NS)
			}
			seen[n.NS] = true
			for _, ifc := range n.Ifaces {
				if seen[ifc.Name] {
					t.Errorf("interface %s used twice", ifc.Name)
				}
				seen[ifc.Name] = true
				if len(ifc.Name) > 15 {
					t.Errorf("interface name %s longer than IFNAMSIZ-1", ifc.Name)
				}
			}
		}
	}
	// Nothing of either lab appears in the test's own namespace.
	for name := range seen {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("%s exists in the caller's namespace", name)
		}
	}
}

func TestLabDo(t *testing.T) {
	lab := testutil.NewLab(t)
	want := lab.HostIface("attacker")
	var got netlink.Link
	err := lab.Do(lab.Host.NS, func() error {
		var err error
		got, err = netlink.LinkByName(want.Name)
		return err
	})
	if err != nil {
		t.Fatalf("look up %s inside %s: %v", want.Name, lab.Host.NS, err)
	}
	if got.Attrs().Index != want.Index || got.Attrs().MTU != 1500 {
		t.Errorf("got index %d mtu %d, want index %d mtu 1500", got.Attrs().Index, got.Attrs().MTU, want.Index)
	}
	// The caller's thread is back where it was.
	if _, err := netlink.LinkByName(want.Name); err == nil {
		t.Errorf("%s visible after Do returned", want.Name)
	}
	// A listener opened inside Do lives in that namespace: the client can reach it.
	var ln net.Listener
	if err := lab.Do(lab.Host.NS, func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(lab.HostIface("client").Addr4.Addr().String(), "8080"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	out, err := lab.Run(lab.Client().NS, "bash", "-c",
		"exec 3<>/dev/tcp/"+lab.HostIface("client").Addr4.Addr().String()+"/8080 && timeout 5 cat <&3")
	if err != nil || out != "hello" {
		t.Errorf("client read %q, %v", out, err)
	}
	// An error from fn is returned.
	sentinel := errors.New("boom")
	if err := lab.Do(lab.Host.NS, func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do returned %v, want %v", err, sentinel)
	}
}

func TestLabCleanup(t *testing.T) {
	testutil.RequireRoot(t)
	lab, err := netlab.New(netlab.Config{Peers: []string{"attacker"}})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := lab.Start(lab.Attacker().NS, "sleep", "600")
	if err != nil {
		lab.Close()
		t.Fatal(err)
	}
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if exited, _ := proc.Exited(); !exited {
		t.Errorf("pid %d still running after Close", proc.PID)
	}
	if err := unix.Kill(proc.PID, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("pid %d: kill -0 gave %v, want ESRCH", proc.PID, err)
	}
	for _, n := range lab.Nodes() {
		if _, err := os.Stat(nsPath(n.NS)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists: %v", nsPath(n.NS), err)
		}
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), lab.Suffix) {
		t.Errorf("ip netns list still shows the lab:\n%s", out)
	}
	// Closing twice is harmless.
	if err := lab.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestLabCleanupAfterGoexit(t *testing.T) {
	testutil.RequireRoot(t)
	var lab *netlab.Lab
	var proc *netlab.Proc
	// A subtest that stops half-way (t.Skip and t.Fatal both end it with runtime.Goexit) still
	// tears its lab down. A real failure cannot be staged without failing this test too.
	t.Run("stops", func(t *testing.T) {
		lab = testutil.NewLab(t, "attacker")
		var err error
		if proc, err = lab.Start(lab.Host.NS, "sleep", "600"); err != nil {
			t.Fatal(err)
		}
		t.Skip("ends the subtest early, as t.Fatal would")
	})
	if lab == nil || proc == nil {
		t.Fatal("subtest did not build its lab")
	}
	if exited, _ := proc.Exited(); !exited {
		t.Errorf("pid %d still running", proc.PID)
	}
	for _, n := range lab.Nodes() {
		if _, err := os.Stat(nsPath(n.NS)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind", n.NS)
		}
	}
}

func TestLabBadConfig(t *testing.T) {
	testutil.RequireRoot(t)
	for _, peers := range [][]string{{"attacker", "attack2"}, {"host"}, {""}, {"a b"}} {
		if lab, err := netlab.New(netlab.Config{Peers: peers}); err == nil {
			lab.Close()
			t.Errorf("New(%q) succeeded", peers)
		}
	}
}

func TestLabStartStop(t *testing.T) {
	lab := testutil.NewLab(t)
	p, err := lab.Start(lab.Host.NS, "sh", "-c", "echo started; ip -o link show; sleep 600")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.Output(), lab.HostIface("attacker").Name) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(p.Output(), lab.HostIface("attacker").Name) {
		t.Fatalf("process did not run in the host namespace: %q", p.Output())
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if exited, _ := p.Exited(); !exited {
		t.Error("not exited after Stop")
	}
}

// nsPath is where ip netns keeps the namespace named ns.
func nsPath(ns string) string { return filepath.Join("/run/netns", ns) }
