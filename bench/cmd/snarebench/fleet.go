package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/snare-dev/snare/bench/lfgen"
	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/loader"
)

const (
	fleetCapacity = 10000                  // block.capacity of every snared of the fleet: ten fit
	fleetPort     = 4222                   // the embedded NATS server's client port
	fleetPoll     = 200 * time.Microsecond // pause between rounds of test runs while waiting for a verdict
	fleetWait     = 2 * time.Second        // longest wait for one block or unblock to reach every host
	xdpDrop       = 1
	xdpPass       = 2
)

// fleetSrcBase is where the sources the fleet section blocks come from: 198.19.0.0/16, which no
// lab interface uses.
var fleetSrcBase = netip.MustParseAddr("198.19.0.0")

// fleetStep is one measurement on a running fleet; each adds its rows to the section's table.
type fleetStep struct {
	name string
	run  func(*fleetLab, *table) error
}

// fleetRun is a fresh fleet of hosts snared with block.capacity capacity, and the steps measured
// on it in turn.
type fleetRun struct {
	hosts, capacity int
	steps           []fleetStep
}

// fleetRuns: single decisions with 3 and with 10 hosts (a small capacity, so ten fit), then the
// 1,000,000-entry imports with 3 hosts big enough to hold one.
func fleetRuns() []fleetRun {
	decisions := []fleetStep{
		{"latency", (*fleetLab).latency},
		{"sustained", (*fleetLab).sustained},
	}
	bulk := []fleetStep{
		{"shared import", (*fleetLab).sharedImport},
		{"catch-up", (*fleetLab).catchUp},
	}
	return []fleetRun{
		{hosts: 3, capacity: fleetCapacity, steps: decisions},
		{hosts: 10, capacity: fleetCapacity, steps: decisions},
		{hosts: 3, capacity: bulkCapacity, steps: bulk},
	}
}

// fleetHost is one snared of the fleet and the XDP program it attached, run from the harness
// with BPF_PROG_TEST_RUN to see what that host enforces.
type fleetHost struct {
	name string
	d    *daemon
	cfg  string // its fleet configuration, for a restart
	prog *ebpf.Program
}

// fleetLab is n snared, each in its own namespace (peer i of a netlab: 198.18.i.2 on its own
// veth, its own pin dir, socket and state dir). The first runs the embedded NATS JetStream
// server on its lab address; the others connect to it through the lab's host namespace, which
// routes between the links (no namespace has a route out).
type fleetLab struct {
	e     *env
	lab   *netlab.Lab
	dir   string
	hosts []*fleetHost
	next  int // next source to block, as an offset in fleetSrcBase's /16

	once     sync.Once
	closeErr error
}

func (e *env) sectionFleet() ([]*table, error) {
	t := newTable("Fleet: decisions shared over NATS JetStream (real snared processes, native XDP)",
		"measurement", "hosts", "measured", "goal", "result")
	t.note("Every snared runs in its own network namespace with its own veth (native XDP), pin dir, socket and state dir, block.capacity %s (%s in the fleet that shares the big imports); the first runs the embedded NATS JetStream server on its lab address, the others connect to it across the lab's host namespace. Blocks and unblocks go through the origin host's API (what `snarectl block` sends); a host enforces a decision when its attached XDP program (found through its pinned link) returns XDP_DROP (XDP_PASS for an unblock) under BPF_PROG_TEST_RUN for a UDP packet from the source. The harness polls every host every %s, so latencies are rounded up by about that much.", num(fleetCapacity), num(bulkCapacity), fleetPoll)
	if e.quick {
		t.note("Quick mode: 50 blocks and unblocks instead of 200, 3 s of sustained blocking instead of 10, imports of 100,000 entries instead of 1,000,000; the goals are applied as they are.")
	}
	t.note("The big imports (a third fleet: n01 runs the engine, n02 imports, n03 only receives): a list imported through n02's API (what `snarectl import FILE` sends) counts as enforced on a host when its API counts every entry (the store's count, which a fleet block reaches only once it is in the kernel too) and its XDP program returns XDP_DROP for a sample of %s of the list's sources (evenly spread, and the last), polled every 20 ms; once that holds, every entry of the list is looked up in the host's pinned block4 map. The first list (`blockList`: 240.0.0.0/8 filler and 198.19.0.0/16, never sent) has a TTL of %s, so it is gone (expired, swept) before the second (240.128.0.0 onwards), which fits block.capacity only alone. Memory is read from /proc/PID/status.", num(bulkSample+1), bulkTTL(e.quick))
	bin, err := buildDaemon()
	if err != nil {
		t.add("snared", "", "n/a: "+oneLine(err), "", "")
		return []*table{t}, nil
	}
	removeBin := func() error { return os.RemoveAll(bin) }
	e.onClose(removeBin) // also on Ctrl-C, which does not run the deferred call
	defer removeBin()
	for _, r := range fleetRuns() {
		n := r.hosts
		f, err := e.startFleet(bin, n, r.capacity)
		if err != nil {
			if f != nil {
				f.close()
			}
			return []*table{t}, fmt.Errorf("start a fleet of %d: %w", n, err)
		}
		load := loadAvg()
		var names []string
		for _, s := range r.steps {
			e.log.Info("fleet step", "step", s.name, "hosts", n)
			names = append(names, s.name)
			if err := s.run(f, t); err != nil {
				t.add(s.name, fmt.Sprint(n), "n/a: "+oneLine(err), "", "")
			}
		}
		t.note("%d hosts (%s): 1-minute load average %s when the fleet was up, %s when its steps were done.", n, strings.Join(names, ", "), load, loadAvg())
		if err := f.close(); err != nil {
			return []*table{t}, fmt.Errorf("tear down the fleet of %d: %w", n, err)
		}
	}
	return []*table{t}, nil
}

