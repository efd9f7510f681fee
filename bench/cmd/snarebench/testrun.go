package main

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/bench/floor"
	"github.com/snare-dev/snare/bench/lfgen"
)

// probe is one packet the programs are timed on.
type probe struct {
	name string
	pkt  lfgen.Packet
	srcs []netip.Addr // sources to take the median over; nil: pkt.Src
}

func (p probe) sources() []netip.Addr {
	if p.srcs == nil {
		return []netip.Addr{p.pkt.Src}
	}
	return p.srcs
}

func udp4(src netip.Addr) lfgen.Packet {
	return lfgen.Packet{Kind: "udp4", Src: src, Dst: netip.MustParseAddr("198.18.1.1"), DPort: passPort}
}

// benchProg times prog on frame with BPF_PROG_TEST_RUN: the kernel's mean over repeat runs,
// best of rounds (the minimum is the least disturbed by the other users of the 2 cores).
func benchProg(prog *ebpf.Program, p lfgen.Packet, repeat, rounds int) (verdict string, ns float64, err error) {
	frame, err := lfgen.Frame(p)
	if err != nil {
		return "", 0, err
	}
	best := time.Duration(1 << 62)
	var ret uint32
	for i := 0; i < rounds; i++ {
		r, d, err := prog.Benchmark(frame, repeat, nil)
		if err != nil {
			return "", 0, fmt.Errorf("benchmark: %w", err)
		}
		ret = r
		best = min(best, d)
	}
	switch ret {
	case 1:
		verdict = "DROP"
	case 2:
		verdict = "PASS"
	default:
		verdict = fmt.Sprintf("ret %d", ret)
	}
	return verdict, float64(best.Nanoseconds()), nil
}

// Sources the lookups are timed from: blocked ones (in every block list of 1 or more entries
// the attacker is; in lists of 10,000 and more the random range 198.19.0.0/16 too) and ones
// never blocked.
func blockedSrcs(n int) []netip.Addr {
	if n < 10 {
		return []netip.Addr{attacker}
	}
	out := []netip.Addr{attacker}
	for i := range 8 {
		out = append(out, netip.AddrFrom4([4]byte{198, 19, 0, byte(1 + i)})) // in blockList(n) from n = 10
	}
	return out
}

// passSrcs are the never-blocked sources of the pass rows. Nine sources (and nine blocked ones):
// a lookup in a big map costs a nanosecond more or less with the bucket its source falls in,
// and with three the median of the 1M-entry rows moves by up to 2 ns between runs.
var passSrcs = func() []netip.Addr {
	out := []netip.Addr{passSrc}
	for i := range 8 {
		out = append(out, netip.AddrFrom4([4]byte{198, 18, 200, byte(2 + i)}))
	}
	return out
}()

// floorProg loads a fresh bare blocker holding the first n addresses of blockList(n) (+ the
// IPv6 attacker).
func floorProg(n int) (*floor.FloorObjects, error) {
	spec, err := floor.LoadFloor()
	if err != nil {
		return nil, err
	}
	spec.Maps["floor4"].MaxEntries = uint32(capacity + capacity/4) // the same headroom as snare
	var objs floor.FloorObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load floor program: %w", err)
	}
	if err := fillFloor(objs.Floor4, blockList(n)); err != nil {
		objs.Close()
		return nil, err
	}
	deadline := monoNow() + uint64(5*24*time.Hour)
	a6 := attacker6.As16()
	if err := objs.Floor6.Put(a6, deadline); err != nil {
		objs.Close()
		return nil, err
	}
	return &objs, nil
}

func fillFloor(m *ebpf.Map, addrs []netip.Addr) error {
	deadline := monoNow() + uint64(5*24*time.Hour)
	keys := make([]uint32, len(addrs))
	vals := make([]uint64, len(addrs))
	for i, a := range addrs {
		b := a.As4()
		keys[i] = uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24 // network order in memory
		vals[i] = deadline
	}
	for i := 0; i < len(keys); i += 4096 {
		j := min(i+4096, len(keys))
		if _, err := m.BatchUpdate(keys[i:j], vals[i:j], nil); err != nil {
			return fmt.Errorf("fill floor map: %w", err)
		}
	}
	return nil
}

// setSnareEntries makes snare hold exactly the first n addresses of blockList(n), the IPv6
// attacker's /64 and, with cidr, one CIDR block.
func (e *env) setSnareEntries(n int, cidr bool) (time.Duration, error) {
	rs := rules(blockList(n), time.Now().Add(5*24*time.Hour))
	rs = append(rs, backend.Rule{Prefix: block6, Deadline: time.Now().Add(5 * 24 * time.Hour)})
	if cidr {
		rs = append(rs, backend.Rule{Prefix: cidrBlock, Deadline: time.Now().Add(5 * 24 * time.Hour)})
	}
	t0 := time.Now()
	_, _, err := e.snare.Replace(context.Background(), backend.RuleList(rs))
	return time.Since(t0), err
}

