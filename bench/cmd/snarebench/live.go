package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/snare-dev/snare/bench/floor"
	"github.com/snare-dev/snare/bench/lfgen"
)

// traffic is what the generator sends.
type traffic struct {
	name     string // e.g. "udp4", "udp6"
	source   string // how the table names the source
	pkt      lfgen.Packet
	randBits int
}

func (e *env) trafficKinds() (fixed, random, fixed6 traffic) {
	dst4, dst6 := e.dut.Addr4.Addr(), e.dut.Addr6.Addr()
	base := lfgen.Packet{SrcMAC: e.gen.MAC, DstMAC: e.dut.MAC, DPort: passPort}
	p4, p6 := base, base
	p4.Kind, p4.Src, p4.Dst = "udp4", attacker, dst4
	p6.Kind, p6.Src, p6.Dst = "udp6", attacker6, dst6
	pr := p4
	pr.Src = randBase
	return traffic{"udp4", attacker.String() + " (fixed)", p4, 0},
		traffic{"udp4", fmt.Sprintf("%s/%d random", randBase, 32-randBits), pr, randBits},
		traffic{"udp6", attacker6.String() + " (fixed)", p6, 0}
}

// generate runs the generator in the gen namespace, pinned to CPU 0.
func (e *env) generate(tr traffic, d time.Duration, selfDrop bool) (lfgen.Result, error) {
	frame, err := lfgen.Frame(tr.pkt)
	if err != nil {
		return lfgen.Result{}, err
	}
	var res lfgen.Result
	err = e.lab.Do(e.lab.Peer("gen").NS, func() error {
		var err error
		res, err = lfgen.Run(lfgen.Config{Ifindex: e.gen.Index, Frame: frame, RandBase: tr.pkt.Src, RandBits: tr.randBits,
			SelfDrop: selfDrop, Duration: d, CPU: 0})
		return err
	})
	return res, err
}

// liveRow is one measured configuration and packet stream.
type liveRow struct {
	config, pkt, source, mode string
	frames, dropped           uint64
	elapsed                   time.Duration
	spread                    float64 // (max - min) / 2 / mean of the samples' dropped pps, in %
	genNs                     float64 // the generator's own ns per frame for this traffic
}

func (r liveRow) droppedPPS() float64 { return float64(r.dropped) / r.elapsed.Seconds() }
func (r liveRow) genPPS() float64     { return float64(r.frames) / r.elapsed.Seconds() }

// dutNs estimates the receiver's ns per dropped packet: the core's time minus what the
// generator alone spends on the frames it generated, per packet dropped.
func (r liveRow) dutNs() float64 {
	if r.dropped == 0 || r.genNs == 0 {
		return 0
	}
	return (float64(r.elapsed.Nanoseconds()) - float64(r.frames)*r.genNs) / float64(r.dropped)
}

// liveConfig is one filter on the DUT: set it up, read its drop counter, tear it down.
type liveConfig struct {
	name    string
	setup   func() (counter func() (uint64, error), teardown func(), err error)
	streams []traffic
	// interleave: cheap to set up; samples are taken in turns with the other such configs.
	interleave bool
	// check, if set, compares the derived drop count of the whole configuration with the
	// filter's own counter after the rows and returns a note.
	check func(derived uint64) string
}

