// Package netlab builds a lab of network namespaces joined by veth pairs, in which real traffic,
// real scanners and the real daemon can run without touching the machine's own network. The
// privileged tests use it through testutil.NewLab, the benchmark harness in bench/ directly: it
// does not import package testing, so it is not linked into the bench with it.
package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/internal/nsrun"
)

// The lab is a star: one "host" namespace (the protected host, where snared and its interfaces
// live) and one namespace per peer role ("attacker", "client", ...), each joined to the host by
// its own veth pair:
//
//	[attacker] atta-SFX ---- veth ---- h-atta-SFX [host] h-clie-SFX ---- veth ---- clie-SFX [client]
//	198.18.1.2/24                       198.18.1.1/24    198.18.2.1/24               198.18.2.2/24
//	2001:db8:1::2/64                 2001:db8:1::1/64    2001:db8:2::1/64            2001:db8:2::2/64
//
// Peer number i (from 1) gets 198.18.i.0/24 and 2001:db8:i::/64; the host is .1 / ::1 on each
// link and the peer .2 / ::2. Only connected routes exist: no namespace has a default route, so
// nothing can leave the lab, and spoofed sources (198.18.0.0/15, 2001:db8::/32) get no answer.
//
// What native XDP on these veths needs (documented because every XDP test trips on it):
//   - Attach: veth supports native (driver) XDP as long as the MTU leaves room for the XDP
//     headroom in one page; 1500 (the lab's default) is fine, jumbo MTUs fail with ERANGE.
//   - Receiving XDP_REDIRECTed frames (ndo_xdp_xmit, e.g. from a BPF_PROG_TEST_RUN live-frames
//     generator): the receiving veth end needs its NAPI, which exists only when that end has an
//     XDP program attached or GRO enabled (SetGRO). Otherwise redirected frames are dropped and
//     counted as xdp_xmit errors on the sender.
//   - Traffic sent by a peer's own stack (ping, nmap, hping3) reaches an XDP program on the host
//     end natively with no extra setup.
//
// rp_filter is off in every namespace and IPv6 duplicate address detection is disabled (sysctl
// accept_dad=0 before the links exist, and nodad on every address), so all addresses are usable
// the moment New returns.

// Iface is one end of a veth pair.
type Iface struct {
	NS    string // network namespace the interface lives in
	Name  string
	Index int
	MAC   net.HardwareAddr
	Addr4 netip.Prefix // e.g. 198.18.1.1/24
	Addr6 netip.Prefix // e.g. 2001:db8:1::1/64
	Peer  string       // role of the node at the other end
}

// Node is one network namespace of the lab.
type Node struct {
	Role   string // "host", "attacker", "client", ...
	NS     string // name under /run/netns, unique per lab ("snare-<role>-<suffix>")
	Ifaces []Iface
}

// Addr4 is the node's IPv4 address on its first interface (for a peer: its only one).
func (n *Node) Addr4() netip.Addr { return n.Ifaces[0].Addr4.Addr() }

// Addr6 is the node's IPv6 address on its first interface.
func (n *Node) Addr6() netip.Addr { return n.Ifaces[0].Addr6.Addr() }

// Config chooses the lab's shape.
type Config struct {
	// Peers are the roles of the namespaces joined to the host, each by its own veth pair
	// (default: "attacker", "client"). The first four characters of each role must differ.
	Peers []string
	// MTU of every veth (default 1500, which allows native XDP on veth).
	MTU int
}

// Lab is a set of network namespaces built by New. All methods are safe for concurrent use.
type Lab struct {
	Suffix string // random, part of every namespace and interface name
	Host   *Node
	Peers  []*Node

	mu    sync.Mutex
	procs []*Proc
}

