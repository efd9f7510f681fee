package loader

import (
	"context"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/backend"
)

func trapConfig(threshold int, window time.Duration) backend.TrapConfig {
	return backend.TrapConfig{
		TCPPorts:        []uint16{1, 31337, 12345, 6667},
		UDPPorts:        []uint16{7, 31337},
		Threshold:       threshold,
		Window:          window,
		TTL:             time.Hour,
		BlockTCP:        true,
		BlockUDP:        true,
		EventsPerSecond: 1000,
		EventBurst:      1000,
	}
}

func setTrap(t testing.TB, x *XDP, cfg backend.TrapConfig) {
	t.Helper()
	if err := x.SetTrap(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
}

// events opens the ring buffer reader and returns a function that waits briefly for the next event.
func events(t testing.TB, x *XDP) func() (backend.TrapEvent, bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := x.TrapEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return func() (backend.TrapEvent, bool) {
		select {
		case ev := <-ch:
			return ev, true
		case <-time.After(time.Second):
			return backend.TrapEvent{}, false
		}
	}
}

// TestTrapFlags sends one packet per TCP flag combination to a trap port from a fresh source:
// probes (no ACK, no RST) trigger at threshold 1; packets that belong to a connection never do.
func TestTrapFlags(t *testing.T) {
	x := newUnattached(t, 1024)
	setTrap(t, x, trapConfig(1, time.Minute))
	next := events(t, x)

	for i, tc := range []struct {
		flags string
		want  string // verdict of the trigger packet itself
		name  string // flag name the event reports
	}{
		{"S", "drop", "SYN"},
		{"F", "drop", "FIN"},
		{"", "drop", "NULL"},
		{"FPU", "drop", "XMAS"},
		{"SF", "drop", "FIN|SYN"},
		{"SA", "pass", ""},
		{"A", "pass", ""},
		{"R", "pass", ""},
		{"RA", "pass", ""},
		{"FA", "pass", ""},
		{"PA", "pass", ""},
	} {
		t.Run("flags "+tc.flags, func(t *testing.T) {
			src := netip.AddrFrom4([4]byte{198, 18, 10, byte(i + 1)}).String()
			got := run(t, x, frame(t, pkt{src: src, dst: host4, proto: "tcp", dport: 31337, flags: tc.flags}))
			if got != tc.want {
				t.Fatalf("trigger packet: %s, want %s", got, tc.want)
			}
			// The next packet from the same source, to a non-trap port, tells whether it is blocked.
			after := run(t, x, frame(t, pkt{src: src, dst: host4, proto: "tcp", dport: 80, flags: "S"}))
			if tc.want == "drop" {
				if after != "drop" {
					t.Fatalf("packet after trigger: %s, want drop", after)
				}
				ev, ok := next()
				if !ok {
					t.Fatal("no trap event")
				}
				if ev.Source.String() != src || !ev.Blocked || ev.Proto != "tcp" || ev.TCPFlags != tc.name ||
					len(ev.Ports) != 1 || ev.Ports[0] != 31337 {
					t.Fatalf("event %+v", ev)
				}
			} else if after != "pass" {
				t.Fatalf("connection packet blocked its source: %s", after)
			}
		})
	}
	if _, ok := next(); ok {
		t.Fatal("unexpected extra event")
	}
}

func TestTrapPortsAndProtocols(t *testing.T) {
	x := newUnattached(t, 1024)
	setTrap(t, x, trapConfig(1, time.Minute))
	for _, tc := range []struct {
		name string
		p    pkt
		want string
	}{
		{"tcp non-trap port", pkt{src: "198.18.20.1", dst: host4, proto: "tcp", dport: 80, flags: "S"}, "pass"},
		{"udp port trapped only for tcp", pkt{src: "198.18.20.2", dst: host4, proto: "udp", dport: 6667}, "pass"},
		{"tcp port trapped only for udp", pkt{src: "198.18.20.3", dst: host4, proto: "tcp", dport: 7, flags: "S"}, "pass"},
		{"udp trap", pkt{src: "198.18.20.4", dst: host4, proto: "udp", dport: 7}, "drop"},
		{"icmp never trips", pkt{src: "198.18.20.5", dst: host4, proto: "icmp"}, "pass"},
		{"v6 tcp trap", pkt{src: "2001:db8:20::1", dst: host6, proto: "tcp", dport: 12345, flags: "S"}, "drop"},
		{"v6 udp trap", pkt{src: "2001:db8:21::1", dst: host6, proto: "udp", dport: 31337}, "drop"},
		{"v6 udp non-trap", pkt{src: "2001:db8:22::1", dst: host6, proto: "udp", dport: 53}, "pass"},
		{"v4 trap behind vlan", pkt{src: "198.18.20.6", dst: host4, proto: "tcp", dport: 1, flags: "S", vlans: 1}, "drop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := run(t, x, frame(t, tc.p)); got != tc.want {
				t.Fatalf("verdict %s, want %s", got, tc.want)
			}
		})
	}
	rules, err := x.Rules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, r := range rules {
		if !r.FromTrap {
			t.Errorf("rule %s not marked as a trap block", r.Prefix)
		}
		if d := time.Until(r.Deadline); d < 59*time.Minute || d > 61*time.Minute {
			t.Errorf("rule %s deadline in %s, want the trap ttl of 1h", r.Prefix, d)
		}
		got[r.Prefix.String()] = true
	}
	// IPv6 sources are blocked as their /64.
	for _, want := range []string{"198.18.20.4/32", "2001:db8:20::/64", "2001:db8:21::/64", "198.18.20.6/32"} {
		if !got[want] {
			t.Errorf("missing trap block %s in %v", want, got)
		}
	}
	if len(got) != 4 {
		t.Errorf("trap blocks %v, want exactly 4", got)
	}
}

