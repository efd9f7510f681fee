package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
)

// `snared uninstall` removes everything from the host (program, pins, chains, sets) but keeps the
// store: a later start restores the blocks, as after a reboot.
func TestUninstall(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{})
		d := e.d
		d.mustCtl(t, "block", e.attacker4().String(), "--ttl", "1h")
		d.mustCtl(t, "block", attackerV6.String(), "--ttl", "permanent")
		d.mustCtl(t, "block", "198.18.66.0/24", "--ttl", "3d", "--reason", "net")
		want := snapshot(d.list(t))
		e.dropped(t, e.attackerV4Peer())

		// Refused while the daemon runs.
		if r := runIn(e.lab.Host.NS, bins.snared, append([]string{"uninstall"}, d.args()...)...); r.code == 0 {
			t.Errorf("uninstall succeeded with the daemon running: %v", r)
		}
		e.dropped(t, e.attackerV4Peer())

		d.stop()
		if r := runIn(e.lab.Host.NS, bins.snared, append([]string{"uninstall"}, d.args()...)...); r.code != 0 {
			t.Fatalf("%v", r)
		}
		e.served(t, e.attackerV4Peer())
		for _, ifc := range e.lab.HostIfaceNames() {
			out, err := e.lab.Run(e.lab.Host.NS, "ip", "link", "show", "dev", ifc)
			if err != nil || strings.Contains(out, "xdp") || strings.Contains(out, "prog/xdp") {
				t.Errorf("%s after uninstall: %v\n%s", ifc, err, out)
			}
		}
		if pins := readDirNames(d.bpffs); len(pins) > 0 {
			t.Errorf("pins left in %s: %v", d.bpffs, pins)
		}
		for _, cmd := range [][]string{{"iptables", "-t", "raw", "-S"}, {"ip6tables", "-t", "raw", "-S"}, {"ipset", "list", "-n"}} {
			out, err := e.lab.Run(e.lab.Host.NS, cmd[0], cmd[1:]...)
			if err != nil {
				t.Errorf("%v", err)
			}
			if strings.Contains(strings.ToLower(out), "snare") {
				t.Errorf("%s after uninstall still shows snare:\n%s", strings.Join(cmd, " "), out)
			}
		}

		// The store was kept: a new start restores every block with its deadline, as after a
		// reboot (which also wipes pins, sets and rules).
		d.start()
		if got := snapshot(d.list(t)); got != want {
			t.Errorf("blocks after uninstall and start:\n%s\nwant:\n%s", got, want)
		}
		e.dropped(t, e.attackerV4Peer())
		e.dropped(t, e.attackerV6Peer())
		e.served(t, e.clientV4Peer())
	})
}

// With --backend auto, an interface where XDP cannot attach (another program holds it) makes
// snared fall back to iptables, say why, and still block.
func TestAutoFallback(t *testing.T) {
	requireFallback(t)
	e := newEnv(t, "auto", options{noStart: true})
	// Another XDP program, attached the old way (netlink), owns the interface: snare's link
	// attach fails in native and in generic mode.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "other_xdp", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}, // XDP_PASS
	})
	if err != nil {
		t.Fatalf("load a pass-all XDP program: %v", err)
	}
	defer prog.Close()
	ifc := e.lab.HostIface("attacker").Name
	if err := e.lab.Do(e.lab.Host.NS, func() error {
		l, err := netlink.LinkByName(ifc)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFd(l, prog.FD())
	}); err != nil {
		t.Fatalf("attach the other program to %s: %v", ifc, err)
	}

	e.d.start()
	st := e.d.status(t)
	if st.Backend != "iptables" || st.Fallback == "" {
		t.Fatalf("status backend %q fallback %q, want iptables with a reason", st.Backend, st.Fallback)
	}
	if text := e.d.mustCtl(t, "status"); !strings.Contains(text, "iptables") {
		t.Errorf("snarectl status does not show the fallback:\n%s", text)
	}
	if !strings.Contains(strings.ToLower(e.d.proc.Output()), "fall") {
		t.Errorf("snared's log does not say it fell back:\n%s", e.d.proc.Output())
	}
	e.d.mustCtl(t, "block", e.attacker4().String())
	e.dropped(t, e.attackerV4Peer())
	e.served(t, e.clientV4Peer())
}

// Someone flushes snare's iptables chain and its sets: the daemon notices and repairs them.
func TestFirewallFlushRepaired(t *testing.T) {
	requireFallback(t)
	e := newEnv(t, "iptables", options{config: map[string]any{"sweep.interval": "2s"}})
	d := e.d
	d.mustCtl(t, "block", e.attacker4().String(), "--ttl", "1h")
	e.dropped(t, e.attackerV4Peer())

	raw, err := e.lab.Run(e.lab.Host.NS, "iptables", "-t", "raw", "-S")
	if err != nil {
		t.Fatal(err)
	}
	var chains []string
	for _, l := range strings.Split(raw, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "-N" && strings.Contains(strings.ToLower(f[1]), "snare") {
			chains = append(chains, f[1])
		}
	}
	if len(chains) == 0 {
		t.Fatalf("no snare chain in the raw table:\n%s", raw)
	}
	for _, c := range chains {
		if _, err := e.lab.Run(e.lab.Host.NS, "iptables", "-t", "raw", "-F", c); err != nil {
			t.Fatal(err)
		}
	}
	sets, err := e.lab.Run(e.lab.Host.NS, "ipset", "list", "-n")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range strings.Fields(sets) {
		if strings.Contains(strings.ToLower(s), "snare") {
			if _, err := e.lab.Run(e.lab.Host.NS, "ipset", "flush", s); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.httpGet(e.lab.Attacker().NS, e.attacker4(), e.hostFor("attacker", false)); err != nil {
		t.Fatalf("flushing chains %v and sets did not lift the block (%v): the test proves nothing", chains, err)
	}
	if err := eventually(20*time.Second, func() error {
		if e.httpGet(e.lab.Attacker().NS, e.attacker4(), e.hostFor("attacker", false)) == nil {
			return fmt.Errorf("attacker still served after the flush")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	e.dropped(t, e.attackerV4Peer())
	if find(d.list(t), host32(e.attacker4())) == nil {
		t.Errorf("block gone from the list: %v", prefixes(d.list(t)))
	}
}
