package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/internal/netlab"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/loader"
)

// Addresses. On the wire only 198.18.0.0/15 and 2001:db8::/32; block-list filler comes from
// 240.0.0.0/8 (reserved), which is never sent from or to.
var (
	attacker  = netip.MustParseAddr("198.18.255.254") // in every block list, inserted last
	attacker6 = netip.MustParseAddr("2001:db8:bad::1")
	block6    = netip.MustParsePrefix("2001:db8:bad::/64")
	randBase  = netip.MustParseAddr("198.19.0.0") // random sources: 198.19.0.0/16, all blocked
	randBits  = 16
	cidrBlock = netip.MustParsePrefix("198.18.64.0/20")
	cidrSrc   = netip.MustParseAddr("198.18.70.1")
	passSrc   = netip.MustParseAddr("198.18.200.1") // never blocked
	fillBase  = netip.MustParseAddr("240.0.0.0")
)

const (
	dummyIface = "snb0"  // idle veth in the lab's host namespace: where the loader attaches (generic)
	passPort   = 5000    // not a trap port
	trapPort   = 31337   // a default TCP trap port
	capacity   = 1000000 // snare's block.capacity
)

// Trap ports: portsentry's classic lists, given to snare and to portsentry alike so both watch the
// same ports. (snare's own defaults leave out the ports inside the ephemeral range.)
const (
	defaultTCPTraps = "1,11,15,79,111,119,143,540,635,1080,1524,2000,5742,6667,12345,12346,20034,27665,31337,32771-32774,40421,49724,54320"
	defaultUDPTraps = "1,7,9,69,161,162,513,635,640,641,700,31335,31337,32770-32774,34555,37444,54321"
)

// env is the benchmark's lab: namespaces "host" (the device under test), "gen" (the traffic
// generator), "attacker" and "client", a loaded snare (loader.Open on a dummy interface in the
// host namespace, generic mode) whose program the sections attach where they need it.
type env struct {
	quick  bool
	log    *slog.Logger
	lab    *netlab.Lab
	pinDir string
	snare  *loader.XDP
	prog   *ebpf.Program // snare's XDP program (the one the loader loaded)
	dut    netlab.Iface
	gen    netlab.Iface

	mu       sync.Mutex
	cleanups []func() error // labs of their own that sections built, torn down by close too
}

// onClose has close tear down what a section built beside the lab (also on Ctrl-C, when the
// section does not get to do it itself). fn must be safe to call twice.
func (e *env) onClose(fn func() error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cleanups = append(e.cleanups, fn)
}

func setup(quick bool, log *slog.Logger) (*env, error) {
	if err := netlab.EnsureBPFFS(); err != nil {
		return nil, err
	}
	lab, err := netlab.New(netlab.Config{Peers: []string{"gen", "attacker", "client"}})
	if err != nil {
		return nil, err
	}
	e := &env{quick: quick, log: log, lab: lab, dut: lab.HostIface("gen"), gen: lab.Peer("gen").Ifaces[0]}
	if err := e.init(); err != nil {
		return e, err
	}
	return e, nil
}

func (e *env) init() error {
	e.log.Info("lab ready\n" + e.lab.String())
	host := e.lab.Host.NS
	// The DUT end must take XDP_REDIRECTed frames even with no XDP program: GRO gives it a NAPI.
	if err := e.lab.SetGRO(host, e.dut.Name, true); err != nil {
		return err
	}
	// A veth pair of its own (this kernel has no dummy driver), carrying no traffic.
	if _, err := e.lab.Run(host, "ip", "link", "add", dummyIface, "type", "veth", "peer", "name", dummyIface+"p"); err != nil {
		return err
	}
	if _, err := e.lab.Run(host, "ip", "link", "set", dummyIface, "up"); err != nil {
		return err
	}
	e.pinDir = filepath.Join(netlab.BPFFSRoot, "snare-bench-"+e.lab.Suffix)
	if err := e.lab.Do(host, func() error {
		x, err := loader.Open(loader.Options{Interfaces: []string{dummyIface}, Mode: "generic", PinDir: e.pinDir, Capacity: capacity})
		if err != nil {
			return fmt.Errorf("open snare: %w", err)
		}
		e.snare = x
		nl, err := netlink.LinkByName(dummyIface)
		if err != nil {
			return err
		}
		if nl.Attrs().Xdp == nil || nl.Attrs().Xdp.ProgId == 0 {
			return fmt.Errorf("no xdp program on %s after loader.Open", dummyIface)
		}
		e.prog, err = ebpf.NewProgramFromID(ebpf.ProgramID(nl.Attrs().Xdp.ProgId))
		return err
	}); err != nil {
		return err
	}
	ctx := context.Background()
	// What the daemon always has: an allowlist (loopback, own addresses, gateway) and traps on.
	allow := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("198.18.1.1/32"), netip.MustParsePrefix("198.18.2.1/32"), netip.MustParsePrefix("198.18.3.0/24")}
	if err := e.snare.SetAllow(ctx, allow); err != nil {
		return err
	}
	return e.setTrap(true)
}