func TestTrapThresholdAndWindow(t *testing.T) {
	x := newUnattached(t, 1024)
	setTrap(t, x, trapConfig(3, 400*time.Millisecond))
	send := func(src string, port uint16) string {
		return run(t, x, frame(t, pkt{src: src, dst: host4, proto: "tcp", dport: port, flags: "S"}))
	}
	const a = "198.18.30.1"
	// The same trap port again and again is one distinct port: never reaches 3.
	for range 5 {
		if got := send(a, 31337); got != "pass" {
			t.Fatalf("repeated port: %s", got)
		}
	}
	if got := send(a, 12345); got != "pass" {
		t.Fatalf("second distinct port: %s", got)
	}
	// The same port number over UDP is a distinct (proto, port): the third one triggers.
	if got := run(t, x, frame(t, pkt{src: a, dst: host4, proto: "udp", dport: 31337})); got != "drop" {
		t.Fatalf("third distinct port: %s", got)
	}

	// Two ports, then the window passes: the count starts again.
	const b = "198.18.30.2"
	send(b, 1)
	send(b, 31337)
	time.Sleep(450 * time.Millisecond)
	if got := send(b, 12345); got != "pass" {
		t.Fatalf("after the window: %s, want pass (count restarted)", got)
	}
	send(b, 6667)
	if got := send(b, 1); got != "drop" {
		t.Fatalf("third port inside the new window: %s", got)
	}
}

func TestTrapAllowlistAndLogMode(t *testing.T) {
	x := newUnattached(t, 1024)
	cfg := trapConfig(1, time.Minute)
	cfg.BlockUDP = false // udp: log only
	setTrap(t, x, cfg)
	if err := x.SetAllow(context.Background(), []netip.Prefix{
		netip.MustParsePrefix("198.18.40.0/24"), netip.MustParsePrefix("2001:db8:40::/48"),
	}); err != nil {
		t.Fatal(err)
	}
	next := events(t, x)

	for _, src := range []string{"198.18.40.1", "2001:db8:40::1"} {
		dst := host4
		if netip.MustParseAddr(src).Is6() {
			dst = host6
		}
		for _, port := range []uint16{31337, 1, 12345} {
			if got := run(t, x, frame(t, pkt{src: src, dst: dst, proto: "tcp", dport: port, flags: "S"})); got != "pass" {
				t.Fatalf("allowlisted %s on trap port %d: %s", src, port, got)
			}
		}
		ev, ok := next()
		if !ok || !ev.Allowlisted || ev.Blocked || ev.Source.String() != src {
			t.Fatalf("allowlisted %s: event %+v (ok %v), want one allowlisted, not blocked", src, ev, ok)
		}
	}

	const u = "198.18.41.1"
	for range 2 {
		if got := run(t, x, frame(t, pkt{src: u, dst: host4, proto: "udp", dport: 7})); got != "pass" {
			t.Fatalf("udp in log mode: %s", got)
		}
	}
	ev, ok := next()
	if !ok || ev.Blocked || ev.Allowlisted || ev.Proto != "udp" || ev.Source.String() != u {
		t.Fatalf("log mode: event %+v (ok %v)", ev, ok)
	}
	if _, ok := next(); ok {
		t.Fatal("a source in log mode was reported twice within one window")
	}
	rules, err := x.Rules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 0 {
		t.Fatalf("rules %+v, want none", rules)
	}
}

