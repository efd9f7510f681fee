package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
)

// The fleet lab: three hosts A, B and C, each a namespace with its own snared (its own back-end,
// interface, pins, socket and state dir), joined to one hub namespace by a veth each. The
// hub is the attacker, and it routes between the hosts, which carries the NATS traffic of B and
// C to the JetStream server embedded in A's snared:
//
//	[A] a-SFX 198.18.1.2 --- 198.18.1.1 h-a-SFX [hub: attacker] h-b-SFX 198.18.2.1 --- 198.18.2.2 b-SFX [B]
//	                                            h-c-SFX 198.18.3.1 --- 198.18.3.2 c-SFX [C]
//
// The attacker's sources are 198.18.200.N on the hub's loopback, one per scenario so that the
// scenarios do not lean on each other; every host routes 198.18.0.0/15 (the lab) to the hub and
// nothing else, so one source reaches all three hosts and nothing leaves the lab.

// fleetHost is one host of the fleet lab.
type fleetHost struct {
	name string // its fleet node name
	addr netip.Addr
	d    *daemon
}

// fleetBackends is the back-end ("xdp" or "iptables") each host's snared runs.
type fleetBackends struct{ a, b, c string }

// fleetLab is the lab, the hub's namespace and the three hosts.
type fleetLab struct {
	e       *labEnv
	hub     string
	a, b, c *fleetHost
}

// fleetBulkImport is the size of the import shared packed: big enough for the daemon's bulk
// path too (50,000 entries and more), and for more than one bulk value.
const fleetBulkImport = 50_010

// attackerSources is how many 198.18.200.N addresses the hub holds.
const attackerSources = 8

// fleetPort is where A's embedded NATS server listens (on A's lab address).
const fleetPort = 4222

// newFleetLab builds the lab and starts the three daemons (A first: it runs the server) on the
// back-ends given.
func newFleetLab(t *testing.T, backends fleetBackends) *fleetLab {
	t.Helper()
	requireLab(t)
	roles := map[string]string{"a": backends.a, "b": backends.b, "c": backends.c}
	for _, backend := range roles {
		if backend == "iptables" {
			requireFallback(t)
		}
	}
	lab := testutil.NewLab(t, "a", "b", "c")
	e := &labEnv{t: t, lab: lab, backend: "xdp", dir: t.TempDir(), config: baseConfig()}
	f := &fleetLab{e: e, hub: lab.Host.NS}
	run := func(ns, name string, args ...string) {
		t.Helper()
		if _, err := lab.Run(ns, name, args...); err != nil {
			t.Fatalf("fleet lab setup: %v", err)
		}
	}
	run(f.hub, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	for i := 1; i <= attackerSources; i++ {
		run(f.hub, "ip", "addr", "add", attackerSource(i).String()+"/32", "dev", "lo")
	}
	var hosts []*fleetHost
	for _, role := range []string{"a", "b", "c"} {
		n := lab.Peer(role)
		run(n.NS, "ip", "route", "add", "198.18.0.0/15", "via", lab.HostIface(role).Addr4.Addr().String())
		e.startWeb(n.NS)
		if roles[role] == "iptables" {
			// Registered before the daemon, so it runs after the daemon's teardown (snared
			// uninstall) and before the lab deletes the namespace.
			t.Cleanup(func() { noFallbackLeft(t, lab, n.NS) })
		}
		h := &fleetHost{name: strings.ToUpper(role), addr: n.Addr4()}
		h.d = e.newDaemonIn(h.name, n.NS, []string{n.Ifaces[0].Name})
		h.d.backend = roles[role]
		hosts = append(hosts, h)
	}
	f.a, f.b, f.c = hosts[0], hosts[1], hosts[2]
	server := netip.AddrPortFrom(f.a.addr, fleetPort)
	for _, h := range hosts {
		c := baseConfig()
		c["trap.threshold"] = 2
		c["fleet.node"] = h.name
		if h == f.a {
			c["fleet.embedded.listen"] = server.String()
		} else {
			c["fleet.servers"] = []string{"nats://" + server.String()}
		}
		h.d.writeConfig(c)
	}
	for _, h := range f.hosts() {
		h.d.start()
	}
	for _, h := range f.hosts() {
		if st := h.d.status(t); st.Backend != h.d.backend {
			t.Fatalf("%s runs back-end %q (fallback reason %q), want %q", h.name, st.Backend, st.Fallback, h.d.backend)
		}
		f.waitConnected(t, h, true)
	}
	return f
}

// noFallbackLeft fails the test if snare's iptables rules or ipset sets are left in namespace ns.
func noFallbackLeft(t *testing.T, lab *netlab.Lab, ns string) {
	t.Helper()
	for _, cmd := range [][]string{{"iptables", "-t", "raw", "-S"}, {"ip6tables", "-t", "raw", "-S"}, {"ipset", "list", "-n"}} {
		out, err := lab.Run(ns, cmd[0], cmd[1:]...)
		if err != nil {
			t.Errorf("after the fleet test: %v", err)
		} else if strings.Contains(strings.ToLower(out), "snare") {
			t.Errorf("after the fleet test, `%s` in %s still shows snare:\n%s", strings.Join(cmd, " "), ns, out)
		}
	}
}

func (f *fleetLab) hosts() []*fleetHost { return []*fleetHost{f.a, f.b, f.c} }

// attackerSource is the attacker's source address number n.
func attackerSource(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 200, byte(n)}) }