// New builds a lab. On error everything already created is removed again. The caller must call
// Close.
func New(cfg Config) (*Lab, error) {
	if len(cfg.Peers) == 0 {
		cfg.Peers = []string{"attacker", "client"}
	}
	if len(cfg.Peers) > 250 {
		return nil, fmt.Errorf("at most 250 peers, got %d", len(cfg.Peers))
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	short := map[string]bool{}
	for _, role := range cfg.Peers {
		if role == "" || role == "host" || strings.ContainsAny(role, " /") {
			return nil, fmt.Errorf("bad peer role %q", role)
		}
		if short[abbrev(role)] {
			return nil, fmt.Errorf("peer roles must differ in their first 4 characters: %q", role)
		}
		short[abbrev(role)] = true
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("random suffix: %w", err)
	}
	lab := &Lab{Suffix: hex.EncodeToString(b[:])}
	lab.Host = &Node{Role: "host", NS: "snare-host-" + lab.Suffix}
	for _, role := range cfg.Peers {
		lab.Peers = append(lab.Peers, &Node{Role: role, NS: "snare-" + role + "-" + lab.Suffix})
	}
	if err := lab.build(cfg.MTU); err != nil {
		if cerr := lab.Close(); cerr != nil {
			err = fmt.Errorf("%w (and tearing down: %v)", err, cerr)
		}
		return nil, fmt.Errorf("build netns lab: %w", err)
	}
	return lab, nil
}

func abbrev(role string) string {
	if len(role) > 4 {
		return role[:4]
	}
	return role
}

// Nodes returns the host followed by the peers.
func (l *Lab) Nodes() []*Node { return append([]*Node{l.Host}, l.Peers...) }

// Peer returns the peer node with the given role, or nil.
func (l *Lab) Peer(role string) *Node {
	for _, n := range l.Peers {
		if n.Role == role {
			return n
		}
	}
	return nil
}

// Attacker and Client return the default peers (nil if the lab was built without them).
func (l *Lab) Attacker() *Node { return l.Peer("attacker") }
func (l *Lab) Client() *Node   { return l.Peer("client") }

// HostIface returns the host's end of the link to the peer with the given role.
func (l *Lab) HostIface(role string) Iface {
	for _, ifc := range l.Host.Ifaces {
		if ifc.Peer == role {
			return ifc
		}
	}
	return Iface{}
}

// HostIfaceNames lists the host's interfaces (what snared is told to attach to).
func (l *Lab) HostIfaceNames() []string {
	var names []string
	for _, ifc := range l.Host.Ifaces {
		names = append(names, ifc.Name)
	}
	return names
}

// String describes every namespace, interface and address of the lab.
func (l *Lab) String() string {
	var sb strings.Builder
	for _, n := range l.Nodes() {
		fmt.Fprintf(&sb, "  %-8s netns %s\n", n.Role, n.NS)
		for _, ifc := range n.Ifaces {
			fmt.Fprintf(&sb, "           %-14s %s %s %s (to %s)\n", ifc.Name, ifc.MAC, ifc.Addr4, ifc.Addr6, ifc.Peer)
		}
	}
	return sb.String()
}

func (l *Lab) build(mtu int) error {
	for _, n := range l.Nodes() {
		if out, err := exec.Command("ip", "netns", "add", n.NS).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns add %s: %w: %s", n.NS, err, bytesTrim(out))
		}
		// Set before any link exists so that new interfaces inherit the defaults.
		if err := l.Do(n.NS, func() error {
			for _, kv := range [][2]string{
				{"net/ipv6/conf/all/accept_dad", "0"},
				{"net/ipv6/conf/default/accept_dad", "0"},
				{"net/ipv6/conf/all/disable_ipv6", "0"},
				{"net/ipv6/conf/default/disable_ipv6", "0"},
				{"net/ipv6/conf/default/accept_ra", "0"},
				{"net/ipv4/conf/all/rp_filter", "0"},
				{"net/ipv4/conf/default/rp_filter", "0"},
			} {
				if err := os.WriteFile(filepath.Join("/proc/sys", kv[0]), []byte(kv[1]), 0o644); err != nil {
					return fmt.Errorf("sysctl %s=%s: %w", kv[0], kv[1], err)
				}
			}
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return fmt.Errorf("find lo: %w", err)
			}
			return netlink.LinkSetUp(lo)
		}); err != nil {
			return fmt.Errorf("set up netns %s: %w", n.NS, err)
		}
	}

	hostNS, err := netns.GetFromName(l.Host.NS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", l.Host.NS, err)
	}
	defer hostNS.Close()
	for i, p := range l.Peers {
		peerNS, err := netns.GetFromName(p.NS)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", p.NS, err)
		}
		hostEnd := Iface{NS: l.Host.NS, Name: "h-" + abbrev(p.Role) + "-" + l.Suffix, Peer: p.Role,
			Addr4: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 1}), 24),
			Addr6: netip.PrefixFrom(v6(i+1, 1), 64)}
		peerEnd := Iface{NS: p.NS, Name: abbrev(p.Role) + "-" + l.Suffix, Peer: "host",
			Addr4: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 2}), 24),
			Addr6: netip.PrefixFrom(v6(i+1, 2), 64)}
		// Created directly inside the two namespaces: nothing appears in the caller's namespace.
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: hostEnd.Name, MTU: mtu, Namespace: netlink.NsFd(hostNS)},
			PeerName:      peerEnd.Name,
			PeerMTU:       uint32(mtu),
			PeerNamespace: netlink.NsFd(peerNS),
		}
		err = netlink.LinkAdd(veth)
		peerNS.Close()
		if err != nil {
			return fmt.Errorf("add veth %s <-> %s: %w", hostEnd.Name, peerEnd.Name, err)
		}
		if hostEnd, err = l.configure(hostEnd); err != nil {
			return err
		}
		if peerEnd, err = l.configure(peerEnd); err != nil {
			return err
		}
		l.Host.Ifaces = append(l.Host.Ifaces, hostEnd)
		p.Ifaces = append(p.Ifaces, peerEnd)
	}
	for _, n := range l.Nodes() {
		if out, err := l.Run(n.NS, "ip", "route", "show", "default"); err != nil || strings.TrimSpace(out) != "" {
			return fmt.Errorf("netns %s must have no default route: %q (%v)", n.NS, out, err)
		}
	}
	return nil
}

