package main

import (
	"fmt"
	"os/exec"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// xdp-filter pins its maps under /sys/fs/bpf/xdp-filter, one fixed path for the whole machine.
// It runs here in a private mount namespace with its own bpffs, so neither its pins nor
// anyone else's can collide; the program stays attached (libxdp attaches over netlink) and is
// reached through the interface's program ID afterwards.

// xdpFilterLoad attaches xdp-filter (IP features only, default allow) to the DUT interface in
// the given mode with the attacker as its first entry and returns the attached program and its
// IPv4 map.
func (e *env) xdpFilterLoad(mode string) (*ebpf.Program, *ebpf.Map, error) {
	if _, err := exec.LookPath("xdp-filter"); err != nil {
		return nil, nil, fmt.Errorf("xdp-filter not installed (Debian package xdp-tools)")
	}
	xm := "native"
	if mode == "generic" {
		xm = "skb"
	}
	script := fmt.Sprintf("mount -t bpf bpf /sys/fs/bpf && xdp-filter load %s --mode %s -f ipv4,ipv6 && xdp-filter ip %s --mode src",
		e.dut.Name, xm, attacker)
	if _, err := cmdOut(runTimeout, "nsenter", "--net="+filepath.Join("/run/netns", e.lab.Host.NS), "--",
		"unshare", "--mount", "--propagation", "private", "sh", "-c", script); err != nil {
		return nil, nil, err
	}
	var id uint32
	if err := e.lab.Do(e.lab.Host.NS, func() error {
		nl, err := netlink.LinkByName(e.dut.Name)
		if err != nil {
			return err
		}
		if nl.Attrs().Xdp == nil || nl.Attrs().Xdp.ProgId == 0 {
			return fmt.Errorf("xdp-filter left no program on %s", e.dut.Name)
		}
		id = nl.Attrs().Xdp.ProgId
		return nil
	}); err != nil {
		e.xdpDetach()
		return nil, nil, err
	}
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		e.xdpDetach()
		return nil, nil, err
	}
	m, err := findMap(prog, "filter_ipv4")
	if err != nil {
		prog.Close()
		e.xdpDetach()
		return nil, nil, err
	}
	return prog, m, nil
}

// findMap finds a map by name among the maps of prog or, for a libxdp dispatcher, of the
// programs it calls (those are not listed; the dispatcher's own maps are searched, then every
// map in the system with that name that was created after prog).
func findMap(prog *ebpf.Program, name string) (*ebpf.Map, error) {
	info, err := prog.Info()
	if err != nil {
		return nil, err
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		if m, err := ebpf.NewMapFromID(id); err == nil {
			if mi, err := m.Info(); err == nil && mi.Name == name {
				return m, nil
			}
			m.Close()
		}
	}
	// The dispatcher holds no reference to its component's maps: take the newest map with
	// that name (just created by our xdp-filter load).
	var newest *ebpf.Map
	var newestID ebpf.MapID
	for id := ebpf.MapID(0); ; {
		next, err := ebpf.MapGetNextID(id)
		if err != nil {
			break
		}
		id = next
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		mi, err := m.Info()
		if err != nil || mi.Name != name || id < newestID {
			m.Close()
			continue
		}
		if newest != nil {
			newest.Close()
		}
		newest, newestID = m, id
	}
	if newest == nil {
		return nil, fmt.Errorf("map %s of xdp-filter not found", name)
	}
	return newest, nil
}

// xdpDetach removes whatever XDP program is attached to the DUT interface (xdp-filter's).
func (e *env) xdpDetach() {
	for _, mode := range []string{"xdpdrv", "xdpgeneric"} {
		_, _ = e.lab.Run(e.lab.Host.NS, "ip", "link", "set", "dev", e.dut.Name, mode, "off")
	}
}

// xdpFilterFill fills xdp-filter's IPv4 map (a per-CPU hash of at most 10,000 entries) with n
// sources, the attacker last, as `xdp-filter ip ADDR --mode src` writes them.
func xdpFilterFill(m *ebpf.Map, n int) error {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	for _, a := range blockList(n) {
		b := a.As4()
		key := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		vals := make([]uint64, ncpu)
		for i := range vals {
			vals[i] = 1 // MAP_FLAG_SRC
		}
		if err := m.Put(key, vals); err != nil {
			return fmt.Errorf("xdp-filter map: put %s: %w", a, err)
		}
	}
	return nil
}

// xdpFilterTestRun times xdp-filter as attached (the libxdp dispatcher plus the filter) on a
// blocked and a passing packet, with 1 and 10,000 entries.
func (e *env) xdpFilterTestRun(repeat, rounds int) ([][]string, error) {
	prog, m, err := e.xdpFilterLoad("native")
	if err != nil {
		return nil, err
	}
	defer e.xdpDetach()
	defer prog.Close()
	defer m.Close()
	var rows [][]string
	for _, n := range []int{1, 10000} {
		if n > 1 {
			if err := xdpFilterFill(m, n); err != nil {
				return rows, err
			}
		}
		for _, p := range []probe{{name: "blocked v4 (exact)", pkt: udp4(attacker)}, {name: "not blocked, passes", pkt: udp4(passSrc)}} {
			v, d, err := benchProg(prog, p.pkt, repeat, rounds)
			if err != nil {
				return rows, err
			}
			rows = append(rows, []string{"xdp-filter (ipv4,ipv6 features; dispatcher)", num(float64(n)), p.name, v, fmt.Sprintf("%.0f", d), ""})
		}
	}
	return rows, nil
}