// peerTo is the attacker (source src) reaching host h's web server.
func (f *fleetLab) peerTo(h *fleetHost, src netip.Addr) peer {
	return peer{name: "attacker -> " + h.name, ns: f.hub, src: src, dst: h.addr}
}

// served fails the test unless the attacker from src gets the web page of every host given
// (probed at once).
func (f *fleetLab) served(t *testing.T, src netip.Addr, hosts ...*fleetHost) {
	t.Helper()
	f.each(hosts, func(h *fleetHost) { f.e.served(t, f.peerTo(h, src)) })
}

// dropped fails the test unless the attacker's packets from src are dropped by every host given.
func (f *fleetLab) dropped(t *testing.T, src netip.Addr, hosts ...*fleetHost) {
	t.Helper()
	f.each(hosts, func(h *fleetHost) { f.e.dropped(t, f.peerTo(h, src)) })
}

// each runs fn for every host concurrently (a dropped packet costs a timeout each).
func (f *fleetLab) each(hosts []*fleetHost, fn func(h *fleetHost)) {
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(h)
		}()
	}
	wg.Wait()
}

// fleetStatus is `snarectl fleet status -o json` on h, decoded.
func (f *fleetLab) fleetStatus(t *testing.T, h *fleetHost) api.FleetStatus {
	t.Helper()
	out := h.d.mustCtl(t, "fleet", "status", "-o", "json")
	var st api.FleetStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%s: snarectl fleet status -o json: %v\n%s", h.name, err, out)
	}
	return st
}

// waitConnected waits until h's fleet status says connected (or not).
func (f *fleetLab) waitConnected(t *testing.T, h *fleetHost, want bool) api.FleetStatus {
	t.Helper()
	var st api.FleetStatus
	if err := eventually(15*time.Second, func() error {
		st = f.fleetStatus(t, h)
		if st.Connected != want {
			return fmt.Errorf("connected %v (error %q)", st.Connected, st.Error)
		}
		return nil
	}); err != nil {
		t.Fatalf("%s: fleet status after 15s: %v, want connected %v", h.name, err, want)
	}
	return st
}

// waitListed waits until h lists src (then returns its entry) or, with want false, no longer
// lists it.
func (f *fleetLab) waitListed(t *testing.T, h *fleetHost, src netip.Addr, want bool) *api.Entry {
	t.Helper()
	var en *api.Entry
	if err := eventually(10*time.Second, func() error {
		en = find(h.d.list(t), host32(src))
		switch {
		case want && en == nil:
			return fmt.Errorf("not listed")
		case !want && en != nil:
			return fmt.Errorf("still listed: %+v", *en)
		}
		return nil
	}); err != nil {
		t.Fatalf("%s: %s after 10s: %v", h.name, src, err)
	}
	return en
}

// fromFleet fails the test unless en is a fleet block made by node.
func fromFleet(t *testing.T, h *fleetHost, en *api.Entry, node string) {
	t.Helper()
	if en.Origin != api.OriginFleet || en.Node != node {
		t.Errorf("%s lists %s with origin %q node %q, want origin %q node %q", h.name, en.Prefix, en.Origin, en.Node, api.OriginFleet, node)
	}
}