// configure sets the addresses of one interface and brings it up.
func (l *Lab) configure(ifc Iface) (Iface, error) {
	ns, err := netns.GetFromName(ifc.NS)
	if err != nil {
		return ifc, fmt.Errorf("open netns %s: %w", ifc.NS, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return ifc, fmt.Errorf("netlink in %s: %w", ifc.NS, err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifc.Name)
	if err != nil {
		return ifc, fmt.Errorf("find %s in %s: %w", ifc.Name, ifc.NS, err)
	}
	for _, p := range []netip.Prefix{ifc.Addr4, ifc.Addr6} {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return ifc, fmt.Errorf("add %s to %s: %w", p, ifc.Name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return ifc, fmt.Errorf("set %s up: %w", ifc.Name, err)
	}
	ifc.Index = link.Attrs().Index
	ifc.MAC = link.Attrs().HardwareAddr
	return ifc, nil
}

func v6(subnet, host int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(subnet), 14: byte(host >> 8), 15: byte(host)})
}

// Do runs fn inside the network namespace ns on a locked OS thread and returns its error. The
// calling goroutine's namespace is not touched. Goroutines that fn starts do NOT run in ns
// (setns applies to one thread only); sockets fn opens stay in ns after it returns.
func (l *Lab) Do(ns string, fn func() error) error {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer target.Close()
	return nsrun.In(target, fn)
}

// RunTimeout bounds Run and RunShared.
const RunTimeout = 2 * time.Minute

// Run runs a command in namespace ns through `ip netns exec` and returns its combined output.
// `ip netns exec` gives the command its own /sys (so /sys/class/net shows ns's links) and hides
// bpffs: use RunShared for anything that needs pins under /sys/fs/bpf.
func (l *Lab) Run(ns, name string, args ...string) (string, error) {
	return l.run(append([]string{"ip", "netns", "exec", ns, name}, args...))
}

// RunShared runs a command in namespace ns with `nsenter --net`, keeping the caller's mount
// namespace: bpffs pins under /sys/fs/bpf are visible (snared, snarectl, xdp-filter, bpftool).
func (l *Lab) RunShared(ns, name string, args ...string) (string, error) {
	return l.run(append([]string{"nsenter", "--net=" + nsPath(ns), "--", name}, args...))
}

func (l *Lab) run(argv []string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytesTrim(out))
	}
	return string(out), nil
}