func (e *env) sectionLive() ([]*table, error) {
	secs, samples := 2*time.Second, 3
	if e.quick {
		secs, samples = time.Second, 1
	}
	fixed, random, fixed6 := e.trafficKinds()
	t := newTable("Live drop rate on veth (BPF_PROG_TEST_RUN live-frames generator)",
		"configuration", "packet", "source", "XDP on DUT", "generated pps", "dropped pps", "±", "dropped / generated", "DUT ns/pkt (est.)")
	t.note("Generator (netns gen, XDP_REDIRECT of a 60-byte template out of %s) and the receiving veth's NAPI share CPU 0: the generator "+
		"is throttled by the receiver, so a cheaper filter shows as more packets dropped per second. %d sample(s) of %s per row; the XDP rows take their samples in turns; ± is half the "+
		"spread of the samples. DUT ns/pkt = (run time - generated frames x the generator's own ns/frame) / packets dropped. "+
		"Block lists hold filler from 240.0.0.0/8, the random range and the attacker last; random sources are all blocked.", e.gen.Name, samples, secs)
	tg := newTable("Generator alone (its program drops every frame, nothing is sent)", "packet", "source", "generated pps", "ns/frame")

	// snare holds 1,000,000 entries (as the per-packet section leaves it; Replace keeps them).
	if _, err := e.setSnareEntries(capacity, false); err != nil {
		return nil, err
	}
	genNs := map[string]float64{}
	for _, tr := range []traffic{fixed, random, fixed6} {
		r, err := e.generate(tr, secs, true)
		if err != nil {
			return []*table{t, tg}, fmt.Errorf("generator alone: %w", err)
		}
		genNs[tr.name+tr.source] = r.NsPerFrame()
		tg.add(tr.name, tr.source, num(r.PPS()), fmt.Sprintf("%.1f", r.NsPerFrame()))
	}

	nativeDrops := func() (uint64, error) { return e.ethtoolStat(e.lab.Host.NS, e.dut.Name, "rx_queue_0_xdp_drops") }
	var configs []liveConfig
	var floor1M *floor.FloorObjects // loaded once: filling 1,000,000 entries takes seconds
	defer func() {
		if floor1M != nil {
			floor1M.Close()
		}
	}()
	// XDP_DROP of everything: the ceiling of this harness.
	configs = append(configs, liveConfig{name: "XDP_DROP everything (harness ceiling)", streams: []traffic{fixed}, interleave: true,
		setup: func() (func() (uint64, error), func(), error) {
			objs, err := floorProg(1)
			if err != nil {
				return nil, nil, err
			}
			detach, err := e.attach(objs.DropAll, "native")
			if err != nil {
				objs.Close()
				return nil, nil, err
			}
			return nativeDrops, func() { detach(); objs.Close() }, nil
		}})
	snareStreams := []traffic{fixed, random, fixed6}
	if e.quick {
		snareStreams = []traffic{fixed, random}
	}
	configs = append(configs, liveConfig{name: "snare native, 1,000,000 entries", streams: snareStreams, interleave: true,
		setup: func() (func() (uint64, error), func(), error) {
			detach, err := e.attach(e.prog, "native")
			return nativeDrops, detach, err
		}})
	configs = append(configs, liveConfig{name: "snare generic, 1,000,000 entries", streams: []traffic{fixed}, interleave: true,
		setup: func() (func() (uint64, error), func(), error) {
			detach, err := e.attach(e.prog, "generic")
			return e.snareDrops, detach, err
		}})
	floorStreams := []traffic{fixed, random}
	if e.quick {
		floorStreams = []traffic{fixed}
	}
	configs = append(configs, liveConfig{name: "floor (bare LRU lookup) native, 1,000,000 entries", streams: floorStreams, interleave: true,
		setup: func() (func() (uint64, error), func(), error) {
			if floor1M == nil {
				var err error
				if floor1M, err = floorProg(capacity); err != nil {
					return nil, nil, err
				}
			}
			detach, err := e.attach(floor1M.FloorXdp, "native")
			return nativeDrops, detach, err
		}})
	configs = append(configs, liveConfig{name: "xdp-filter native, 10,000 entries (its maximum)", streams: []traffic{fixed}, interleave: true,
		setup: func() (func() (uint64, error), func(), error) {
			prog, m, err := e.xdpFilterLoad("native")
			if err != nil {
				return nil, nil, err
			}
			prog.Close()
			err = xdpFilterFill(m, 10000)
			m.Close()
			if err != nil {
				e.xdpDetach()
				return nil, nil, err
			}
			return nativeDrops, e.xdpDetach, nil
		}})
	iptSizes := []int{100, 1000, 10000}
	setSizes := []int{10000, 1000000}
	if e.quick {
		iptSizes, setSizes = []int{1000}, []int{10000}
	}
	for _, n := range iptSizes {
		configs = append(configs, liveConfig{name: fmt.Sprintf("iptables-legacy raw, %s per-address rules, attacker last", num(float64(n))), streams: []traffic{fixed},
			setup: func() (func() (uint64, error), func(), error) {
				if err := e.iptablesRules(n); err != nil {
					return nil, nil, err
				}
				return e.iptablesDrops, e.iptablesFlush, nil
			}})
	}
	for _, n := range setSizes {
		streams := []traffic{fixed}
		if n == capacity {
			streams = append(streams, random)
		}
		configs = append(configs, liveConfig{name: fmt.Sprintf("ipset hash:ip, %s entries + iptables-legacy raw rule", num(float64(n))), streams: streams,
			setup: func() (func() (uint64, error), func(), error) {
				if _, err := e.ipsetLoad(n); err != nil {
					return nil, nil, err
				}
				return e.iptablesDrops, e.iptablesFlush, nil
			}})
		configs = append(configs, liveConfig{name: fmt.Sprintf("nftables set, %s elements, netdev ingress", num(float64(n))), streams: streams,
			setup: func() (func() (uint64, error), func(), error) {
				if _, err := e.nftLoad(n); err != nil {
					return nil, nil, err
				}
				return e.nftDrops, e.nftFlush, nil
			},
			check: func(derived uint64) string {
				// Emptying the set first makes the counter quick to list.
				e.nsRun(runTimeout, "nft", "flush", "set", "netdev", "snarebench", "blk")
				c, err := e.nftCounter()
				if err != nil {
					return fmt.Sprintf("nftables %s: counter not read: %v", num(float64(n)), err)
				}
				return fmt.Sprintf("nftables set of %s: drops derived from veth rx - UDP seen %s, the rule's own counter %s.", num(float64(n)), num(float64(derived)), num(float64(c)))
			}})
	}

	// snare's own fallback back-end (ipset + iptables raw), last: its chains must not outlive it.
	configs = append(configs, liveConfig{name: "snare iptables fallback (ipset + iptables-legacy raw), 1,000,000 entries", streams: []traffic{fixed},
		setup: func() (func() (uint64, error), func(), error) {
			fb, took, err := e.openFallback(capacity)
			if err != nil {
				return nil, nil, err
			}
			e.log.Info("fallback loaded", "entries", capacity, "took", took)
			counter := func() (uint64, error) {
				st, err := fb.Status(context.Background())
				return st.Counters.Dropped, err
			}
			return counter, func() { e.closeFallback(fb) }, nil
		}})

	type acc struct {
		r      liveRow
		lo, hi float64
		n      int
		err    error
	}
	accs := map[string]*acc{}
	key := func(c liveConfig, tr traffic) string { return c.name + "|" + tr.name + "|" + tr.source }
	// run sets c up, takes n samples of each of its streams, and tears it down.
	run := func(c liveConfig, n int) error {
		t0 := time.Now()
		counter, teardown, err := c.setup()
		e.log.Info("live config ready", "config", c.name, "setup", time.Since(t0).Round(time.Millisecond), "err", err)
		mode := e.xdpMode()
		var derived uint64
		for _, tr := range c.streams {
			a := accs[key(c, tr)]
			if a == nil {
				a = &acc{r: liveRow{config: c.name, pkt: tr.name, source: tr.source, mode: mode, genNs: genNs[tr.name+tr.source]}}
				accs[key(c, tr)] = a
			}
			if err != nil {
				a.err = err
				continue
			}
			for i := 0; i < n && a.err == nil; i++ {
				d0, cerr := counter()
				if cerr != nil {
					a.err = fmt.Errorf("read drop counter: %w", cerr)
					break
				}
				g, gerr := e.generate(tr, secs, false)
				if gerr != nil {
					teardown()
					return gerr
				}
				d1, cerr := counter()
				if cerr != nil {
					a.err = fmt.Errorf("read drop counter: %w", cerr)
					break
				}
				a.r.frames += g.Frames
				a.r.elapsed += g.Elapsed
				a.r.dropped += d1 - d0
				derived += d1 - d0
				pps := float64(d1-d0) / g.Elapsed.Seconds()
				if a.n == 0 || pps < a.lo {
					a.lo = pps
				}
				a.hi = math.Max(a.hi, pps)
				a.n++
				e.log.Info("live sample", "config", c.name, "source", tr.source, "gen_pps", int(float64(g.Frames)/g.Elapsed.Seconds()), "dropped_pps", int(pps))
			}
		}
		if err != nil {
			return nil
		}
		if c.check != nil {
			t.note("%s", c.check(derived))
		}
		teardown()
		return nil
	}
	// Configurations that are cheap to set up take their samples in turns, so that a burst of
	// load from the machine's other users spreads over all of them; the netfilter peers with
	// big lists take theirs back to back.
	for i := 0; i < samples; i++ {
		for _, c := range configs {
			if c.interleave {
				if err := run(c, 1); err != nil {
					return []*table{t, tg}, err
				}
			}
		}
	}
	for _, c := range configs {
		if !c.interleave {
			if err := run(c, samples); err != nil {
				return []*table{t, tg}, err
			}
		}
	}

	var rows []liveRow
	for _, c := range configs {
		for _, tr := range c.streams {
			a := accs[key(c, tr)]
			if a == nil {
				continue
			}
			r := a.r
			if a.err != nil || r.elapsed == 0 {
				t.add(c.name, tr.name, tr.source, r.mode, "", "n/a: "+oneLine(fmt.Errorf("%v", a.err)), "", "", "")
				continue
			}
			if r.dropped > 0 {
				r.spread = 50 * (a.hi - a.lo) / r.droppedPPS()
			}
			rows = append(rows, r)
			dut := "n/a"
			if ns := r.dutNs(); ns > 0 {
				dut = fmt.Sprintf("%.0f", ns)
			}
			share := 0.0
			if r.frames > 0 {
				share = 100 * float64(r.dropped) / float64(r.frames)
			}
			t.add(r.config, r.pkt, r.source, r.mode, num(r.genPPS()), num(r.droppedPPS()), fmt.Sprintf("%.0f%%", r.spread), fmt.Sprintf("%.1f%%", share), dut)
		}
	}
	return []*table{t, tg, liveTargets(rows)}, nil
}