// trip makes the attacker from src touch trap ports of h until h blocks it: a connection
// attempt per port, each bounded.
func (f *fleetLab) trip(t *testing.T, h *fleetHost, src netip.Addr) {
	t.Helper()
	for _, port := range []int{79, 111, 143} {
		err := f.e.lab.Do(f.hub, func() error {
			d := net.Dialer{Timeout: 500 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			conn, err := d.Dial("tcp", netip.AddrPortFrom(h.addr, uint16(port)).String())
			if err == nil {
				conn.Close()
			}
			return err
		})
		t.Logf("trap probe %s -> %s port %d: %v", src, h.name, port, err)
	}
}

// inBlockSet reports whether src is in the IPv4 block set of h's ipset+iptables back-end
// (`ipset test`, which leaves out entries whose timeout has passed).
func (f *fleetLab) inBlockSet(h *fleetHost, src netip.Addr) (bool, error) {
	out, err := f.e.lab.Run(h.d.ns, "ipset", "test", fallbackIP4Set, src.String())
	switch {
	case err == nil:
		return true, nil
	case strings.Contains(out, "is NOT in set"):
		return false, nil
	}
	return false, fmt.Errorf("%s: %w", h.name, err)
}

// blockSetHolds fails the test unless the ipset+iptables hosts among hosts hold src in their
// block set (or, with want false, do not): what drops the packets there is the set, not only
// the daemon's list.
func (f *fleetLab) blockSetHolds(t *testing.T, src netip.Addr, want bool, hosts ...*fleetHost) {
	t.Helper()
	for _, h := range hosts {
		if h.d.backend != "iptables" {
			continue
		}
		in, err := f.inBlockSet(h, src)
		if err != nil {
			t.Fatal(err)
		}
		if in != want {
			t.Errorf("%s: %s in ipset %s: %v, want %v", h.name, src, fallbackIP4Set, in, want)
		}
	}
}

// fallbackIP4Set is the ipset set of single IPv4 blocks that snared's ipset+iptables back-end
// keeps (see iptables-fallback's package doc).
const fallbackIP4Set = "snare-ip4"

// ipsetLate is how late an ipset+iptables host may end a block: ipset's timeouts are whole
// seconds, rounded up when the entry is written, so a block ends at its deadline or up to a
// second after it, never before. The rest covers polling and a loaded machine.
const ipsetLate = 1300 * time.Millisecond

// ipsetTick is how early the kernel may end an ipset timeout: it counts from the jiffy the entry
// was added in, which may be up to a tick (at most 10 ms) before the moment it was added.
const ipsetTick = 10 * time.Millisecond

// The fleet with every host on XDP.
func TestFleetAcrossHostsXDP(t *testing.T) {
	testFleetAcrossHosts(t, fleetBackends{a: "xdp", b: "xdp", c: "xdp"})
}

// The fleet with B on the ipset+iptables back-end and A and C on XDP: remote decisions are
// applied to B's sets, and B's trap rules feed the fleet.
func TestFleetAcrossHostsMixed(t *testing.T) {
	testFleetAcrossHosts(t, fleetBackends{a: "xdp", b: "iptables", c: "xdp"})
}

// testFleetAcrossHosts runs three snared processes that share their decisions through the
// JetStream server embedded in A's, and the attacker's real packets show what each host
// enforces.
func testFleetAcrossHosts(t *testing.T, backends fleetBackends) {
	start := time.Now()
	f := newFleetLab(t, backends)
	a, b, c := f.a, f.b, f.c
	all := []*fleetHost{a, b, c}
	t.Logf("fleet up after %s (back-ends A %s, B %s, C %s)", time.Since(start).Round(time.Millisecond), backends.a, backends.b, backends.c)

	t.Log("a block on A is dropped on B and C too")
	x := attackerSource(1)
	f.served(t, x, all...)
	a.d.mustCtl(t, "block", x.String(), "--reason", "e2e fleet")
	for _, h := range []*fleetHost{b, c} {
		fromFleet(t, h, f.waitListed(t, h, x, true), "A")
	}
	f.dropped(t, x, all...)
	f.blockSetHolds(t, x, true, all...)
	if st := f.fleetStatus(t, a); st.Embedded == nil || !st.Embedded.Running {
		t.Errorf("A's fleet status: embedded server %+v, want one running", st.Embedded)
	}
	if st := f.fleetStatus(t, b); !slices.ContainsFunc(st.Peers, func(p api.FleetPeer) bool { return p.Node == "A" }) {
		t.Errorf("B's fleet status: peers %+v, want A among them", st.Peers)
	}

	t.Log("a trap hit on B blocks the attacker on A and C")
	x = attackerSource(2)
	f.served(t, x, all...)
	f.trip(t, b, x)
	if en := f.waitListed(t, b, x, true); en.Origin != api.OriginTrap {
		t.Errorf("B lists %s with origin %q, want %q", en.Prefix, en.Origin, api.OriginTrap)
	}
	for _, h := range []*fleetHost{a, c} {
		fromFleet(t, h, f.waitListed(t, h, x, true), "B")
	}
	f.dropped(t, x, all...)
	f.blockSetHolds(t, x, true, all...)

	t.Log("unblocking it on C serves it again everywhere")
	c.d.mustCtl(t, "unblock", x.String())
	for _, h := range all {
		f.waitListed(t, h, x, false)
	}
	f.blockSetHolds(t, x, false, all...)
	f.served(t, x, all...)

	t.Log("a short block made on A ends on B and C at A's deadline")
	x = attackerSource(3)
	const ttl = 6 * time.Second
	a.d.mustCtl(t, "block", x.String(), "--ttl", ttl.String())
	deadline := find(a.d.list(t), host32(x)).Expires
	for _, h := range []*fleetHost{b, c} {
		if en := f.waitListed(t, h, x, true); !en.Expires.Equal(deadline.Truncate(time.Millisecond)) {
			t.Errorf("%s: %s expires %s, want A's deadline %s", h.name, x, en.Expires, deadline)
		}
	}
	f.dropped(t, x, b, c)
	f.blockSetHolds(t, x, true, b, c)
	if time.Now().After(deadline) {
		t.Fatalf("the drop checks ended after the deadline (%s): the machine is too slow for a %s TTL", deadline, ttl)
	}
	// No sweep runs (sweep.interval 1h): the kernel ends the block, XDP's data path exactly at the
	// deadline, ipset's timeout within ipsetLate of it.
	f.each([]*fleetHost{b, c}, func(h *fleetHost) {
		if h.d.backend == "iptables" {
			f.waitBlockSetEnds(t, h, x, deadline)
		} else {
			time.Sleep(time.Until(deadline) + 200*time.Millisecond)
		}
		f.e.served(t, f.peerTo(h, x))
	})
	for _, h := range []*fleetHost{b, c} {
		if en := find(h.d.list(t), host32(x)); en != nil {
			t.Errorf("%s still lists %s after its deadline %s: %+v", h.name, x, deadline, *en)
		}
	}

	t.Log("B's allowlist wins over a block made on A; B counts it")
	x = attackerSource(4)
	before := f.fleetStatus(t, b).Allowlisted
	b.d.mustCtl(t, "allow", "add", x.String())
	a.d.mustCtl(t, "block", x.String())
	f.waitListed(t, c, x, true)
	if err := eventually(10*time.Second, func() error {
		if got := f.fleetStatus(t, b).Allowlisted; got <= before {
			return fmt.Errorf("allowlisted %d, was %d", got, before)
		}
		return nil
	}); err != nil {
		t.Errorf("B's fleet status after 10s: %v, want the block of an allowlisted address counted", err)
	}
	if en := find(b.d.list(t), host32(x)); en != nil {
		t.Errorf("B lists its allowlisted %s: %+v", x, *en)
	}
	f.blockSetHolds(t, x, false, b)
	f.dropped(t, x, a, c)
	f.served(t, x, b)

	t.Log("C is down while A blocks one address and unblocks another; restarted, C catches up")
	gone, x := attackerSource(5), attackerSource(6)
	a.d.mustCtl(t, "block", gone.String())
	f.waitListed(t, c, gone, true)
	c.d.stop()
	a.d.mustCtl(t, "block", x.String())
	a.d.mustCtl(t, "unblock", gone.String())
	f.waitListed(t, b, x, true) // both decisions are in the bucket
	f.waitListed(t, b, gone, false)
	f.dropped(t, gone, c) // C's kernel state kept enforcing while its daemon was away
	c.d.start()
	fromFleet(t, c, f.waitListed(t, c, x, true), "A")
	f.waitListed(t, c, gone, false)
	f.dropped(t, x, c)
	f.served(t, gone, c)

	t.Log("an import big enough to travel packed (the bulk path) on C is dropped on A and B; " +
		"an unblock of one of its entries on A, a delete marker newer than the import, serves it again everywhere")
	x = attackerSource(8)
	f.served(t, x, all...)
	var list strings.Builder
	fmt.Fprintln(&list, x)
	for i := range fleetBulkImport - 1 { // 198.19.0.0/16: no address of the lab
		fmt.Fprintf(&list, "198.19.%d.%d\n", i/256, i%256)
	}
	file := filepath.Join(t.TempDir(), "big.list")
	if err := os.WriteFile(file, []byte(list.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	c.d.mustCtl(t, "import", file, "--ttl", "1h")
	for _, h := range []*fleetHost{a, b} {
		fromFleet(t, h, f.waitListed(t, h, x, true), "C")
	}
	f.dropped(t, x, all...)
	f.blockSetHolds(t, x, true, all...)
	a.d.mustCtl(t, "unblock", x.String())
	for _, h := range all {
		f.waitListed(t, h, x, false)
	}
	f.served(t, x, all...)
	if n := len(b.d.list(t)); n < fleetBulkImport-1 {
		t.Errorf("B lists %d entries after the unblock, want the rest of C's import (%d)", n, fleetBulkImport-1)
	}

	t.Log("the engine is down (A, which runs it, stops): B blocks locally at once and keeps the decision " +
		"in its outbox, across a restart of its own; A back, the outbox drains and the block reaches C")
	x = attackerSource(7)
	a.d.stop()
	f.waitConnected(t, b, false)
	began := time.Now()
	b.d.mustCtl(t, "block", x.String())
	if took := time.Since(began); took > time.Second {
		t.Errorf("snarectl block on B took %s with the engine down, want the local path (well under 1s)", took)
	}
	if find(b.d.list(t), host32(x)) == nil {
		t.Errorf("B does not list %s right after blocking it with the engine down", x)
	}
	f.dropped(t, x, b)
	if st := f.fleetStatus(t, b); st.Outbox == 0 || st.Connected {
		t.Errorf("B's fleet status with the engine down: outbox %d connected %v, want outbox > 0 and not connected", st.Outbox, st.Connected)
	}
	b.d.stop()
	b.d.start()
	if st := f.fleetStatus(t, b); st.Outbox == 0 {
		t.Errorf("B's outbox after a restart during the outage: %d, want the block still queued", st.Outbox)
	}
	a.d.start()
	if err := eventually(15*time.Second, func() error {
		if st := f.fleetStatus(t, b); st.Outbox != 0 || !st.Connected {
			return fmt.Errorf("outbox %d connected %v (error %q)", st.Outbox, st.Connected, st.Error)
		}
		return nil
	}); err != nil {
		t.Errorf("B's fleet status 15s after A returned: %v, want the outbox drained", err)
	}
	for _, h := range []*fleetHost{a, c} {
		fromFleet(t, h, f.waitListed(t, h, x, true), "B")
	}
	f.dropped(t, x, a, c)
	f.blockSetHolds(t, x, true, b)
	t.Logf("fleet test took %s", time.Since(start).Round(time.Millisecond))
}

// waitBlockSetEnds polls h's block set until src leaves it, and fails the test unless that is at
// the deadline, within ipsetLate. Called before the deadline, so an early end is seen too.
func (f *fleetLab) waitBlockSetEnds(t *testing.T, h *fleetHost, src netip.Addr, deadline time.Time) {
	t.Helper()
	for {
		in, err := f.inBlockSet(h, src)
		now := time.Now()
		switch {
		case err != nil:
			t.Error(err)
			return
		case !in && now.Before(deadline.Add(-ipsetTick)):
			t.Errorf("%s: %s left ipset %s at %s, %s before A's deadline %s", h.name, src, fallbackIP4Set, now, deadline.Sub(now), deadline)
			return
		case !in:
			t.Logf("%s: %s left ipset %s %s after A's deadline", h.name, src, fallbackIP4Set, now.Sub(deadline).Round(time.Millisecond))
			return
		case now.After(deadline.Add(ipsetLate)):
			t.Errorf("%s: %s still in ipset %s %s after A's deadline %s, want it gone within %s", h.name, src, fallbackIP4Set, now.Sub(deadline).Round(time.Millisecond), deadline, ipsetLate)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
