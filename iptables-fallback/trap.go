package fallback

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	nflog "github.com/florianl/go-nflog/v2"
	"golang.org/x/time/rate"

	"github.com/snare-dev/snare/backend"
)

// Trap detection without XDP: the trap rules hand every probe of a trap port to snare over
// NFLOG; snare keeps the per-source scan state here, with the same threshold/window semantics as
// the XDP program, and blocks by adding the source to the ip set. With threshold 1 (the default)
// in block mode the trap rules block in the kernel at the trigger packet (see trapRules) and the
// NFLOG message only reports it: the trap entry gets its comment and deadline here.

const (
	protoTCP = 6
	protoUDP = 17
)

// scanState is one source's trap hits within the current window.
type scanState struct {
	first    time.Time
	ports    []uint32 // proto<<16 | port, in the order first hit
	reported uint8    // repLog | repAllow: which kinds of trigger were reported in this window
}

// A log-mode or allowlisted trigger is reported once per window and kind, as in the XDP
// program. A block is not remembered: a source whose probes reach the trap again is no longer
// blocked (unblocked, expired), and its next trigger blocks it again at once.
// In dry-run mode a blocked source's probes still reach the trap, so its block is reported
// once per window too.
const (
	repLog   = 1
	repAllow = 2
	repDry   = 4
)

// probe is what snare needs from one logged packet.
type probe struct {
	src   netip.Addr
	proto uint8
	port  uint16
	flags uint8 // TCP flags
}

// parseProbe reads the source, protocol, destination port and TCP flags from an IP packet.
func parseProbe(b []byte) (probe, bool) {
	var p probe
	if len(b) < 1 {
		return p, false
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return p, false
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return p, false
		}
		if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			return p, false // a later fragment: no transport header
		}
		p.src = netip.AddrFrom4([4]byte(b[12:16]))
		p.proto = b[9]
		l4 = b[ihl:]
	case 6:
		if len(b) < 40 {
			return p, false
		}
		p.src = netip.AddrFrom16([16]byte(b[8:24]))
		p.proto, l4 = skipExtHeaders(b[6], b[40:])
	default:
		return p, false
	}
	switch p.proto {
	case protoTCP:
		if len(l4) < 14 {
			return p, false
		}
		p.flags = l4[13]
	case protoUDP:
		if len(l4) < 4 {
			return p, false
		}
	default:
		return p, false
	}
	p.port = binary.BigEndian.Uint16(l4[2:4])
	return p, true
}

// skipExtHeaders walks IPv6 extension headers (a bounded number, as the XDP parser does) to the
// transport header. A fragment header ends the walk: only a first fragment carries the ports.
func skipExtHeaders(next uint8, b []byte) (uint8, []byte) {
	for range 8 {
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(b) < 8 {
				return 0, nil
			}
			n := (int(b[1]) + 1) * 8
			if len(b) < n {
				return 0, nil
			}
			next, b = b[0], b[n:]
		case 44: // fragment
			if len(b) < 8 || binary.BigEndian.Uint16(b[2:4])&0xfff8 != 0 {
				return 0, nil
			}
			next, b = b[0], b[8:]
		default:
			return next, b
		}
	}
	return 0, nil
}

// tcpFlags names a probe's flags the way the XDP back-end does: NULL, XMAS, or the flags joined.
func tcpFlags(f uint8) string {
	if f == 0 {
		return "NULL"
	}
	if f&0x3f == 0x29 {
		return "XMAS"
	}
	names := []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}
	var out []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, "|")
}

func (e *Enforcer) startNflog(ctx context.Context) error {
	nf, err := nflog.Open(&nflog.Config{
		NetNS:    e.ns.fd(),
		Group:    e.opts.NFLOGGroup,
		Copymode: nflog.CopyPacket,
		Bufsize:  128,
	})
	if err != nil {
		return fmt.Errorf("open nflog group %d: %w", e.opts.NFLOGGroup, err)
	}
	hook := func(a nflog.Attribute) int {
		if a.Payload != nil {
			if p, ok := parseProbe(*a.Payload); ok {
				e.onProbe(p, time.Now())
			}
		}
		return 0
	}
	errfn := func(err error) int {
		if ctx.Err() != nil {
			return 1
		}
		// ENOBUFS: the kernel dropped log messages under load; keep reading.
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			e.log.Warn("read nflog", "err", err)
		}
		return 0
	}
	if err := nf.RegisterWithErrorFunc(ctx, hook, errfn); err != nil {
		nf.Close()
		return fmt.Errorf("listen on nflog group %d (is another snared using it?): %w", e.opts.NFLOGGroup, err)
	}
	e.nflog = nf
	return nil
}