// TestTrapEventRateLimit floods the trap from many sources: every source is blocked in the kernel,
// but only the burst reaches user space and the rest is counted as suppressed. The bucket is per
// CPU (no atomics on the packet path), so the flood runs on one CPU: a thread that moved between
// CPUs mid-loop drew on two buckets and sent 20.
func TestTrapEventRateLimit(t *testing.T) {
	x := newUnattached(t, 4096)
	cfg := trapConfig(1, time.Minute)
	cfg.EventsPerSecond, cfg.EventBurst = 1, 10
	setTrap(t, x, cfg)
	onOneCPU(t)
	const n = 200
	for i := range n {
		src := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}).String()
		if got := run(t, x, frame(t, pkt{src: src, dst: host4, proto: "tcp", dport: 31337, flags: "S"})); got != "drop" {
			t.Fatalf("source %d: %s", i, got)
		}
	}
	st, err := x.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Counters.TrapBlocks != n || st.Counters.Entries != n {
		t.Fatalf("trap blocks %d, entries %d, want %d", st.Counters.TrapBlocks, st.Counters.Entries, n)
	}
	sent := st.Counters.ByReason["event_sent"]
	if sent < 10 || sent > 12 || st.Counters.Suppressed != n-sent {
		t.Fatalf("events sent %d, suppressed %d: want the burst of 10 (+1 refill) sent, the rest suppressed", sent, st.Counters.Suppressed)
	}
	if st.Counters.ScanEntries != n {
		t.Fatalf("scan entries %d, want %d", st.Counters.ScanEntries, n)
	}
}