// startFleet builds the lab and starts n snared with block.capacity capacity in it, the NATS
// server's host first, and waits until every one is connected to the fleet. On error the
// returned fleetLab (if any) holds what was built, for close.
func (e *env) startFleet(bin string, n, capacity int) (*fleetLab, error) {
	roles := make([]string, n)
	for i := range roles {
		roles[i] = fmt.Sprintf("n%02d", i+1)
	}
	lab, err := netlab.New(netlab.Config{Peers: roles})
	if err != nil {
		return nil, err
	}
	f := &fleetLab{e: e, lab: lab}
	e.onClose(f.close)
	if f.dir, err = os.MkdirTemp("", "snarebench-fleet-"); err != nil {
		return f, err
	}
	hub := lab.Peers[0]
	if _, err := lab.Run(lab.Host.NS, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return f, err
	}
	for i, p := range lab.Peers {
		gw := lab.Host.Ifaces[i].Addr4.Addr().String()
		dst := hub.Addr4().String() + "/32"
		if i == 0 {
			dst = "198.18.0.0/16" // back to every other host
		}
		if _, err := lab.Run(p.NS, "ip", "route", "add", dst, "via", gw); err != nil {
			return f, err
		}
	}
	server := fmt.Sprintf("%s:%d", hub.Addr4(), fleetPort)
	for i, p := range lab.Peers {
		dir := filepath.Join(f.dir, p.Role)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return f, err
		}
		d := &daemon{lab: lab, ns: p.NS, capacity: capacity, dir: dir, bin: bin,
			pin: e.pinDir + "-fleet-" + p.Role, iface: p.Ifaces[0].Name, socket: filepath.Join(dir, "snare.sock")}
		cfg := fmt.Sprintf("fleet:\n  node: %s\n  servers: [\"nats://%s\"]\n", p.Role, server)
		if i == 0 {
			cfg = fmt.Sprintf("fleet:\n  node: %s\n  embedded:\n    listen: %q\n", p.Role, server)
		}
		h := &fleetHost{name: p.Role, d: d, cfg: cfg}
		f.hosts = append(f.hosts, h)
		if err := d.start(cfg); err != nil {
			return f, fmt.Errorf("start snared %s: %w", p.Role, err)
		}
		if _, err := d.waitReady(0, time.Minute); err != nil {
			return f, fmt.Errorf("snared %s: %w", p.Role, err)
		}
	}
	for _, h := range f.hosts {
		if err := h.waitConnected(30 * time.Second); err != nil {
			return f, err
		}
		if h.prog, err = attachedProgram(h.d.pin, h.d.iface); err != nil {
			return f, fmt.Errorf("snared %s: %w", h.name, err)
		}
	}
	e.log.Info("fleet ready", "hosts", n, "server", server)
	return f, nil
}

func (h *fleetHost) waitConnected(limit time.Duration) error {
	var last api.FleetStatus
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := h.d.client.FleetStatus(ctx)
		cancel()
		if err == nil && st.Connected {
			return nil
		}
		last = st
	}
	return fmt.Errorf("snared %s not connected to the fleet after %s (last error %q): %s", h.name, limit, last.Error, tail(h.d.proc.Output()))
}

