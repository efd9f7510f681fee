package control_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control"
	"github.com/snare-dev/snare/internal/testutil"
	"github.com/snare-dev/snare/loader"
)

// daemonLab is a lab with a daemon on its host namespace, driven through the real Go client.
type daemonLab struct {
	t      *testing.T
	lab    *testutil.Lab
	cfg    *control.Config
	client *control.Client
	d      *control.Daemon
	stop   func()
}

func newDaemonLab(t *testing.T) *daemonLab {
	lab := testutil.NewLab(t, "attacker", "client")
	state := t.TempDir()
	cfg, err := control.LoadConfig(control.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Interfaces = lab.HostIfaceNames()
	cfg.BPFFS = filepath.Join(testutil.TempBPFFS(t), "pins")
	cfg.StateDir = state
	cfg.Socket = filepath.Join(state, "run", "snare.sock")
	cfg.Sweep.Interval = control.Duration(time.Hour) // sweeps run by hand: expiry must not need them
	cfg.Metrics.Listen = ""
	dl := &daemonLab{t: t, lab: lab, cfg: cfg, client: control.NewClient(cfg.Socket)}
	t.Cleanup(func() {
		if dl.d != nil {
			dl.shutdown()
		}
	})
	return dl
}

// start opens the daemon the way snared does, but with the loader opened and the implicit
// allowlist discovered inside the lab's host namespace.
func (dl *daemonLab) start() {
	t := dl.t
	t.Helper()
	var x *loader.XDP
	var implicit control.Allowlist
	err := dl.lab.Do(dl.lab.Host.NS, func() error {
		var err error
		x, err = loader.Open(loader.Options{Interfaces: dl.cfg.Interfaces, Mode: dl.cfg.XDPMode, PinDir: dl.cfg.BPFFS, Capacity: 4096})
		if err != nil {
			return err
		}
		implicit, err = control.ImplicitAllowlist("")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := control.Open(ctx, control.Options{
		Config: dl.cfg, Enforcer: x, Logger: testLogger(t),
		ImplicitAllow: func() (control.Allowlist, error) { return implicit, nil },
		// Nothing listens in the lab host: every configured trap port is in force.
		Listening: func(context.Context) (map[uint16]bool, map[uint16]bool, error) { return nil, nil, nil },
	})
	if err != nil {
		cancel()
		x.Close()
		t.Fatal(err)
	}
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		d.Close()
		t.Fatalf("serve: %v", err)
	}
	dl.d = d
	dl.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve returned %v", err)
		}
	}
}

// shutdown stops the daemon like SIGTERM does: enforcement stays in place.
func (dl *daemonLab) shutdown() {
	dl.stop()
	if err := dl.d.Close(); err != nil {
		dl.t.Errorf("close daemon: %v", err)
	}
	dl.d = nil
}

// reaches reports whether an echo from peer to the host gets an answer.
func (dl *daemonLab) reaches(peer *testutil.Node, v6 bool) bool {
	ifc := dl.lab.HostIface(peer.Role)
	dst := ifc.Addr4.Addr()
	if v6 {
		dst = ifc.Addr6.Addr()
	}
	return dl.lab.Ping(peer.NS, dst, 300*time.Millisecond) == nil
}

func (dl *daemonLab) entries() map[string]control.Entry {
	dl.t.Helper()
	l, err := dl.client.List(context.Background())
	if err != nil {
		dl.t.Fatal(err)
	}
	out := map[string]control.Entry{}
	for _, e := range l.Entries {
		out[e.Prefix] = e
	}
	return out
}