// onProbe runs the trap logic for one logged packet: count the distinct trap ports of the source
// within the window and, at the threshold, block it (unless allowlisted or in log mode) and report.
func (e *Enforcer) onProbe(p probe, now time.Time) {
	e.mu.Lock()
	cfg, allow, v6bits, limiter, dry := e.trap, e.allow, e.v6bits, e.limiter, e.settings.DryRun
	e.mu.Unlock()
	ports, block := cfg.UDPPorts, cfg.BlockUDP
	if p.proto == protoTCP {
		ports, block = cfg.TCPPorts, cfg.BlockTCP
		if p.flags&(0x10|0x04) != 0 { // ACK or RST: not a probe (the rule filters these too)
			return
		}
	}
	if !slices.Contains(ports, p.port) {
		return
	}
	isAllowed := allowlisted(allow, p.src.Unmap())
	// The trap rule itself blocked the source (see trapRules): this message is the report.
	// A blocked source's packets never reach the trap rules, so every probe that does is a new
	// kernel block (after an unblock or expiry within the window) and is reported as one.
	kernelBlocked := block && cfg.Threshold == 1 && !dry && !isAllowed
	key := netip.PrefixFrom(p.src.Unmap(), 32)
	if key.Addr().Is6() {
		key = netip.PrefixFrom(p.src, v6bits).Masked()
	}

	e.scanMu.Lock()
	st, ok := e.scan.Get(key.Addr())
	if !ok || now.Sub(st.first) > cfg.Window {
		st = &scanState{first: now}
		e.scan.Add(key.Addr(), st)
	}
	pp := uint32(p.proto)<<16 | uint32(p.port)
	if !slices.Contains(st.ports, pp) && len(st.ports) < backend.MaxTrapThreshold {
		st.ports = append(st.ports, pp)
	}
	var once uint8 // the kind of report made once per window, 0 for a block
	switch {
	case isAllowed:
		once = repAllow
	case !block:
		once = repLog
	case dry:
		once = repDry
	}
	if len(st.ports) < cfg.Threshold || st.reported&once != 0 {
		e.scanMu.Unlock()
		return
	}
	st.reported |= once
	ev := backend.TrapEvent{Time: now, Source: p.src.Unmap(), Proto: "udp"}
	for _, pp := range st.ports {
		ev.Ports = append(ev.Ports, uint16(pp))
	}
	e.scanMu.Unlock()

	if p.proto == protoTCP {
		ev.Proto, ev.TCPFlags = "tcp", tcpFlags(p.flags)
	}
	switch {
	case isAllowed:
		ev.Allowlisted = true
	case block:
		var deadline time.Time
		if cfg.TTL > 0 {
			deadline = now.Add(cfg.TTL)
		}
		// Written even when the kernel already inserted the entry: it marks it as a trap
		// block and gives it the real deadline (beyond ipset's maximum timeout). The kernel's
		// entry keeps its counters; a block made here counts its trigger, as in XDP.
		se, _ := entryFor(key, deadline, true, now)
		if !kernelBlocked {
			se.Packets = 1
		}
		set, isNet := e.setFor(key, v6bits)
		if err := e.sets.add(set, isNet, []setEntry{se}); errors.Is(err, ipsetError(ipsetErrHashFull)) {
			ev.Full = true // ipset never evicts: the blocks already in the set stay
		} else if err != nil {
			// A full set fails every trap block of a flood: log the first of each minute.
			if n := e.trapErrors.Add(1); n == 1 || now.Sub(time.Unix(0, e.trapErrLogged.Load())) > time.Minute {
				e.trapErrLogged.Store(now.UnixNano())
				e.log.Error("trap block failed", "source", ev.Source, "failures", n, "err", err)
			}
		} else {
			ev.Blocked = true
			if !kernelBlocked { // kernel blocks are counted by their DROP rule
				e.trapBlocks.Add(1)
			}
		}
	}
	if !limiter.AllowN(now, 1) {
		e.suppressed.Add(1)
		return
	}
	select {
	case e.events <- ev:
	default:
		e.suppressed.Add(1) // nobody reads events fast enough
	}
}

