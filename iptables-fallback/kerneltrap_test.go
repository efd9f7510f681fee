package fallback

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
)

// TestTrapKernelBlock: with threshold 1 in block mode the trap rules block in the kernel at the
// trigger packet. The enforcer is closed before the scan, so no user space reads the NFLOG
// messages: the trigger probe itself is dropped, the source lands in the block set with the trap
// TTL, and its next packet to an open, non-trap port is dropped. An allowlisted client probing
// the same trap port is never added. A new enforcer then reports the kernel's block as a trap
// block (marked in the trapped set, since no NFLOG report wrote its comment), and threshold 2,
// log mode and dry-run take the kernel block rules out again.
func TestTrapKernelBlock(t *testing.T) {
	for _, v := range variants() {
		t.Run("variant="+v, func(t *testing.T) {
			f := newFixture(t, v)
			e, ctx := f.e, f.ctx
			att, cli := f.lab.Attacker(), f.lab.Client()
			h4a, h4c, h6a := f.hostAddr(att, false), f.hostAddr(cli, false), f.hostAddr(att, true)

			// An open web port on the host (dual-stack); the kernel answers SYNs by itself.
			var ln net.Listener
			if err := f.lab.Do(f.lab.Host.NS, func() error {
				var err error
				ln, err = net.Listen("tcp", ":8080")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })

			cfg := backend.TrapConfig{TCPPorts: []uint16{79}, UDPPorts: []uint16{69}, Threshold: 1,
				Window: time.Minute, TTL: time.Hour, BlockTCP: true, BlockUDP: true, EventsPerSecond: 100, EventBurst: 100}
			if err := e.SetTrap(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			if err := e.SetAllow(ctx, []netip.Prefix{netip.PrefixFrom(cli.Addr4(), 32)}); err != nil {
				t.Fatal(err)
			}
			for _, v6 := range []bool{false, true} {
				trapChain := f.ipt(t, v6, "-t", "raw", "-S", strings.ToUpper(f.prefix)+"-TRAP")
				for _, proto := range []string{"tcp", "udp"} {
					if n := countLines(trapChain, "-p "+proto, "-j SET --add-set", "--timeout 3600"); n != 2 {
						t.Errorf("v6=%v: %d %s SET rules with the trap TTL, want 2 (mark and block):\n%s", v6, n, proto, trapChain)
					}
					if n := countLines(trapChain, "-p "+proto, "! --match-set", "-j DROP"); n != 1 {
						t.Errorf("v6=%v: %d %s DROP rules skipping the allowlist, want 1:\n%s", v6, n, proto, trapChain)
					}
				}
			}
			// No user space from here on: nobody reads NFLOG.
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}

			webOpen := func(ns string, dst netip.Addr) bool {
				t.Helper()
				args := []string{"-sS", "-Pn", "-n", "-p", "8080", "--max-retries", "1", dst.String()}
				if dst.Is6() {
					args = append([]string{"-6"}, args...)
				}
				out, err := f.lab.Run(ns, "nmap", args...)
				if err != nil {
					t.Fatalf("nmap: %v (%s)", err, out)
				}
				return strings.Contains(out, "8080/tcp open")
			}
			// trigger sends one SYN to the trap port and tells whether anything came back (the
			// host's RST when the probe is not dropped).
			trigger := func(ns string, dst netip.Addr) bool {
				t.Helper()
				out, _ := f.lab.Run(ns, "hping3", "-S", "-p", "79", "-c", "1", dst.String())
				t.Logf("hping3 from %s: %s", ns, out)
				if !strings.Contains(out, "1 packets transmitted") {
					t.Fatalf("hping3 did not send: %s", out)
				}
				return !strings.Contains(out, "0 packets received")
			}
			if !webOpen(att.NS, h4a) || !webOpen(cli.NS, h4c) {
				t.Fatal("web port not open before the scan")
			}

			if trigger(att.NS, h4a) {
				t.Error("the trigger probe was answered: not dropped")
			}
			if webOpen(att.NS, h4a) {
				t.Error("attacker still sees 8080 open after the trap probe")
			}
			set4 := f.ipsetList(t, f.prefix+"-ip4")
			if ttl, ok := entryTimeout(set4, att.Addr4().String()); !ok || ttl < 3500 || ttl > 3600 {
				t.Errorf("attacker in the ip4 set with timeout %d (present %v), want about 3600:\n%s", ttl, ok, set4)
			}

			// The allowlisted client: answered, never added, still served.
			if !trigger(cli.NS, h4c) {
				t.Error("allowlisted client's trap probe was dropped")
			}
			if !webOpen(cli.NS, h4c) {
				t.Error("allowlisted client lost the web port")
			}
			if _, ok := entryTimeout(f.ipsetList(t, f.prefix+"-ip4"), cli.Addr4().String()); ok {
				t.Error("allowlisted client was added to the block set")
			}

			// IPv6: the /64 goes into the ip6 set at the trigger.
			if webOpen(att.NS, h6a) != true {
				t.Fatal("web port not open over IPv6 before the scan")
			}
			if out, err := f.lab.Run(att.NS, "nmap", "-6", "-sS", "-Pn", "-n", "-p", "79", "--max-retries", "0", h6a.String()); err != nil {
				t.Fatalf("nmap: %v (%s)", err, out)
			}
			if webOpen(att.NS, h6a) {
				t.Error("attacker still sees 8080 open over IPv6 after the trap probe")
			}
			net6 := netip.PrefixFrom(att.Addr6(), 64).Masked().Addr().String()
			if _, ok := entryTimeout(f.ipsetList(t, f.prefix+"-ip6"), net6); !ok {
				t.Errorf("attacker's /64 %s not in the ip6 set", net6)
			}

			// A new enforcer (a restarted daemon) finds the kernel's blocks; the trap rules
			// counted them.
			e2 := f.open(t)
			rules := rulesByPrefix(t, e2)
			if rs, ok := rules[netip.PrefixFrom(att.Addr4(), 32)]; !ok || rs.Hits < 1 || !rs.FromTrap ||
				!withinSlack(rs.Deadline, time.Now().Add(time.Hour), time.Minute) {
				t.Errorf("kernel trap block in Rules: %+v (present %v)", rs, ok)
			}
			if rs, ok := rules[netip.PrefixFrom(att.Addr6(), 64).Masked()]; !ok || !rs.FromTrap {
				t.Errorf("kernel trap block of the /64 in Rules: %+v (present %v)", rs, ok)
			}
			// A block made by hand is no trap block.
			manual := netip.MustParsePrefix("198.18.9.9/32")
			if err := e2.Block(ctx, []backend.Rule{{Prefix: manual, Deadline: time.Now().Add(time.Hour)}}); err != nil {
				t.Fatal(err)
			}
			if rs := rulesByPrefix(t, e2)[manual]; rs.FromTrap {
				t.Errorf("manual block reported as a trap block: %+v", rs)
			}
			st, err := e2.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Counters.TrapBlocks != 2 {
				t.Errorf("trap blocks %d, want 2 (IPv4 and IPv6 trigger)", st.Counters.TrapBlocks)
			}

			// Threshold 2 and log mode: no kernel block rules.
			for _, c := range []backend.TrapConfig{
				{TCPPorts: cfg.TCPPorts, UDPPorts: cfg.UDPPorts, Threshold: 2, Window: time.Minute, TTL: time.Hour, BlockTCP: true, BlockUDP: true},
				{TCPPorts: cfg.TCPPorts, UDPPorts: cfg.UDPPorts, Threshold: 1, Window: time.Minute, TTL: time.Hour},
			} {
				if err := e2.SetTrap(ctx, c); err != nil {
					t.Fatal(err)
				}
				trapChain := f.ipt(t, false, "-t", "raw", "-S", strings.ToUpper(f.prefix)+"-TRAP")
				if strings.Contains(trapChain, "-j SET") || strings.Contains(trapChain, "-j DROP") ||
					countLines(trapChain, "-j NFLOG") != 2 {
					t.Errorf("threshold %d block %v: trap chain\n%s", c.Threshold, c.BlockTCP, trapChain)
				}
			}
			// Dry-run: no kernel block either.
			if err := e2.SetTrap(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			if err := e2.SetSettings(ctx, backend.Settings{DryRun: true}); err != nil {
				t.Fatal(err)
			}
			if trapChain := f.ipt(t, true, "-t", "raw", "-S", strings.ToUpper(f.prefix)+"-TRAP"); strings.Contains(trapChain, "-j SET") {
				t.Errorf("dry-run trap chain blocks:\n%s", trapChain)
			}
		})
	}
}

// TestTrapKernelBlockedEvent: when the trap rule already blocked the source, the NFLOG report
// becomes a Blocked event, and a new probe after an unblock within the window (the kernel blocked
// again) is reported again; an allowlisted source is reported once per window, not blocked.
func TestTrapKernelBlockedEvent(t *testing.T) {
	for _, v := range variants()[:1] {
		f := newFixture(t, v)
		e, ctx := f.e, f.ctx
		cfg := backend.TrapConfig{TCPPorts: []uint16{79}, Threshold: 1, Window: time.Minute, TTL: 10 * 24 * 365 * time.Hour,
			BlockTCP: true, EventsPerSecond: 100, EventBurst: 100}
		if err := e.SetTrap(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		src, allowed := netip.MustParseAddr("198.18.7.7"), netip.MustParseAddr("198.18.7.8")
		if err := e.SetAllow(ctx, []netip.Prefix{netip.PrefixFrom(allowed, 32)}); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		for range 2 {
			e.onProbe(probe{src: src, proto: protoTCP, port: 79, flags: 2}, now)
			if err := e.Unblock(ctx, []netip.Prefix{netip.PrefixFrom(src, 32)}); err != nil {
				t.Fatal(err)
			}
		}
		e.onProbe(probe{src: src, proto: protoTCP, port: 79, flags: 2}, now)
		e.onProbe(probe{src: allowed, proto: protoTCP, port: 79, flags: 2}, now)
		e.onProbe(probe{src: allowed, proto: protoTCP, port: 79, flags: 2}, now)
		evs := drain(e)
		if len(evs) != 4 {
			t.Fatalf("events %+v, want 3 blocked and 1 allowlisted", evs)
		}
		for _, ev := range evs[:3] {
			if !ev.Blocked || ev.Source != src {
				t.Errorf("event %+v, want blocked %s", ev, src)
			}
		}
		if !evs[3].Allowlisted || evs[3].Blocked {
			t.Errorf("allowlisted event %+v", evs[3])
		}
		// The entry is marked as a trap block, with the real deadline beyond ipset's maximum.
		rs, ok := rulesByPrefix(t, e)[netip.PrefixFrom(src, 32)]
		if !ok || !rs.FromTrap || !withinSlack(rs.Deadline, now.Add(cfg.TTL), time.Second) {
			t.Errorf("trap block %+v (present %v)", rs, ok)
		}
		if _, ok := rulesByPrefix(t, e)[netip.PrefixFrom(allowed, 32)]; ok {
			t.Error("allowlisted source blocked")
		}
		st, err := e.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Counters.TrapBlocks != 0 {
			t.Errorf("trap blocks %d: the kernel's DROP rule counts them, not the report", st.Counters.TrapBlocks)
		}
	}
}

// countLines counts the lines of out that contain every one of parts.
func countLines(out string, parts ...string) int {
	n := 0
next:
	for _, l := range strings.Split(out, "\n") {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		n++
	}
	return n
}

// entryTimeout finds addr in an `ipset list` output and returns its timeout.
func entryTimeout(list, addr string) (int, bool) {
	for _, l := range strings.Split(list, "\n") {
		fields := strings.Fields(l)
		if len(fields) == 0 || fields[0] != addr {
			continue
		}
		for i := range len(fields) - 1 {
			if fields[i] == "timeout" {
				n := 0
				for _, c := range fields[i+1] {
					n = n*10 + int(c-'0')
				}
				return n, true
			}
		}
		return 0, true
	}
	return 0, false
}