func apiStatus(err error) int {
	var ae *control.APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

func TestDaemonEndToEnd(t *testing.T) {
	dl := newDaemonLab(t)
	dl.start()
	ctx := context.Background()
	att, cli := dl.lab.Attacker(), dl.lab.Client()
	att4, att6 := att.Addr4().String(), att.Addr6().String()

	if !dl.reaches(att, false) || !dl.reaches(cli, false) {
		t.Fatal("lab peers do not reach the host before any block")
	}

	// Block the attacker (v4 and v6) by hand.
	resp, err := dl.client.Block(ctx, control.BlockRequest{Targets: []string{att4, att6}, TTL: "1h", Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Entries) != 2 || resp.Entries[1].Prefix != netip.PrefixFrom(att.Addr6(), 64).Masked().String() {
		t.Fatalf("block answered %+v", resp.Entries)
	}
	if dl.reaches(att, false) || dl.reaches(att, true) {
		t.Fatal("blocked attacker still reaches the host")
	}
	if !dl.reaches(cli, false) {
		t.Fatal("client lost the host after blocking the attacker")
	}

	// Bad input: clear 4xx errors, nothing changed.
	before := dl.entries()
	for _, bad := range []control.BlockRequest{
		{Targets: []string{dl.lab.HostIface("attacker").Addr4.Addr().String()}},           // own address
		{Targets: []string{"198.18.0.0/15"}},                                              // covers own addresses
		{Targets: []string{"127.0.0.1"}},                                                  // loopback
		{Targets: []string{"0.0.0.0/0"}},                                                  // everything
		{Targets: []string{"::/0"}},                                                       // everything
		{Targets: []string{"198.18.9.9", "not-an-ip"}},                                    // one bad target: none blocked
		{Targets: []string{"198.18.9.9"}, TTL: "-5m"},                                     // bad TTL
		{Targets: []string{"198.18.9.9"}, TTL: "5 days"},                                  // bad TTL
		{Targets: []string{"::ffff:" + dl.lab.HostIface("client").Addr4.Addr().String()}}, // v4-mapped own address
		{},
	} {
		_, err := dl.client.Block(ctx, bad)
		if apiStatus(err) != 400 {
			t.Errorf("block %+v: got %v, want a 400 error", bad, err)
		}
	}
	if after := dl.entries(); len(after) != len(before) {
		t.Errorf("refused blocks changed the list: %d entries, want %d", len(after), len(before))
	}

	// A short block expires at its deadline, with no sweep (the data path checks the deadline).
	short, err := dl.client.Block(ctx, control.BlockRequest{Targets: []string{cli.Addr4().String()}, TTL: "3s"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := short.Entries[0].Expires
	if dl.reaches(cli, false) {
		t.Fatal("client reaches the host right after its 3s block")
	}
	for time.Now().Before(deadline.Add(3 * time.Second)) {
		if dl.reaches(cli, false) {
			break
		}
	}
	if !dl.reaches(cli, false) {
		t.Fatal("client still blocked 3s after its deadline")
	}
	if now := time.Now(); now.Before(deadline.Add(-100 * time.Millisecond)) {
		t.Fatalf("client passed at %s, before its deadline %s", now, deadline)
	}
	res, err := dl.d.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Expired != 1 {
		t.Errorf("sweep expired %d, want 1", res.Expired)
	}
	if _, ok := dl.entries()[cli.Addr4().String()+"/32"]; ok {
		t.Error("expired block still listed after the sweep")
	}

	// A block lost from the kernel (as an LRU eviction would) is noticed and put back.
	evictOne(t, dl, netip.MustParsePrefix(att4+"/32"))
	if !dl.reaches(att, false) {
		t.Fatal("simulated eviction did not unblock the attacker")
	}
	res, err = dl.d.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Evicted != 1 || dl.d.Evictions() != 1 {
		t.Errorf("sweep re-inserted %d (total %d), want 1", res.Evicted, dl.d.Evictions())
	}
	if dl.reaches(att, false) {
		t.Fatal("evicted block was not re-inserted")
	}

	// Restart: the daemon goes away, the blocks keep dropping, the new daemon lists them intact.
	dl.shutdown()
	if dl.reaches(att, false) {
		t.Fatal("attacker reaches the host while the daemon is down")
	}
	dl.start()
	after := dl.entries()
	e, ok := after[att4+"/32"]
	if !ok || e.Reason != "test" || e.Origin != control.OriginManual || e.Hits == 0 {
		t.Fatalf("after restart the attacker's block is %+v (present %v), want reason test, hits > 0", e, ok)
	}
	if !e.Expires.Equal(resp.Entries[0].Expires.Truncate(time.Millisecond)) {
		t.Errorf("deadline changed across restart: %s, was %s", e.Expires, resp.Entries[0].Expires)
	}
	if dl.reaches(att, false) {
		t.Fatal("attacker reaches the host after the restart")
	}

	// Unblock lets it through again; the event log tells the story.
	un, err := dl.client.Unblock(ctx, control.UnblockRequest{Targets: []string{att4, att6, "198.18.99.99"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(un.Removed) != 2 || len(un.NotFound) != 1 {
		t.Errorf("unblock answered %+v", un)
	}
	if !dl.reaches(att, false) || !dl.reaches(att, true) {
		t.Fatal("unblocked attacker still dropped")
	}

	// Trap: one SYN to a trap port blocks the attacker in the kernel; the daemon records it as
	// a repeat offence (it was blocked by hand before), with an escalated TTL.
	trapDial(t, dl, att, 31337)
	var trap control.Entry
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if e, ok := dl.entries()[att4+"/32"]; ok {
			trap = e
			break
		}
	}
	if trap.Origin != control.OriginTrap || !strings.Contains(trap.Reason, "tcp/31337") {
		t.Fatalf("trap block not recorded: %+v", trap)
	}
	if trap.Offences != 2 {
		t.Errorf("trap block offences %d, want 2 (repeat offender)", trap.Offences)
	}
	if ttl := time.Until(trap.Expires); ttl < 9*24*time.Hour {
		t.Errorf("repeat offender's TTL %s, want the 5d default escalated to 10d", ttl)
	}
	if dl.reaches(att, false) {
		t.Fatal("trapped attacker still reaches the host")
	}

	var kinds []string
	if err := dl.client.Events(ctx, false, func(ev control.Event) error {
		kinds = append(kinds, ev.Event)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(kinds, ",")
	for _, want := range []string{"block", "expire", "evict", "stop", "start", "unblock", "scan"} {
		if !strings.Contains(joined, want) {
			t.Errorf("event log lacks %q: %s", want, joined)
		}
	}
}

// evictOne removes a block from the kernel behind the daemon's back, as an LRU eviction would.
func evictOne(t *testing.T, dl *daemonLab, p netip.Prefix) {
	t.Helper()
	if err := dl.d.Enforcer().Unblock(context.Background(), []netip.Prefix{p}); err != nil {
		t.Fatal(err)
	}
}

// trapDial sends SYNs from peer to a trap port of the host (the connection cannot succeed).
func trapDial(t *testing.T, dl *daemonLab, peer *testutil.Node, port int) {
	t.Helper()
	dst := net.JoinHostPort(dl.lab.HostIface(peer.Role).Addr4.Addr().String(), strconv.Itoa(port))
	_ = dl.lab.Do(peer.NS, func() error {
		c, err := net.DialTimeout("tcp", dst, 500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return nil
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