// setTrap turns trap detection on (default ports, threshold 1, block mode) or off.
func (e *env) setTrap(on bool) error {
	cfg := backend.TrapConfig{Threshold: 1, Window: time.Minute, TTL: 5 * 24 * time.Hour,
		BlockTCP: true, BlockUDP: true, EventsPerSecond: 200, EventBurst: 500}
	if on {
		var err error
		if cfg.TCPPorts, err = input.ParsePorts(defaultTCPTraps); err != nil {
			return err
		}
		if cfg.UDPPorts, err = input.ParsePorts(defaultUDPTraps); err != nil {
			return err
		}
	}
	return e.snare.SetTrap(context.Background(), cfg)
}

// blockList returns n IPv4 addresses: filler first, then as much of the random-source range
// as fits, and the attacker last (an LRU map evicts the oldest first: only filler may go).
func blockList(n int) []netip.Addr {
	if n < 1 {
		return nil
	}
	nr := min(n-1, 1<<randBits)
	nf := n - 1 - nr
	out := make([]netip.Addr, 0, n)
	f := fillBase.As4()
	base := uint32(f[0])<<24 | uint32(f[1])<<16 | uint32(f[2])<<8 | uint32(f[3])
	for i := 0; i < nf; i++ {
		v := base + uint32(i)
		out = append(out, netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}))
	}
	r := randBase.As4()
	for i := 0; i < nr; i++ {
		out = append(out, netip.AddrFrom4([4]byte{r[0], r[1], byte(i >> 8), byte(i)}))
	}
	return append(out, attacker)
}

func rules(addrs []netip.Addr, deadline time.Time) []backend.Rule {
	out := make([]backend.Rule, len(addrs))
	for i, a := range addrs {
		out[i] = backend.Rule{Prefix: netip.PrefixFrom(a, a.BitLen()), Deadline: deadline}
	}
	return out
}

// attach attaches prog to the DUT interface in the given mode ("native" or "generic") and
// returns a function that detaches it.
func (e *env) attach(prog *ebpf.Program, mode string) (func(), error) {
	return e.attachTo(prog, e.dut, mode)
}

// attachTo attaches prog to one of the host namespace's interfaces.
func (e *env) attachTo(prog *ebpf.Program, ifc netlab.Iface, mode string) (func(), error) {
	flags := link.XDPDriverMode
	if mode == "generic" {
		flags = link.XDPGenericMode
	}
	var l link.Link
	err := e.lab.Do(e.lab.Host.NS, func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: flags})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach xdp (%s) to %s: %w", mode, ifc.Name, err)
	}
	return func() { l.Close() }, nil
}

// xdpMode reads what is attached to the DUT interface.
func (e *env) xdpMode() string {
	out, err := e.lab.Run(e.lab.Host.NS, "ip", "-d", "link", "show", e.dut.Name)
	if err != nil {
		return "?"
	}
	switch {
	case strings.Contains(out, " xdpgeneric "):
		return "generic"
	case strings.Contains(out, " xdp ") || strings.Contains(out, " xdpdrv "):
		return "native"
	}
	return "none"
}

// ethtoolStat reads one counter of `ethtool -S` in a namespace.
func (e *env) ethtoolStat(ns, iface, name string) (uint64, error) {
	out, err := e.lab.Run(ns, "ethtool", "-S", iface)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && k == name {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in ethtool -S %s", name, iface)
}

func (e *env) close() error {
	var errs []error
	e.mu.Lock()
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		if err := e.cleanups[i](); err != nil {
			errs = append(errs, err)
		}
	}
	e.mu.Unlock()
	if e.snare != nil {
		e.snare.Close()
	}
	if e.prog != nil {
		e.prog.Close()
	}
	if e.lab != nil {
		if err := e.lab.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if e.pinDir != "" {
		if err := loader.Remove(e.pinDir, nil); err != nil {
			errs = append(errs, err)
		}
		os.RemoveAll(e.pinDir)
	}
	return errors.Join(errs...)
}

// cmdOut runs a command (already wrapped for a namespace if needed) with a timeout.
func cmdOut(timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