// attachedProgram opens the XDP program snared attached to iface, through the link it pinned.
func attachedProgram(pinDir, iface string) (*ebpf.Program, error) {
	pin := filepath.Join(pinDir, "link_"+iface)
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned link %s: %w", pin, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return nil, fmt.Errorf("info of pinned link %s: %w", pin, err)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return nil, fmt.Errorf("open program %d of link %s: %w", info.Program, pin, err)
	}
	return prog, nil
}

// close stops every snared, removes its pins and the lab; safe to call twice.
func (f *fleetLab) close() error {
	f.once.Do(func() {
		var errs []error
		for _, h := range f.hosts {
			if h.prog != nil {
				h.prog.Close()
			}
			if err := h.d.stop(); err != nil {
				errs = append(errs, fmt.Errorf("stop snared %s: %w", h.name, err))
			}
			if err := f.lab.Do(h.d.ns, func() error { return loader.Remove(h.d.pin, []string{h.d.iface}) }); err != nil {
				errs = append(errs, err)
			}
			os.RemoveAll(h.d.pin)
		}
		if err := f.lab.Close(); err != nil {
			errs = append(errs, err)
		}
		if f.dir != "" {
			os.RemoveAll(f.dir)
		}
		f.closeErr = errors.Join(errs...)
	})
	return f.closeErr
}

// sources hands out n sources never blocked before in this fleet.
func (f *fleetLab) sources(n int) ([]netip.Addr, error) {
	if f.next+n > 1<<16 {
		return nil, fmt.Errorf("out of sources in 198.19.0.0/16 (%d used, %d more wanted)", f.next, n)
	}
	b := fleetSrcBase.As4()
	out := make([]netip.Addr, n)
	for i := range out {
		k := f.next + i
		out[i] = netip.AddrFrom4([4]byte{b[0], b[1], byte(k >> 8), byte(k)})
	}
	f.next += n
	return out, nil
}

// waitVerdict runs every host's program on frame until each returns want, and returns the time
// from t0 until the last one did (bounded by limit).
func waitVerdict(hosts []*fleetHost, frame []byte, want uint32, t0 time.Time, limit time.Duration) (time.Duration, error) {
	pending := slices.Clone(hosts)
	for {
		kept := pending[:0]
		for _, h := range pending {
			ret, err := h.prog.Run(&ebpf.RunOptions{Data: frame})
			if err != nil {
				return 0, fmt.Errorf("test run on %s: %w", h.name, err)
			}
			if ret != want {
				kept = append(kept, h)
			}
		}
		pending = kept
		took := time.Since(t0)
		if len(pending) == 0 {
			return took, nil
		}
		if took > limit {
			return 0, fmt.Errorf("%d hosts (%s first) still without %s after %s", len(pending), pending[0].name, map[uint32]string{xdpDrop: "XDP_DROP", xdpPass: "XDP_PASS"}[want], limit)
		}
		time.Sleep(fleetPoll)
	}
}