func nsPath(ns string) string { return filepath.Join("/run/netns", ns) }

func bytesTrim(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = s[:2000] + "..."
	}
	return s
}

// Proc is a background process started in a namespace. Its combined output is kept.
type Proc struct {
	Cmd  *exec.Cmd
	PID  int
	out  lockedBuffer
	done chan struct{}
	err  error
}

// Start starts a background command in namespace ns through `ip netns exec` (see Run for what
// that hides). The process is stopped by its PID when the lab is closed if it is still running.
func (l *Lab) Start(ns, name string, args ...string) (*Proc, error) {
	return l.start(append([]string{"ip", "netns", "exec", ns, name}, args...))
}

// StartShared starts a background command like Start but with `nsenter --net`, keeping the
// caller's mount namespace (bpffs visible): the way to run snared in the host namespace.
func (l *Lab) StartShared(ns, name string, args ...string) (*Proc, error) {
	return l.start(append([]string{"nsenter", "--net=" + nsPath(ns), "--", name}, args...))
}

func (l *Lab) start(argv []string) (*Proc, error) {
	p := &Proc{done: make(chan struct{})}
	p.Cmd = exec.Command(argv[0], argv[1:]...)
	p.Cmd.Stdout = &p.out
	p.Cmd.Stderr = &p.out
	// Its own process group, so Stop also reaches children it forked; ip netns exec and nsenter
	// exec the command, so PID is the command itself.
	p.Cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	if err := p.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(argv, " "), err)
	}
	p.PID = p.Cmd.Process.Pid
	go func() {
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// Output returns what the process wrote to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// Exited reports whether the process has exited, and its wait error if so.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Signal sends sig to the process (by its PID only).
func (p *Proc) Signal(sig unix.Signal) error {
	if exited, _ := p.Exited(); exited {
		return nil
	}
	return unix.Kill(p.PID, sig)
}

// Wait waits up to timeout for the process to exit and returns its wait error.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("pid %d still running after %s", p.PID, timeout)
	}
}

// Stop sends SIGTERM to the process group the process leads, waits up to five seconds, then
// sends SIGKILL. It returns nil once the process is gone (however it exited).
func (p *Proc) Stop() error {
	if exited, _ := p.Exited(); exited {
		return nil
	}
	_ = unix.Kill(-p.PID, unix.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
	}
	_ = unix.Kill(-p.PID, unix.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("pid %d survived SIGKILL", p.PID)
	}
}

// Close stops every process the lab started and deletes its namespaces (which removes the veth
// pairs in them). It keeps going after errors and returns them all.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs := l.procs
	l.procs = nil
	l.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range l.Nodes() {
		if _, err := os.Stat(nsPath(n.NS)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", n.NS).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", n.NS, err, bytesTrim(out)))
		}
	}
	return errors.Join(errs...)
}

// SetGRO turns GRO on or off on an interface. A veth end that must receive XDP_REDIRECTed frames
// (ndo_xdp_xmit) but has no XDP program of its own needs GRO on, which gives it a NAPI instance.
func (l *Lab) SetGRO(ns, iface string, on bool) error {
	state := "off"
	if on {
		state = "on"
	}
	_, err := l.RunShared(ns, "ethtool", "-K", iface, "gro", state)
	return err
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
