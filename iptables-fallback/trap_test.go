package fallback

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"

	"github.com/snare-dev/snare/backend"
)

// unitEnforcer has only what the trap logic needs: log mode and allowlisted sources never touch
// the sets, so these tests run without root.
func unitEnforcer(t *testing.T, cfg backend.TrapConfig) *Enforcer {
	t.Helper()
	scan, err := lru.New[netip.Addr, *scanState](16)
	if err != nil {
		t.Fatal(err)
	}
	e := &Enforcer{log: slog.New(slog.DiscardHandler), events: make(chan backend.TrapEvent, 64), scan: scan, v6bits: 64, trap: cfg}
	e.limiter = rate.NewLimiter(rate.Limit(cfg.EventsPerSecond), cfg.EventBurst)
	return e
}

func drain(e *Enforcer) []backend.TrapEvent {
	var out []backend.TrapEvent
	for {
		select {
		case ev := <-e.events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

func TestTrapThresholdWindow(t *testing.T) {
	e := unitEnforcer(t, backend.TrapConfig{TCPPorts: []uint16{1, 2, 3}, UDPPorts: []uint16{7}, Threshold: 3,
		Window: time.Minute, EventsPerSecond: 100, EventBurst: 100})
	src := netip.MustParseAddr("198.18.5.5")
	t0 := time.Now()
	e.onProbe(probe{src: src, proto: protoTCP, port: 1, flags: 0x02}, t0)
	e.onProbe(probe{src: src, proto: protoTCP, port: 1, flags: 0x02}, t0) // same port: not distinct
	e.onProbe(probe{src: src, proto: protoTCP, port: 9, flags: 0x02}, t0) // not a trap port
	e.onProbe(probe{src: src, proto: protoTCP, port: 2, flags: 0x12}, t0) // SYN|ACK: not a probe
	if evs := drain(e); len(evs) != 0 {
		t.Fatalf("events below the threshold: %v", evs)
	}
	e.onProbe(probe{src: src, proto: protoUDP, port: 7}, t0)
	e.onProbe(probe{src: src, proto: protoTCP, port: 3, flags: 0x29}, t0)
	evs := drain(e)
	if len(evs) != 1 {
		t.Fatalf("got %d events at the threshold, want 1: %v", len(evs), evs)
	}
	ev := evs[0]
	if ev.Source != src || ev.Proto != "tcp" || ev.TCPFlags != "XMAS" || ev.Blocked || ev.Allowlisted || !slices.Equal(ev.Ports, []uint16{1, 7, 3}) {
		t.Errorf("event %+v", ev)
	}
	// Reported once per window.
	e.onProbe(probe{src: src, proto: protoTCP, port: 2, flags: 0x01}, t0.Add(time.Second))
	if evs := drain(e); len(evs) != 0 {
		t.Errorf("second report within the window: %v", evs)
	}
	// A new window starts over.
	later := t0.Add(2 * time.Minute)
	e.onProbe(probe{src: src, proto: protoTCP, port: 1, flags: 0}, later)
	e.onProbe(probe{src: src, proto: protoTCP, port: 2, flags: 0}, later)
	if evs := drain(e); len(evs) != 0 {
		t.Errorf("old window's ports still counted: %v", evs)
	}
	e.onProbe(probe{src: src, proto: protoTCP, port: 3, flags: 0}, later)
	if evs := drain(e); len(evs) != 1 || evs[0].TCPFlags != "NULL" {
		t.Errorf("new window: %v", evs)
	}
}

func TestTrapAllowlistedAndRateLimit(t *testing.T) {
	e := unitEnforcer(t, backend.TrapConfig{TCPPorts: []uint16{1}, Threshold: 1, Window: time.Minute,
		BlockTCP: true, EventsPerSecond: 1, EventBurst: 2})
	e.allow = []netip.Prefix{mustPrefix("198.18.0.0/16"), mustPrefix("2001:db8::/32")}
	now := time.Now()
	for i := range 5 {
		src := netip.AddrFrom4([4]byte{198, 18, 7, byte(i + 1)})
		e.onProbe(probe{src: src, proto: protoTCP, port: 1, flags: 0x02}, now)
	}
	evs := drain(e)
	if len(evs) != 2 {
		t.Fatalf("got %d events with burst 2, want 2", len(evs))
	}
	for _, ev := range evs {
		if !ev.Allowlisted || ev.Blocked {
			t.Errorf("allowlisted source: %+v", ev)
		}
	}
	if n := e.suppressed.Load(); n != 3 {
		t.Errorf("suppressed = %d, want 3", n)
	}
	if e.trapBlocks.Load() != 0 {
		t.Error("an allowlisted source was blocked")
	}
	// IPv6 sources share scan state per IPv6 block length, as in XDP.
	e.trap.EventsPerSecond, e.limiter = 100, rate.NewLimiter(100, 100)
	e.trap.Threshold = 2
	e.trap.TCPPorts = []uint16{1, 2}
	e.onProbe(probe{src: netip.MustParseAddr("2001:db8:5::1"), proto: protoTCP, port: 1, flags: 2}, now)
	e.onProbe(probe{src: netip.MustParseAddr("2001:db8:5::2"), proto: protoTCP, port: 2, flags: 2}, now)
	if evs := drain(e); len(evs) != 1 {
		t.Errorf("two addresses of one /64: %d events, want 1", len(evs))
	}

	// No rate configured: no events, like the XDP program.
	e2 := unitEnforcer(t, backend.TrapConfig{UDPPorts: []uint16{7}, Threshold: 1, Window: time.Minute})
	e2.onProbe(probe{src: netip.MustParseAddr("198.18.7.1"), proto: protoUDP, port: 7}, now)
	if evs := drain(e2); len(evs) != 0 || e2.suppressed.Load() != 1 {
		t.Errorf("events without a rate: %v, suppressed %d", evs, e2.suppressed.Load())
	}
}

func TestParseProbe(t *testing.T) {
	v4 := make([]byte, 40)
	v4[0] = 0x45
	v4[9] = protoTCP
	copy(v4[12:16], []byte{198, 18, 1, 2})
	binary.BigEndian.PutUint16(v4[22:24], 31337)
	v4[33] = 0x02
	p, ok := parseProbe(v4)
	if !ok || p.src != netip.MustParseAddr("198.18.1.2") || p.port != 31337 || p.flags != 0x02 || p.proto != protoTCP {
		t.Errorf("v4 tcp: %+v %v", p, ok)
	}
	frag := slices.Clone(v4)
	binary.BigEndian.PutUint16(frag[6:8], 5) // fragment offset 5
	if _, ok := parseProbe(frag); ok {
		t.Error("later fragment parsed")
	}
	if _, ok := parseProbe(v4[:30]); ok {
		t.Error("truncated TCP header parsed")
	}
	v6 := make([]byte, 48)
	v6[0] = 0x60
	v6[6] = protoUDP
	a := netip.MustParseAddr("2001:db8:1::2").As16()
	copy(v6[8:24], a[:])
	binary.BigEndian.PutUint16(v6[42:44], 161)
	p, ok = parseProbe(v6)
	if !ok || p.src != netip.MustParseAddr("2001:db8:1::2") || p.port != 161 || p.proto != protoUDP {
		t.Errorf("v6 udp: %+v %v", p, ok)
	}
	// A destination-options header before UDP.
	ext := make([]byte, 56)
	copy(ext, v6[:40])
	ext[6] = 60        // next: destination options
	ext[40] = protoUDP // its next header
	ext[41] = 0        // 8 bytes long
	binary.BigEndian.PutUint16(ext[50:52], 162)
	if p, ok := parseProbe(ext); !ok || p.port != 162 || p.proto != protoUDP {
		t.Errorf("v6 with extension header: %+v %v", p, ok)
	}
	for _, bad := range [][]byte{nil, {0x45}, {0x75, 0, 0}} {
		if _, ok := parseProbe(bad); ok {
			t.Errorf("parsed %x", bad)
		}
	}
	for f, want := range map[uint8]string{0: "NULL", 0x29: "XMAS", 0x02: "SYN", 0x01: "FIN", 0x03: "FIN|SYN"} {
		if got := tcpFlags(f); got != want {
			t.Errorf("tcpFlags(%#x) = %s, want %s", f, got, want)
		}
	}
}

// TestTrapScan: real probes (nmap SYN scan, hping3 FIN/NULL/XMAS, UDP) from the attacker's
// namespace hit trap ports, snare blocks the source and reports it; an allowlisted client is
// reported but never blocked; log mode reports without blocking.
func TestTrapScan(t *testing.T) {
	for _, v := range variants() {
		t.Run("variant="+v, func(t *testing.T) {
			f := newFixture(t, v)
			e, ctx := f.e, f.ctx
			att, cli := f.lab.Attacker(), f.lab.Client()
			h4a, h4c := f.hostAddr(att, false), f.hostAddr(cli, false)
			cfg := backend.TrapConfig{TCPPorts: []uint16{31337, 12345}, UDPPorts: []uint16{31335}, Threshold: 1,
				Window: time.Minute, TTL: time.Hour, BlockTCP: true, BlockUDP: false, EventsPerSecond: 100, EventBurst: 100}
			if err := e.SetTrap(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			if err := e.SetAllow(ctx, []netip.Prefix{netip.PrefixFrom(cli.Addr4(), 32)}); err != nil {
				t.Fatal(err)
			}
			evctx, cancel := context.WithCancel(ctx)
			defer cancel()
			events, err := e.TrapEvents(evctx)
			if err != nil {
				t.Fatal(err)
			}
			next := func(what string) backend.TrapEvent {
				t.Helper()
				select {
				case ev := <-events:
					t.Logf("%s: %+v", what, ev)
					return ev
				case <-time.After(10 * time.Second):
					t.Fatalf("%s: no trap event", what)
				}
				return backend.TrapEvent{}
			}

			// Log mode (UDP): reported, not blocked.
			if out, err := f.lab.Run(att.NS, "hping3", "--udp", "-p", "31335", "-c", "1", h4a.String()); err != nil {
				t.Logf("hping3: %v (%s)", err, out)
			}
			if ev := next("udp probe"); ev.Blocked || ev.Proto != "udp" || ev.Source != att.Addr4() {
				t.Errorf("udp log-mode event %+v", ev)
			}
			if !f.reachable(att.NS, h4a) {
				t.Fatal("log mode blocked the attacker")
			}
			// The log-mode report does not use up the block-mode trigger of the same window.

			// Allowlisted client: reported as such, still reachable.
			if out, err := f.lab.Run(cli.NS, "hping3", "-S", "-p", "31337", "-c", "1", h4c.String()); err != nil {
				t.Logf("hping3: %v (%s)", err, out)
			}
			if ev := next("allowlisted probe"); !ev.Allowlisted || ev.Blocked || ev.Source != cli.Addr4() {
				t.Errorf("allowlisted event %+v", ev)
			}
			if !f.reachable(cli.NS, h4c) {
				t.Error("allowlisted client was blocked")
			}

			// nmap SYN scan: blocked.
			if out, err := f.lab.Run(att.NS, "nmap", "-sS", "-Pn", "-n", "-p", "31337", "--max-retries", "0", h4a.String()); err != nil {
				t.Fatalf("nmap: %v (%s)", err, out)
			}
			ev := next("nmap -sS")
			if !ev.Blocked || ev.Proto != "tcp" || ev.TCPFlags != "SYN" || ev.Source != att.Addr4() || !slices.Contains(ev.Ports, 31337) {
				t.Errorf("nmap event %+v", ev)
			}
			if f.reachable(att.NS, h4a) {
				t.Error("trap-blocked attacker still reaches the host")
			}
			rs, ok := rulesByPrefix(t, e)[netip.PrefixFrom(att.Addr4(), 32)]
			if !ok || !rs.FromTrap || rs.Hits < 1 || !sameDeadline(rs.Deadline, ev.Time.Add(time.Hour)) {
				t.Errorf("trap block in Rules: %+v (present %v)", rs, ok)
			}
			st, err := e.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Counters.TrapBlocks != 1 || st.Counters.TrapHits < 3 || st.Counters.ScanEntries < 2 {
				t.Errorf("status counters %+v", st.Counters)
			}

			// nmap FIN, NULL and XMAS scans over IPv6 (hping3 has no IPv6).
			h6a := f.hostAddr(att, true)
			for _, probe := range []struct{ scan, name string }{{"-sF", "FIN"}, {"-sN", "NULL"}, {"-sX", "XMAS"}} {
				if err := e.Unblock(ctx, []netip.Prefix{netip.PrefixFrom(att.Addr6(), 64).Masked()}); err != nil {
					t.Fatal(err)
				}
				e.scanMu.Lock()
				e.scan.Purge() // a fresh window for each probe
				e.scanMu.Unlock()
				if out, err := f.lab.Run(att.NS, "nmap", "-6", probe.scan, "-Pn", "-n", "-p", "12345", "--max-retries", "0", h6a.String()); err != nil {
					t.Fatalf("nmap: %v (%s)", err, out)
				}
				if ev := next(probe.name); !ev.Blocked || ev.TCPFlags != probe.name || ev.Source != att.Addr6() {
					t.Errorf("%s probe event %+v", probe.name, ev)
				}
				if f.reachable(att.NS, h6a) {
					t.Errorf("attacker not blocked over IPv6 after a %s probe", probe.name)
				}
			}
		})
	}
}

// TestTrapReportKinds: a log-mode trigger (UDP here) does not use up a block-mode trigger (TCP) of
// the same source and window, and each report kind is made once per window, as in the XDP
// program. A block is made at every trigger: a source whose probes reach the trap again was
// unblocked, and is blocked again at once.
func TestTrapReportKinds(t *testing.T) {
	f := newFixture(t, variants()[0])
	e, ctx := f.e, f.ctx
	if err := e.SetTrap(ctx, backend.TrapConfig{TCPPorts: []uint16{1, 2}, UDPPorts: []uint16{7, 8}, Threshold: 2,
		Window: time.Minute, TTL: time.Hour, BlockTCP: true, BlockUDP: false, EventsPerSecond: 100, EventBurst: 100}); err != nil {
		t.Fatal(err)
	}
	src, allowed := netip.MustParseAddr("198.18.6.6"), netip.MustParseAddr("198.18.6.7")
	if err := e.SetAllow(ctx, []netip.Prefix{netip.PrefixFrom(allowed, 32)}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, a := range []netip.Addr{src, allowed} {
		e.onProbe(probe{src: a, proto: protoUDP, port: 7}, now)
		e.onProbe(probe{src: a, proto: protoUDP, port: 8}, now) // threshold: logged
		e.onProbe(probe{src: a, proto: protoUDP, port: 7}, now) // logged already
		e.onProbe(probe{src: a, proto: protoTCP, port: 1, flags: 2}, now)
		if a == src {
			if err := e.Unblock(ctx, []netip.Prefix{netip.PrefixFrom(src, 32)}); err != nil {
				t.Fatal(err)
			}
		}
		e.onProbe(probe{src: a, proto: protoTCP, port: 2, flags: 2}, now)
	}
	evs := drain(e)
	if len(evs) != 4 {
		t.Fatalf("events %+v, want a udp report, two tcp blocks and one allowlisted report", evs)
	}
	if evs[0].Proto != "udp" || evs[0].Blocked || evs[0].Source != src {
		t.Errorf("first event %+v, want the udp trigger of %s in log mode", evs[0], src)
	}
	for _, ev := range evs[1:3] {
		if ev.Proto != "tcp" || !ev.Blocked || ev.Source != src {
			t.Errorf("event %+v, want a tcp block of %s", ev, src)
		}
	}
	if !evs[3].Allowlisted || evs[3].Blocked || evs[3].Source != allowed {
		t.Errorf("event %+v, want one allowlisted report of %s", evs[3], allowed)
	}
	if _, ok := rulesByPrefix(t, e)[netip.PrefixFrom(src, 32)]; !ok {
		t.Errorf("%s not blocked again after the unblock", src)
	}
}