func oneLine(err error) string {
	s := strings.ReplaceAll(err.Error(), "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

func liveTargets(rows []liveRow) *table {
	t := newTable("Live drop-rate targets (issue 5)", "target", "measured", "limit", "result")
	find := func(prefix string, random bool, pkt string) float64 {
		for _, r := range rows {
			if strings.HasPrefix(r.config, prefix) && strings.Contains(r.source, "random") == random && r.pkt == pkt {
				return r.droppedPPS()
			}
		}
		return 0
	}
	snare := find("snare native", false, "udp4")
	snareR := find("snare native", true, "udp4")
	fl := find("floor", false, "udp4")
	xf := find("xdp-filter", false, "udp4")
	bestSet, bestSetR := 0.0, 0.0
	for _, p := range []string{"ipset", "nftables"} {
		for _, r := range rows {
			if !strings.HasPrefix(r.config, p) || r.pkt != "udp4" {
				continue
			}
			if strings.Contains(r.source, "random") {
				bestSetR = math.Max(bestSetR, r.droppedPPS())
			} else {
				bestSet = math.Max(bestSet, r.droppedPPS())
			}
		}
	}
	if snare > 0 && fl > 0 {
		t.add("snare native vs floor native, fixed source", ratio(snare, fl), "≥ 0.90x", passMiss(snare >= 0.9*fl))
	}
	if snare > 0 && xf > 0 {
		t.add("snare native vs xdp-filter native, fixed source", ratio(snare, xf), "≥ 1.00x", passMiss(snare >= xf))
	}
	if snare > 0 && bestSet > 0 {
		t.add("snare native vs best of ipset / nftables, fixed source", ratio(snare, bestSet), "≥ 2.50x", passMiss(snare >= 2.5*bestSet))
	}
	if snareR > 0 && bestSetR > 0 {
		t.add("snare native vs best of ipset / nftables, random sources", ratio(snareR, bestSetR), "≥ 1.50x", passMiss(snareR >= 1.5*bestSetR))
	}
	return t
}

// snareDrops is snare's own drop counter (all reasons), for generic mode where the veth's XDP
// statistics do not see the program.
func (e *env) snareDrops() (uint64, error) {
	st, err := e.snare.Stats()
	if err != nil {
		return 0, err
	}
	return st["drop_exact"].Packets + st["drop_cidr"].Packets + st["drop_trap"].Packets, nil
}

// ---- netfilter peers, all inside the lab's host namespace (ipset, iptables and nftables
// state is per network namespace, so nothing here touches the machine's own firewall).

func (e *env) nsRun(timeout time.Duration, args ...string) (string, error) {
	return cmdOut(timeout, append([]string{"ip", "netns", "exec", e.lab.Host.NS}, args...)...)
}

func (e *env) nsRunFile(timeout time.Duration, content string, args ...string) (time.Duration, error) {
	f, err := os.CreateTemp("", "snarebench-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return 0, err
	}
	f.Close()
	argv := make([]string, len(args))
	for i, a := range args {
		argv[i] = strings.ReplaceAll(a, "@FILE@", f.Name())
	}
	t0 := time.Now()
	_, err = e.nsRun(timeout, argv...)
	return time.Since(t0), err
}

func (e *env) iptablesRules(n int) error {
	var sb strings.Builder
	sb.WriteString("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for _, a := range blockList(n) {
		fmt.Fprintf(&sb, "-A PREROUTING -s %s/32 -j DROP\n", a)
	}
	sb.WriteString("COMMIT\n")
	_, err := e.nsRunFile(runTimeout, sb.String(), "iptables-legacy-restore", "@FILE@")
	return err
}

func (e *env) iptablesDrops() (uint64, error) {
	out, err := e.nsRun(runTimeout, "iptables-legacy", "-t", "raw", "-vnxL", "PREROUTING")
	if err != nil {
		return 0, err
	}
	var sum uint64
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "DROP" {
			n, _ := strconv.ParseUint(f[0], 10, 64)
			sum += n
		}
	}
	return sum, nil
}

func (e *env) iptablesFlush() {
	e.nsRun(runTimeout, "iptables-legacy", "-t", "raw", "-F")
	e.nsRun(runTimeout, "iptables-legacy", "-F")
	e.nsRun(runTimeout, "ipset", "destroy")
}

const ipsetName = "snarebench_blk"

// ipsetLoad creates a hash:ip set with timeouts (as a blocker with expiry needs) holding n
// entries with `ipset restore`, plus one raw PREROUTING rule; it returns the restore time.
func (e *env) ipsetLoad(n int) (time.Duration, error) {
	hs := 1024
	for hs < n {
		hs *= 2
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "create %s hash:ip family inet hashsize %d maxelem %d timeout 432000\n", ipsetName, hs, n+n/4+1024)
	for _, a := range blockList(n) {
		fmt.Fprintf(&sb, "add %s %s\n", ipsetName, a)
	}
	took, err := e.nsRunFile(runTimeout, sb.String(), "ipset", "restore", "-f", "@FILE@")
	if err != nil {
		return 0, err
	}
	_, err = e.nsRun(runTimeout, "iptables-legacy", "-t", "raw", "-A", "PREROUTING", "-m", "set", "--match-set", ipsetName, "src", "-j", "DROP")
	return took, err
}

// nftScript is an nftables table with a timeout set of n elements; hook "ingress" (netdev, on
// the DUT interface) or "" for none (the control-plane timing).
func (e *env) nftScript(n int, ingress bool) string {
	var sb strings.Builder
	sb.WriteString("table netdev snarebench {\n")
	fmt.Fprintf(&sb, "  set blk { type ipv4_addr; flags timeout; timeout 5d; size %d; }\n", n+n/4+1024)
	sb.WriteString("  counter drops { }\n")
	if ingress {
		fmt.Fprintf(&sb, "  chain ingress { type filter hook ingress device %q priority -500; policy accept; ip saddr @blk counter name \"drops\" drop; }\n", e.dut.Name)
	}
	sb.WriteString("}\n")
	list := blockList(n)
	for i := 0; i < len(list); i += 50000 {
		j := min(i+50000, len(list))
		sb.WriteString("add element netdev snarebench blk { ")
		for k := i; k < j; k++ {
			if k > i {
				sb.WriteString(", ")
			}
			sb.WriteString(list[k].String())
		}
		sb.WriteString(" }\n")
	}
	return sb.String()
}

func (e *env) nftLoad(n int) (time.Duration, error) {
	return e.nsRunFile(runTimeout, e.nftScript(n, true), "nft", "-f", "@FILE@")
}

// nftDrops derives nftables' drops as (frames the DUT's NAPI took off the veth ring) - (packets
// that reached UDP): listing any counter of a table makes nft fetch every element of its sets
// (a minute for 1,000,000 elements here). The named counter is read once as a check at the end
// of the row (nftCheck).
func (e *env) nftDrops() (uint64, error) {
	rx, err := e.ethtoolStat(e.lab.Host.NS, e.dut.Name, "rx_queue_0_xdp_packets")
	if err != nil {
		return 0, err
	}
	l4, err := e.udpSeen()
	if err != nil {
		return 0, err
	}
	return rx - l4, nil
}

// udpSeen is the host namespace's count of UDP datagrams that reached the UDP layer.
func (e *env) udpSeen() (uint64, error) {
	out, err := e.nsRun(runTimeout, "cat", "/proc/net/snmp")
	if err != nil {
		return 0, err
	}
	var names, vals []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f[1:]
		} else {
			vals = f[1:]
		}
	}
	var sum uint64
	for i, n := range names {
		if i < len(vals) && (n == "InDatagrams" || n == "NoPorts" || n == "InErrors") {
			v, _ := strconv.ParseUint(vals[i], 10, 64)
			sum += v
		}
	}
	if vals == nil {
		return 0, fmt.Errorf("no Udp line in /proc/net/snmp")
	}
	return sum, nil
}

// nftCounter reads the rule's named counter (slow with big sets: once per configuration).
func (e *env) nftCounter() (uint64, error) {
	out, err := e.nsRun(3*time.Minute, "nft", "list", "counter", "netdev", "snarebench", "drops")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "packets" && i+1 < len(f) {
			return strconv.ParseUint(f[i+1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no packet count in %q", out)
}

func (e *env) nftFlush() {
	e.nsRun(runTimeout, "nft", "delete", "table", "netdev", "snarebench")
}