// testRunResult keeps what the targets table needs.
type testRunResult struct {
	snareDrop, snarePass, snareTrapOff map[int]float64 // by entries
	floorDrop, floorPass               map[int]float64
	xfDrop, xfPass                     float64
}

// row is one line of the per-packet table: a program state (set up by prep, undone by undo)
// and a probe, timed from each of its sources.
type row struct {
	program string
	entries string
	probe   probe
	prog    *ebpf.Program
	prep    func() error
	undo    func() error
	best    map[netip.Addr]float64 // minimum over passes, per source
	verdict string
}

// measure runs every row once per pass, passes times, and keeps each source's minimum:
// interleaving the rows spreads bursts of load from the machine's other users over all of them
// instead of letting one row take the whole burst.
func measure(rows []*row, passes, repeat int) error {
	for i := 0; i < passes; i++ {
		for _, r := range rows {
			if r.prep != nil {
				if err := r.prep(); err != nil {
					return err
				}
			}
			for _, src := range r.probe.sources() {
				p := r.probe.pkt
				p.Src = src
				v, d, err := benchProg(r.prog, p, repeat, 1)
				if err != nil {
					return fmt.Errorf("%s, %s from %s: %w", r.program, r.probe.name, src, err)
				}
				if r.best == nil {
					r.best = map[netip.Addr]float64{}
				}
				if old, ok := r.best[src]; !ok || d < old {
					r.best[src] = d
				}
				if r.verdict != "" && r.verdict != v {
					return fmt.Errorf("%s, %s: verdict %s from %s, %s before", r.program, r.probe.name, v, src, r.verdict)
				}
				r.verdict = v
			}
			if r.undo != nil {
				if err := r.undo(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// ns is the median over the row's sources of their best time.
func (r *row) ns() float64 {
	var ds []float64
	for _, d := range r.best {
		ds = append(ds, d)
	}
	if len(ds) == 0 {
		return 0
	}
	sort.Float64s(ds)
	return ds[len(ds)/2]
}

func (e *env) sectionTestRun() ([]*table, error) {
	repeat, passes := 1000000, 5
	sizes := []int{1, 10000, 1000000}
	if e.quick {
		repeat, passes = 200000, 3
	}
	t := newTable("Per-packet cost, BPF_PROG_TEST_RUN",
		"program", "entries", "packet", "verdict", "ns/packet", "vs floor, same entries")
	t.note("Kernel-measured mean of %s runs per call (whole ns, as the kernel reports it); every row is measured once per pass, "+
		"%d passes interleaved, best pass kept; no NIC involved. "+
		"snare runs with trap detection on (default ports), an allowlist of 5 prefixes and, unless a row says so, empty CIDR tries. "+
		"Packets are 60-byte UDP to port %d unless named otherwise. Blocked-v4 and pass rows are the median over 9 sources "+
		"(a lookup's cost depends on how full its hash bucket happens to be; maps are seeded randomly).", num(float64(repeat)), passes, passPort)
	res := testRunResult{snareDrop: map[int]float64{}, snarePass: map[int]float64{}, snareTrapOff: map[int]float64{},
		floorDrop: map[int]float64{}, floorPass: map[int]float64{}}
	ctx := context.Background()
	v6pkt := lfgen.Packet{Kind: "udp6", Src: attacker6, Dst: netip.MustParseAddr("2001:db8:1::1"), DPort: passPort}
	trapPkt := lfgen.Packet{Kind: "syn4", Src: netip.MustParseAddr("198.18.201.1"), Dst: netip.MustParseAddr("198.18.1.1"), DPort: trapPort}
	trapOn := func() error { return e.setTrap(true) }
	cidr := []backend.Rule{{Prefix: cidrBlock, Deadline: time.Now().Add(5 * 24 * time.Hour)}}

	for _, n := range sizes {
		fl, err := floorProg(n)
		if err != nil {
			return []*table{t}, err
		}
		took, err := e.setSnareEntries(n, false)
		if err != nil {
			fl.Close()
			return []*table{t}, fmt.Errorf("snare: set %d entries: %w", n, err)
		}
		e.log.Info("snare entries set", "n", n, "took", took)
		ns := num(float64(n))
		rows := []*row{
			{program: "floor (bare LRU lookup)", entries: ns, prog: fl.FloorXdp, probe: probe{name: "blocked v4 (exact)", pkt: udp4(attacker), srcs: blockedSrcs(n)}},
			{program: "floor (bare LRU lookup)", entries: ns, prog: fl.FloorXdp, probe: probe{name: "blocked v6 (/128)", pkt: v6pkt}},
			{program: "floor (bare LRU lookup)", entries: ns, prog: fl.FloorXdp, probe: probe{name: "not blocked, passes", pkt: udp4(passSrc), srcs: passSrcs}},
			{program: "snare", entries: ns, prog: e.prog, probe: probe{name: "blocked v4 (exact)", pkt: udp4(attacker), srcs: blockedSrcs(n)}},
			{program: "snare", entries: ns, prog: e.prog, probe: probe{name: "blocked v6 (/64)", pkt: v6pkt}},
			{program: "snare", entries: ns, prog: e.prog, probe: probe{name: "not blocked, passes", pkt: udp4(passSrc), srcs: passSrcs}},
			{program: "snare", entries: ns, prog: e.prog, probe: probe{name: "allowlisted source", pkt: udp4(netip.MustParseAddr("198.18.3.2"))}},
			{program: "snare, trap detection off", entries: ns, prog: e.prog, probe: probe{name: "not blocked, passes", pkt: udp4(passSrc), srcs: passSrcs},
				prep: func() error { return e.setTrap(false) }, undo: trapOn},
			// Log mode, so that the repeated probe stays a trap hit instead of becoming a
			// blocked source after its first run.
			{program: "snare", entries: ns, prog: e.prog, probe: probe{name: "TCP SYN to trap port 31337 (log mode, scan state present)", pkt: trapPkt},
				prep: e.setTrapLog, undo: trapOn},
			{program: "snare", entries: ns + " + 1 CIDR", prog: e.prog, probe: probe{name: "CIDR match (/20)", pkt: udp4(cidrSrc)},
				prep: func() error { return e.snare.Block(ctx, cidr) }},
			{program: "snare", entries: ns + " + 1 CIDR", prog: e.prog, probe: probe{name: "not blocked, CIDR trie non-empty", pkt: udp4(passSrc), srcs: passSrcs},
				undo: func() error { return e.snare.Unblock(ctx, []netip.Prefix{cidrBlock}) }},
		}
		err = measure(rows, passes, repeat)
		fl.Close()
		if err != nil {
			return []*table{t}, err
		}
		fd, fd6, fp := rows[0].ns(), rows[1].ns(), rows[2].ns()
		res.floorDrop[n], res.floorPass[n] = fd, fp
		res.snareDrop[n], res.snarePass[n], res.snareTrapOff[n] = rows[3].ns(), rows[5].ns(), rows[7].ns()
		for i, r := range rows {
			vs := ratio(r.ns(), fp)
			switch {
			case i == 0 || i == 3:
				vs = ratio(r.ns(), fd)
			case i == 1 || i == 4:
				vs = ratio(r.ns(), fd6)
			}
			t.add(r.program, r.entries, r.probe.name, r.verdict, fmt.Sprintf("%.0f", r.ns()), vs)
		}
	}
	if _, err := e.setSnareEntries(capacity, false); err != nil {
		return []*table{t}, err
	}

	// xdp-filter (xdp-tools), IP features only, in the same run.
	xf, err := e.xdpFilterTestRun(repeat, passes)
	if err != nil {
		t.note("xdp-filter: not measured: %v", err)
	}
	for _, r := range xf {
		t.add(r...)
	}
	if len(xf) >= 2 {
		fmt.Sscanf(xf[len(xf)-2][4], "%f", &res.xfDrop)
		fmt.Sscanf(xf[len(xf)-1][4], "%f", &res.xfPass)
	}
	return []*table{t, testRunTargets(res)}, nil
}

func (e *env) setTrapLog() error {
	if err := e.setTrap(true); err != nil {
		return err
	}
	cfg := backend.TrapConfig{Threshold: 1, Window: time.Minute, TTL: 5 * 24 * time.Hour, BlockTCP: false, BlockUDP: false,
		EventsPerSecond: 200, EventBurst: 500, TCPPorts: []uint16{trapPort}}
	return e.snare.SetTrap(context.Background(), cfg)
}

func testRunTargets(r testRunResult) *table {
	t := newTable("Per-packet targets (issue 5, issue 6)", "target", "measured", "limit", "result")
	big := 1000000
	if d, f := r.snareDrop[big], r.floorDrop[big]; f > 0 {
		t.add("blocked v4 at 1M entries vs floor at 1M", ratio(d, f), "≤ 1.15x", passMiss(d <= 1.15*f))
	}
	if d := r.snareDrop[big]; r.xfDrop > 0 {
		t.add("blocked v4 at 1M entries vs xdp-filter drop (10k entries, its maximum)", ratio(d, r.xfDrop), "≤ 1.00x", passMiss(d <= r.xfDrop))
	}
	if a, b := r.snareDrop[1], r.snareDrop[big]; a > 0 {
		t.add("blocked v4: 1M entries vs 1 entry", ratio(b, a), "within ±10%", passMiss(b <= 1.1*a && b >= 0.9*a))
	}
	if p, f := r.snarePass[big], r.floorPass[big]; f > 0 {
		t.add("pass path at 1M entries vs floor pass", ratio(p, f), "≤ 1.30x", passMiss(p <= 1.3*f))
	}
	if on, off := r.snarePass[big], r.snareTrapOff[big]; off > 0 {
		t.add("pass path: trap detection on vs off (1M entries)", ratio(on, off), "≤ 1.05x", passMiss(on <= 1.05*off))
	}
	return t
}