// latency: blocks made one at a time, each on the next host in turn, timed from the API call
// until every other host drops the source in XDP; each is then unblocked on the same host,
// timed until every other host passes it again.
func (f *fleetLab) latency(t *table) error {
	n := len(f.hosts)
	rounds := 200
	if f.e.quick {
		rounds = 50
	}
	// One unmeasured block and unblock from every host first: the first decision of a
	// connection sets up what every later one reuses.
	warm, err := f.sources(n)
	if err != nil {
		return err
	}
	for i, src := range warm {
		if _, err := f.blockRound(f.hosts[i], src); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	srcs, err := f.sources(rounds)
	if err != nil {
		return err
	}
	// Per decision kind: the whole time, the origin's API call, and the rest after its answer.
	var total, call, rest [2][]time.Duration
	end := time.Now().Add(2 * time.Minute)
	for i, src := range srcs {
		if time.Now().After(end) {
			t.note("The latency loop stopped after %d of %d rounds at its 2-minute bound.", i, rounds)
			break
		}
		r, err := f.blockRound(f.hosts[i%n], src)
		if err != nil {
			return err
		}
		for k := range 2 {
			total[k] = append(total[k], r.total[k])
			call[k] = append(call[k], r.call[k])
			rest[k] = append(rest[k], r.total[k]-r.call[k])
		}
	}
	goal := 10 * time.Millisecond
	if n > 3 {
		goal = 50 * time.Millisecond
	}
	hosts := fmt.Sprint(n)
	others := fmt.Sprintf("the %d others", n-1)
	for k, kind := range []string{"block", "unblock"} {
		what := fmt.Sprintf("block on one host (API) → XDP_DROP on %s", others)
		if k == 1 {
			what = fmt.Sprintf("unblock on that host (API) → XDP_PASS on %s", others)
		}
		c := len(total[k])
		p50, p99 := percentiles(total[k])
		t.add(fmt.Sprintf("%s, p50 of %d", what, c), hosts, ms(p50)+" ms", "", "")
		t.add(fmt.Sprintf("%s, p99 of %d", what, c), hosts, ms(p99)+" ms", fmt.Sprintf("≤ %.0f ms (of ≥ 200)", goal.Seconds()*1000), passMiss(p99 <= goal))
		p50, p99 = percentiles(call[k])
		t.add(fmt.Sprintf("%s: the part until the origin's API answered (durable, in the origin's XDP), p50 / p99 of %d", kind, c), hosts, ms(p50)+" / "+ms(p99)+" ms", "", "")
		p50, p99 = percentiles(rest[k])
		t.add(fmt.Sprintf("%s: the part from that answer until the last of %s, p50 / p99 of %d", kind, others, c), hosts, ms(p50)+" / "+ms(p99)+" ms", "", "")
	}
	return nil
}

// round is one block and unblock of blockRound: for each ([0] block, [1] unblock), the time from
// the API call on the origin until every other host enforced it, and the call's round trip.
type round struct {
	total, call [2]time.Duration
}

// blockRound blocks src on origin, waits until every other host drops it, unblocks it on
// origin and waits until every other host passes it.
func (f *fleetLab) blockRound(origin *fleetHost, src netip.Addr) (round, error) {
	var r round
	frame, err := lfgen.Frame(udp4(src))
	if err != nil {
		return r, err
	}
	var others []*fleetHost
	for _, h := range f.hosts {
		if h != origin {
			others = append(others, h)
		}
	}
	// Every host passes the packet before the block: a drop after it is the block's doing.
	if _, err := waitVerdict(f.hosts, frame, xdpPass, time.Now(), 0); err != nil {
		return r, fmt.Errorf("before blocking %s: %w", src, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	if _, err := origin.d.client.Block(ctx, api.BlockRequest{Targets: []string{src.String()}, TTL: "1h", Reason: "bench fleet"}); err != nil {
		return r, fmt.Errorf("block %s on %s: %w", src, origin.name, err)
	}
	r.call[0] = time.Since(t0)
	if r.total[0], err = waitVerdict(others, frame, xdpDrop, t0, fleetWait); err != nil {
		return r, fmt.Errorf("block %s made on %s: %w", src, origin.name, err)
	}
	if _, err := waitVerdict([]*fleetHost{origin}, frame, xdpDrop, time.Now(), 0); err != nil {
		return r, fmt.Errorf("block %s made on %s, on %s itself: %w", src, origin.name, origin.name, err)
	}
	t0 = time.Now()
	if _, err := origin.d.client.Unblock(ctx, api.UnblockRequest{Targets: []string{src.String()}}); err != nil {
		return r, fmt.Errorf("unblock %s on %s: %w", src, origin.name, err)
	}
	r.call[1] = time.Since(t0)
	if r.total[1], err = waitVerdict(others, frame, xdpPass, t0, fleetWait); err != nil {
		return r, fmt.Errorf("unblock %s made on %s: %w", src, origin.name, err)
	}
	return r, nil
}

// sustained: three hosts block distinct sources at a fixed rate each for a bounded time (open
// loop: a call is made when due, up to sustainedInFlight at once per host, so a slow answer
// does not lower the rate offered); then every block made must be dropped in XDP and listed on
// every host.
func (f *fleetLab) sustained(t *table) error {
	const (
		blockers = 3
		perHost  = 100 // blocks per second offered on each blocking host
		inFlight = 8   // API calls at once on one host, at most
	)
	dur := 10 * time.Second
	if f.e.quick {
		dur = 3 * time.Second
	}
	n := len(f.hosts)
	hosts := f.hosts[n-blockers:] // for more than three, not the NATS server's host
	per := int(dur.Seconds()) * perHost
	srcs := make([][]netip.Addr, blockers)
	for i := range hosts {
		var err error
		if srcs[i], err = f.sources(per); err != nil {
			return err
		}
	}
	var (
		mu       sync.Mutex
		all      []netip.Addr
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem := make(chan struct{}, inFlight)
			var calls sync.WaitGroup
			defer calls.Wait()
			for k, src := range srcs[i] {
				time.Sleep(time.Until(start.Add(time.Duration(k) * time.Second / perHost)))
				sem <- struct{}{}                          // waits when inFlight calls are still out: behind schedule
				if time.Since(start) > dur+2*time.Second { // the run is bounded all the same
					<-sem
					return
				}
				calls.Add(1)
				go func() {
					defer calls.Done()
					defer func() { <-sem }()
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err := h.d.client.Block(ctx, api.BlockRequest{Targets: []string{src.String()}, TTL: "1h", Reason: "bench fleet"})
					cancel()
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						failed++
						if firstErr == nil {
							firstErr = fmt.Errorf("block %s on %s: %w", src, h.name, err)
						}
						return
					}
					all = append(all, src)
				}()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	made := fmt.Sprintf("%s in %s", num(float64(len(all))), secs(elapsed))
	if failed > 0 {
		made += fmt.Sprintf("; %d calls failed, the first: %s", failed, oneLine(firstErr))
	}
	t.add(fmt.Sprintf("sustained: %d hosts each offered %d blocks/s of distinct sources for %s; blocks made (API answered) per second (%s)", blockers, perHost, dur, made),
		fmt.Sprint(n), num(float64(len(all))/elapsed.Seconds())+"/s", fmt.Sprintf("offered %d/s", blockers*perHost), "")

	// Every block on every host: dropped by its XDP program, and in its list.
	settled, lost, err := f.enforcedEverywhere(all, 30*time.Second)
	if err != nil {
		return err
	}
	listed := 0
	for _, h := range f.hosts {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		l, err := h.d.client.List(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("list on %s: %w", h.name, err)
		}
		in := map[string]bool{}
		for _, e := range l.Entries {
			in[e.Prefix] = true
		}
		for _, a := range all {
			if in[netip.PrefixFrom(a, 32).String()] {
				listed++
			} else {
				lost[a] = true
			}
		}
	}
	if len(lost) == 0 {
		t.add(fmt.Sprintf("sustained: after the last block, until every host drops all %s in XDP", num(float64(len(all)))), fmt.Sprint(n), secs(settled), "", "")
		t.add("sustained: blocks shared per second (made, and dropped in XDP on every host, from the first block until the last host had the last one)",
			fmt.Sprint(n), num(float64(len(all))/(elapsed+settled).Seconds())+"/s", "", "")
	}
	t.add(fmt.Sprintf("sustained: blocks lost (not dropped in XDP or not in `list` on some host 30 s after; %s of %s host×block pairs listed)", num(float64(listed)), num(float64(len(all)*n))),
		fmt.Sprint(n), num(float64(len(lost))), "0", passMiss(len(lost) == 0))
	return nil
}

// enforcedEverywhere waits (bounded) until every host's program drops every source, and returns
// how long that took and the sources some host still passes at the bound.
func (f *fleetLab) enforcedEverywhere(srcs []netip.Addr, limit time.Duration) (time.Duration, map[netip.Addr]bool, error) {
	frames := make([][]byte, len(srcs))
	for i, a := range srcs {
		var err error
		if frames[i], err = lfgen.Frame(udp4(a)); err != nil {
			return 0, nil, err
		}
	}
	t0 := time.Now()
	pending := make([][]int, len(f.hosts)) // per host: indexes of sources it does not drop yet
	for i := range pending {
		for k := range srcs {
			pending[i] = append(pending[i], k)
		}
	}
	for {
		missing := map[netip.Addr]bool{}
		for i, h := range f.hosts {
			kept := pending[i][:0]
			for _, k := range pending[i] {
				ret, err := h.prog.Run(&ebpf.RunOptions{Data: frames[k]})
				if err != nil {
					return 0, nil, fmt.Errorf("test run on %s: %w", h.name, err)
				}
				if ret != xdpDrop {
					kept = append(kept, k)
					missing[srcs[k]] = true
				}
			}
			pending[i] = kept
		}
		if len(missing) == 0 || time.Since(t0) > limit {
			return time.Since(t0), missing, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}