func allowlisted(allow []netip.Prefix, a netip.Addr) bool {
	for _, p := range allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// SetTrap implements backend.Enforcer: it writes the trap ports into the two bitmap:port sets and
// adds or removes the trap rules.
func (e *Enforcer) SetTrap(ctx context.Context, cfg backend.TrapConfig) error {
	on := len(cfg.TCPPorts)+len(cfg.UDPPorts) > 0
	if on && (cfg.Threshold < 1 || cfg.Threshold > backend.MaxTrapThreshold) {
		return fmt.Errorf("trap threshold %d out of range 1..%d", cfg.Threshold, backend.MaxTrapThreshold)
	}
	if on && cfg.Window <= 0 {
		return fmt.Errorf("trap window must be positive, got %s", cfg.Window)
	}
	if cfg.TTL < 0 {
		return fmt.Errorf("trap ttl must not be negative, got %s", cfg.TTL)
	}
	cfg.TCPPorts = slices.Clone(cfg.TCPPorts)
	cfg.UDPPorts = slices.Clone(cfg.UDPPorts)
	limiter := rate.NewLimiter(0, 0) // like the XDP program: no rate, no events
	if cfg.EventsPerSecond > 0 {
		limiter = rate.NewLimiter(rate.Limit(cfg.EventsPerSecond), max(cfg.EventBurst, 1))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.trap, e.limiter = cfg, limiter
	if err := e.writeTrapPortsLocked(); err != nil {
		return err
	}
	_, err := e.syncChainsLocked()
	return err
}

// writeTrapPortsLocked makes the bitmap:port sets hold the configured ports.
func (e *Enforcer) writeTrapPortsLocked() error {
	for _, s := range []struct {
		name  string
		ports []uint16
	}{{e.n.trapTCP, e.trap.TCPPorts}, {e.n.trapUDP, e.trap.UDPPorts}} {
		have, err := e.sets.listPorts(s.name)
		if err != nil {
			return err
		}
		var stale []uint16
		for _, p := range have {
			if !slices.Contains(s.ports, p) {
				stale = append(stale, p)
			}
		}
		if err := e.sets.addPorts(s.name, s.ports); err != nil {
			return err
		}
		if err := e.sets.delPorts(s.name, stale); err != nil {
			return err
		}
	}
	return nil
}

// loadTrapPorts adopts the trap ports a previous run left in the sets, so a restart keeps the trap
// rules in place until the daemon configures them again (with XDP's defaults until then).
func (e *Enforcer) loadTrapPorts() error {
	tcp, err := e.sets.listPorts(e.n.trapTCP)
	if err != nil {
		return err
	}
	udp, err := e.sets.listPorts(e.n.trapUDP)
	if err != nil {
		return err
	}
	e.trap = backend.TrapConfig{TCPPorts: tcp, UDPPorts: udp, Threshold: 1, Window: time.Minute,
		BlockTCP: true, BlockUDP: true}
	return nil
}

// TrapEvents implements backend.Enforcer. Events found while nobody reads (the buffer holds
// 1024) are counted as suppressed.
func (e *Enforcer) TrapEvents(ctx context.Context) (<-chan backend.TrapEvent, error) {
	out := make(chan backend.TrapEvent, 256)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-e.events:
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// Status implements backend.Enforcer. Packet counters come from the rules (they restart at zero
// when a rule is rewritten), trap blocks and suppressed events from this process.
func (e *Enforcer) Status(ctx context.Context) (backend.Status, error) {
	st := backend.Status{Backend: "iptables"}
	if len(e.opts.Interfaces) == 0 {
		st.Interfaces = []backend.InterfaceStatus{{Name: "all", Mode: "iptables"}}
	}
	for _, name := range e.opts.Interfaces {
		st.Interfaces = append(st.Interfaces, backend.InterfaceStatus{Name: name, Mode: "iptables"})
	}
	cn := &st.Counters
	cn.ByReason = map[string]uint64{}
	cn.BytesByReason = map[string]uint64{}
	var total uint64
	for _, f := range e.fams {
		e.mu.Lock()
		main, trap := e.rulesLocked(f)
		e.mu.Unlock()
		for _, c := range []struct {
			chain string
			rules []rule
		}{{e.n.chain, main}, {e.n.trapChain, trap}} {
			counts, err := f.ruleCounters(c.chain)
			if err != nil {
				return st, fmt.Errorf("%s counters: %w", f.name, err)
			}
			if len(counts) != len(c.rules) {
				continue // being repaired: no position-to-reason mapping
			}
			for i, r := range c.rules {
				if r.reason != "" {
					cn.ByReason[r.reason] += counts[i].packets
					cn.BytesByReason[r.reason] += counts[i].bytes
				}
			}
		}
		n, err := f.jumpPackets(e.n.chain)
		if err != nil {
			return st, fmt.Errorf("%s counters: %w", f.name, err)
		}
		total += n
	}
	cn.ByReason["trap_block"] += e.trapBlocks.Load() // plus the kernel's (DROP rule counters)
	cn.ByReason["event_suppressed"] = e.suppressed.Load()
	cn.ByReason["trap_block_failed"] = e.trapErrors.Load()
	cn.Dropped = cn.ByReason["drop_exact"] + cn.ByReason["drop_cidr"]
	if total > cn.Dropped {
		cn.Passed = total - cn.Dropped
	}
	cn.ByReason["pass"] = cn.Passed - min(cn.Passed, cn.ByReason["pass_allow"]+cn.ByReason["dry_run"])
	cn.TrapHits = cn.ByReason["trap_hit"]
	cn.TrapBlocks = cn.ByReason["trap_block"]
	cn.Suppressed = cn.ByReason["event_suppressed"]
	cn.Capacity = e.opts.Capacity
	for _, set := range []string{e.n.ip4, e.n.ip6, e.n.net4, e.n.net6} {
		h, err := e.sets.header(set)
		if err != nil {
			return st, err
		}
		cn.Entries += int(h.Elements)
	}
	e.scanMu.Lock()
	cn.ScanEntries = e.scan.Len()
	e.scanMu.Unlock()
	return st, nil
}