func TestTrapOffAndBadConfig(t *testing.T) {
	x := newUnattached(t, 1024)
	setTrap(t, x, backend.TrapConfig{}) // no ports: trap off
	if got := run(t, x, frame(t, pkt{src: "198.18.50.1", dst: host4, proto: "tcp", dport: 31337, flags: "S"})); got != "pass" {
		t.Fatalf("trap off: %s", got)
	}
	good := trapConfig(1, time.Minute)
	for name, mut := range map[string]func(*backend.TrapConfig){
		"threshold 0":  func(c *backend.TrapConfig) { c.Threshold = 0 },
		"threshold 17": func(c *backend.TrapConfig) { c.Threshold = 17 },
		"zero window":  func(c *backend.TrapConfig) { c.Window = 0 },
		"negative ttl": func(c *backend.TrapConfig) { c.TTL = -time.Second },
		"negative win": func(c *backend.TrapConfig) { c.Window = -time.Second },
	} {
		c := good
		mut(&c)
		if err := x.SetTrap(context.Background(), c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Nothing changed: still off.
	if got := run(t, x, frame(t, pkt{src: "198.18.50.2", dst: host4, proto: "tcp", dport: 31337, flags: "S"})); got != "pass" {
		t.Fatalf("after rejected configs: %s", got)
	}
}

// TestTrapLogThenBlock: a TCP trigger in log mode must not use up the block a later UDP trigger
// (block mode) from the same source earns inside the same window.
func TestTrapLogThenBlock(t *testing.T) {
	x := newUnattached(t, 1024)
	cfg := trapConfig(1, time.Minute)
	cfg.BlockTCP = false
	setTrap(t, x, cfg)
	next := events(t, x)
	const src = "198.18.42.1"
	for _, port := range []uint16{31337, 12345} {
		if got := run(t, x, frame(t, pkt{src: src, dst: host4, proto: "tcp", dport: port, flags: "S"})); got != "pass" {
			t.Fatalf("tcp in log mode: %s", got)
		}
	}
	if ev, ok := next(); !ok || ev.Blocked || ev.Proto != "tcp" {
		t.Fatalf("logged tcp trigger: %+v (ok %v)", ev, ok)
	}
	if got := run(t, x, frame(t, pkt{src: src, dst: host4, proto: "udp", dport: 7})); got != "drop" {
		t.Fatalf("udp trigger in block mode after a logged tcp one: %s", got)
	}
	if ev, ok := next(); !ok || !ev.Blocked || ev.Proto != "udp" {
		t.Fatalf("blocking udp trigger: %+v (ok %v)", ev, ok)
	}
	if _, ok := next(); ok {
		t.Fatal("more events than the two triggers")
	}
}

// A trap block the daemon writes again (adopting it with its escalated deadline, or blocking
// the address by hand) becomes the daemon's: it keeps its hit counters but not the trap flag,
// so that once the store lets it go, no later start adopts it as the kernel's own.
func TestReblockTakesOverTrapBlock(t *testing.T) {
	x := newUnattached(t, 1024)
	setTrap(t, x, trapConfig(1, time.Minute))
	src := "198.18.11.1"
	if got := run(t, x, frame(t, pkt{src: src, dst: host4, proto: "tcp", dport: 31337, flags: "S"})); got != "drop" {
		t.Fatalf("trigger packet: %s", got)
	}
	if got := run(t, x, frame(t, pkt{src: src, dst: host4, proto: "tcp", dport: 80, flags: "S"})); got != "drop" {
		t.Fatalf("packet after the trap: %s", got)
	}
	find := func() backend.RuleState {
		t.Helper()
		rs, err := x.Rules(context.Background())
		if err != nil || len(rs) != 1 || rs[0].Prefix != netip.MustParsePrefix(src+"/32") {
			t.Fatalf("rules %+v, %v; want only %s", rs, err, src)
		}
		return rs[0]
	}
	before := find()
	if !before.FromTrap || before.Hits == 0 {
		t.Fatalf("trap block %+v: want the trap flag and a hit", before)
	}
	deadline := time.Now().Add(time.Hour)
	if err := x.Block(context.Background(), []backend.Rule{{Prefix: before.Prefix, Deadline: deadline}}); err != nil {
		t.Fatal(err)
	}
	after := find()
	// Kernel times come back as wall-clock times converted at each read: equal within a
	// millisecond, not to the nanosecond.
	if after.FromTrap || after.Hits != before.Hits || after.LastHit.Sub(before.LastHit).Abs() > time.Millisecond || after.Deadline.Sub(deadline).Abs() > time.Second {
		t.Fatalf("re-blocked %+v (was %+v): want no trap flag, the same hits and the new deadline", after, before)
	}
}

// An event taken off the ring buffer is never dropped at shutdown: with more events waiting
// than the channel holds, a reader stopped mid-stream delivers what it read before it closes
// the channel, and the next reader (the next daemon) gets the rest. Together they see each
// event once.
func TestTrapEventsNotLostAtShutdown(t *testing.T) {
	x := newUnattached(t, 4096)
	setTrap(t, x, trapConfig(1, time.Minute))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first, err := x.TrapEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 400 // more than the channel buffers (256): the reader waits to deliver
	sent := map[netip.Addr]bool{}
	for i := range n {
		src := netip.AddrFrom4([4]byte{198, 18, 100 + byte(i/250), byte(1 + i%250)})
		if got := run(t, x, frame(t, pkt{src: src.String(), dst: host4, proto: "tcp", dport: 31337, flags: "S"})); got != "drop" {
			t.Fatalf("trap trigger from %s: %s, want drop", src, got)
		}
		sent[src] = true
	}
	time.Sleep(100 * time.Millisecond) // let the reader fill the channel and wait on it
	cancel()
	seen := map[netip.Addr]int{}
	for ev := range first {
		seen[ev.Source]++
	}
	afterFirst := len(seen)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	second, err := x.TrapEvents(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	for idle := false; !idle; {
		select {
		case ev := <-second:
			seen[ev.Source]++
		case <-time.After(500 * time.Millisecond):
			idle = true
		}
	}
	for src := range sent {
		if seen[src] != 1 {
			t.Errorf("%s: %d events, want 1 (first reader delivered %d sources, both %d of %d)", src, seen[src], afterFirst, len(seen), n)
		}
	}
}

// onOneCPU keeps the calling goroutine on its thread and that thread on one CPU until the test
// ends (BPF_PROG_TEST_RUN runs the program on the caller's CPU).
func onOneCPU(t *testing.T) {
	runtime.LockOSThread()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	for c := range 1024 {
		if old.IsSet(c) {
			one.Set(c)
			break
		}
	}
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	})
}

// A scanner unblocked by hand, or whose trap block expired, is blocked again by its next probe
// inside the same window: the scan state remembers what it reported, not that it blocked.
func TestTrapBlocksAgainAfterUnblockAndExpiry(t *testing.T) {
	x := newUnattached(t, 1024)
	cfg := trapConfig(2, time.Minute)
	cfg.TTL = 300 * time.Millisecond
	setTrap(t, x, cfg)
	next := events(t, x)
	for _, src := range []string{"198.18.12.1", "2001:db8:12::1"} {
		dst := host4
		if netip.MustParseAddr(src).Is6() {
			dst = host6
		}
		probe := func(port uint16) string {
			return run(t, x, frame(t, pkt{src: src, dst: dst, proto: "tcp", dport: port, flags: "S"}))
		}
		blocked := func(what string) {
			t.Helper()
			if ev, ok := next(); !ok || !ev.Blocked || ev.Source.String() != src {
				t.Fatalf("%s %s: event %+v (ok %v), want a block", what, src, ev, ok)
			}
		}
		if probe(31337) != "pass" || probe(12345) != "drop" {
			t.Fatalf("%s: the second trap port did not block", src)
		}
		blocked("first trigger")

		rs, err := x.Rules(context.Background())
		if err != nil || len(rs) != 1 {
			t.Fatalf("rules %+v, %v: want the trap block", rs, err)
		}
		if err := x.Unblock(context.Background(), []netip.Prefix{rs[0].Prefix}); err != nil {
			t.Fatal(err)
		}
		if got := probe(80); got != "pass" {
			t.Fatalf("%s after unblock, to a port that is no trap: %s", src, got)
		}
		if got := probe(1); got != "drop" {
			t.Fatalf("%s probing a trap port again after unblock: %s, want blocked at once", src, got)
		}
		blocked("after unblock")

		time.Sleep(cfg.TTL + 50*time.Millisecond) // the trap block expires; no sweep runs
		if got := probe(80); got != "pass" {
			t.Fatalf("%s after its block expired: %s", src, got)
		}
		if got := probe(6667); got != "drop" {
			t.Fatalf("%s probing a trap port after expiry: %s, want blocked at once", src, got)
		}
		blocked("after expiry")
		rs, _ = x.Rules(context.Background())
		if err := x.Unblock(context.Background(), []netip.Prefix{rs[0].Prefix}); err != nil {
			t.Fatal(err)
		}
	}
}

// At block.capacity the trap blocks nothing more: a flood of sources on trap ports never evicts
// the blocks the daemon made. It reports the first trigger of each source as "full". An expired
// entry of the source is overwritten, since that adds nothing.
func TestTrapStopsAtCapacity(t *testing.T) {
	const capacity = 300
	x := newUnattached(t, capacity)
	setTrap(t, x, trapConfig(1, time.Minute))
	next := events(t, x)
	var manual []backend.Rule
	for i := range capacity - 10 {
		manual = append(manual, backend.Rule{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 20 + byte(i/250), 1 + byte(i%250)}), 32),
			Deadline: time.Now().Add(time.Hour)})
	}
	manual[0].Deadline = time.Now().Add(-time.Second) // expired: a trap may take it over
	if err := x.Block(context.Background(), manual); err != nil {
		t.Fatal(err)
	}
	blocked, full := 0, 0
	for i := range 2000 {
		src := netip.AddrFrom4([4]byte{198, 19, byte(i / 250), 1 + byte(i%250)}).String()
		switch run(t, x, frame(t, pkt{src: src, dst: host4, proto: "udp", dport: 7})) {
		case "drop":
			blocked++
		case "pass":
			full++
		}
	}
	if blocked != 10 || full != 1990 {
		t.Fatalf("trap blocked %d and passed %d sources, want 10 (up to capacity) and 1990", blocked, full)
	}
	if got := counter(t, x, "trap_full"); got != 1990 {
		t.Fatalf("trap_full %d, want 1990", got)
	}
	ev, ok := next()
	for ok && ev.Blocked {
		ev, ok = next()
	}
	if !ok || !ev.Full || ev.Blocked {
		t.Fatalf("event after the map filled: %+v (ok %v), want full, not blocked", ev, ok)
	}
	for i, r := range manual[1:] {
		if got := run(t, x, frame(t, pkt{src: r.Prefix.Addr().String(), dst: host4, proto: "icmp"})); got != "drop" {
			t.Fatalf("manual block %d (%s) after the flood: %s", i+1, r.Prefix, got)
		}
	}
	// The expired manual entry's source probes a trap: overwriting its entry adds nothing, so
	// the full map does not stop this block.
	if got := run(t, x, frame(t, pkt{src: manual[0].Prefix.Addr().String(), dst: host4, proto: "udp", dport: 7})); got != "drop" {
		t.Fatalf("trap over an expired entry at capacity: %s", got)
	}
	rs, err := x.Rules(context.Background())
	if err != nil || len(rs) != capacity {
		t.Fatalf("%d entries (%v), want exactly %d", len(rs), err, capacity)
	}
}
