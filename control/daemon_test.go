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

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control/store"

	"github.com/snare-dev/snare/control/api"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control"
	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
	fallback "github.com/snare-dev/snare/iptables-fallback"
	"github.com/snare-dev/snare/loader"
)

// daemonLab is a lab with a daemon on its host namespace, driven through the real Go client.
type daemonLab struct {
	t       *testing.T
	backend string // "xdp" (default) or "iptables"
	lab     *netlab.Lab
	cfg     *config.Config
	client  *api.Client
	d       *control.Daemon
	enf     backend.Enforcer // d's back-end, to look at the kernel behind the daemon's back
	stop    func()
	// importIdle is the daemon's ImportIdleTimeout (0: its default).
	importIdle time.Duration
}

func newDaemonLab(t *testing.T) *daemonLab {
	lab := testutil.NewLab(t, "attacker", "client")
	state := t.TempDir()
	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Interfaces = lab.HostIfaceNames()
	cfg.BPFFS = filepath.Join(testutil.TempBPFFS(t), "pins")
	cfg.StateDir = state
	cfg.Socket = filepath.Join(state, "run", "snare.sock")
	cfg.Sweep.Interval = config.Duration(time.Hour) // sweeps run by hand: expiry must not need them
	cfg.Metrics.Listen = ""
	dl := &daemonLab{t: t, lab: lab, cfg: cfg, client: api.NewClient(cfg.Socket)}
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
	var x backend.Enforcer
	var implicit control.Allowlist
	err := dl.lab.Do(dl.lab.Host.NS, func() error {
		var err error
		if dl.backend == "iptables" {
			x, err = fallback.New(fallback.Options{Interfaces: dl.cfg.Interfaces, Capacity: 4096,
				Prefix: "sntc" + dl.lab.Suffix, NetNS: "/run/netns/" + dl.lab.Host.NS, Logger: testLogger(t)})
		} else {
			x, err = loader.Open(loader.Options{Interfaces: dl.cfg.Interfaces, Mode: dl.cfg.XDPMode, PinDir: dl.cfg.BPFFS, Capacity: 4096})
		}
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
		Config: dl.cfg, Logger: testLogger(t),
		OpenEnforcer:  func() (backend.Enforcer, string, error) { return x, "", nil },
		ImplicitAllow: func() (control.Allowlist, error) { return implicit, nil },
		// Nothing listens in the lab host: every configured trap port is in force.
		Listening:         func(context.Context) (map[uint16]bool, map[uint16]bool, error) { return nil, nil, nil },
		ImportIdleTimeout: dl.importIdle,
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
	dl.d, dl.enf = d, x
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
func (dl *daemonLab) reaches(peer *netlab.Node, v6 bool) bool {
	ifc := dl.lab.HostIface(peer.Role)
	dst := ifc.Addr4.Addr()
	if v6 {
		dst = ifc.Addr6.Addr()
	}
	return dl.lab.Ping(peer.NS, dst, 300*time.Millisecond) == nil
}

func (dl *daemonLab) entries() map[string]api.Entry {
	dl.t.Helper()
	l, err := dl.client.List(context.Background())
	if err != nil {
		dl.t.Fatal(err)
	}
	out := map[string]api.Entry{}
	for _, e := range l.Entries {
		out[e.Prefix] = e
	}
	return out
}

func apiStatus(err error) int {
	var ae *api.APIError
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
	resp, err := dl.client.Block(ctx, api.BlockRequest{Targets: []string{att4, att6}, TTL: "1h", Reason: "test"})
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
	for _, bad := range []api.BlockRequest{
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
	short, err := dl.client.Block(ctx, api.BlockRequest{Targets: []string{cli.Addr4().String()}, TTL: "3s"})
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
	if st, err := dl.client.Status(ctx); err != nil || res.Evicted != 1 || st.Evictions != 1 {
		t.Errorf("sweep re-inserted %d (total %d, %v), want 1", res.Evicted, st.Evictions, err)
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
	if !ok || e.Reason != "test" || e.Origin != api.OriginManual || e.Hits == 0 {
		t.Fatalf("after restart the attacker's block is %+v (present %v), want reason test, hits > 0", e, ok)
	}
	if !e.Expires.Equal(resp.Entries[0].Expires.Truncate(time.Millisecond)) {
		t.Errorf("deadline changed across restart: %s, was %s", e.Expires, resp.Entries[0].Expires)
	}
	if dl.reaches(att, false) {
		t.Fatal("attacker reaches the host after the restart")
	}

	// Unblock lets it through again; the event log tells the story.
	un, err := dl.client.Unblock(ctx, api.UnblockRequest{Targets: []string{att4, att6, "198.18.99.99"}})
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
	var trap api.Entry
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if e, ok := dl.entries()[att4+"/32"]; ok {
			trap = e
			break
		}
	}
	if trap.Origin != api.OriginTrap || !strings.Contains(trap.Reason, "tcp/31337") {
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
	if err := dl.client.Events(ctx, false, func(ev api.Event) error {
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

// importList imports req.Content the way snarectl sends a list: streamed as the request body.
func importList(ctx context.Context, c *api.Client, req api.ImportRequest) (api.ImportResponse, error) {
	return c.ImportStream(ctx, strings.NewReader(req.Content), int64(len(req.Content)), req)
}

// evictOne removes a block from the kernel behind the daemon's back, as an LRU eviction would.
func evictOne(t *testing.T, dl *daemonLab, p netip.Prefix) {
	t.Helper()
	if err := dl.enf.Unblock(context.Background(), []netip.Prefix{p}); err != nil {
		t.Fatal(err)
	}
}

// trapDial sends SYNs from peer to a trap port of the host (the connection cannot succeed).
func trapDial(t *testing.T, dl *daemonLab, peer *netlab.Node, port int) {
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

func TestDaemonImportExportAllowReload(t *testing.T) {
	dl := newDaemonLab(t)
	dl.start()
	ctx := context.Background()
	att := dl.lab.Attacker()
	today := time.Now().Format("20060102")
	old := time.Now().Add(-10 * 24 * time.Hour).Format("20060102")

	// A bad line rejects the whole import, naming the line.
	bad := "198.18.50.1 " + today + "\n198.18.50.2\nnot-an-address\n198.18.1.1\n"
	_, err := importList(ctx, dl.client, api.ImportRequest{Content: bad, Name: "blocked.list"})
	if apiStatus(err) != 400 || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "line 4") ||
		!strings.Contains(err.Error(), "nothing imported") {
		t.Fatalf("import with bad lines: %v", err)
	}
	if n := len(dl.entries()); n != 0 {
		t.Fatalf("a rejected import left %d entries", n)
	}

	// With SkipBad the good lines go in; a dated line past date+TTL is skipped as expired.
	list := "# seed\n198.18.50.1 " + today + "\n198.18.50.2 " + old + "\n198.18.60.0/24\n" + att.Addr4().String() + "\nbogus\n"
	resp, err := importList(ctx, dl.client, api.ImportRequest{Content: list, Name: "blocked.list", SkipBad: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Imported != 3 || resp.Expired != 1 || resp.Skipped != 1 || len(resp.Errors) != 1 || resp.Errors[0].Line != 6 {
		t.Fatalf("import answered %+v", resp)
	}
	es := dl.entries()
	e := es["198.18.50.1/32"]
	if e.Origin != api.OriginImport || e.Created.Format("20060102") != today {
		t.Errorf("dated entry %+v: want origin import, created %s", e, today)
	}
	wantExp := e.Created.Add(5 * 24 * time.Hour)
	if !e.Expires.Equal(wantExp) {
		t.Errorf("dated entry expires %s, want date + 5d = %s", e.Expires, wantExp)
	}
	if dl.reaches(att, false) {
		t.Fatal("imported block does not drop")
	}

	// Export, unblock everything, re-import the export: same prefixes and dates.
	var out strings.Builder
	if err := dl.client.Export(ctx, "blocked-list", &out); err != nil {
		t.Fatal(err)
	}
	exported := out.String()
	if !strings.Contains(exported, "198.18.50.1 "+today+"\n") || !strings.Contains(exported, "198.18.60.0/24 ") {
		t.Fatalf("export:\n%s", exported)
	}
	var plain strings.Builder
	if err := dl.client.Export(ctx, "plain", &plain); err != nil {
		t.Fatal(err)
	}
	if strings.Count(plain.String(), "\n") != 3 || strings.Contains(plain.String(), today) {
		t.Errorf("plain export:\n%s", plain.String())
	}
	if err := dl.client.Export(ctx, "xml", &plain); apiStatus(err) != 400 {
		t.Errorf("export in an unknown format: %v", err)
	}
	var all []string
	for p := range es {
		all = append(all, p)
	}
	if _, err := dl.client.Unblock(ctx, api.UnblockRequest{Targets: all}); err != nil {
		t.Fatal(err)
	}
	if _, err := importList(ctx, dl.client, api.ImportRequest{Content: exported}); err != nil {
		t.Fatal(err)
	}
	again := dl.entries()
	if len(again) != len(es) {
		t.Fatalf("re-import of the export: %d entries, want %d", len(again), len(es))
	}
	for p, e := range es {
		if a := again[p]; a.Created.Format("20060102") != e.Created.Format("20060102") {
			t.Errorf("%s: created %s after re-import, was %s", p, a.Created, e.Created)
		}
	}

	// Allowlist by hand: durable, refuses blocks, and cannot remove implicit entries.
	if _, err := dl.client.AllowAdd(ctx, api.AllowRequest{Targets: []string{"198.18.70.0/24"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := dl.client.Block(ctx, api.BlockRequest{Targets: []string{"198.18.70.5"}}); apiStatus(err) != 400 {
		t.Errorf("block inside a manual allow entry: %v", err)
	}
	if _, err := dl.client.AllowDel(ctx, api.AllowRequest{Targets: []string{"127.0.0.0/8"}}); apiStatus(err) != 400 {
		t.Errorf("removing the implicit loopback entry: %v", err)
	}
	if _, err := dl.client.AllowAdd(ctx, api.AllowRequest{Targets: []string{"0.0.0.0/0"}}); apiStatus(err) != 400 {
		t.Errorf("allowing everything: %v", err)
	}
	al, err := dl.client.AllowList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]string{}
	for _, a := range al.Entries {
		sources[a.Prefix] = a.Source
	}
	if sources["198.18.70.0/24"] != "manual" || sources["198.18.1.1/32"] != "own-address" || sources["127.0.0.0/8"] != "loopback" {
		t.Errorf("allowlist: %v", sources)
	}

	// Reload: new trap ports and a config allow entry take effect; enforcement stays.
	next := *dl.cfg
	next.Trap.TCPPorts = "7777,8000-8002"
	next.Allow = []string{"198.18.80.0/24"}
	next.Block.TTL = config.TTL(time.Hour)
	if err := dl.d.Reload(ctx, &next); err != nil {
		t.Fatal(err)
	}
	st, err := dl.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Trap.TCPPorts != "7777,8000-8002" {
		t.Errorf("trap ports after reload: %q", st.Trap.TCPPorts)
	}
	if _, err := dl.client.Block(ctx, api.BlockRequest{Targets: []string{"198.18.80.9"}}); apiStatus(err) != 400 {
		t.Errorf("block inside the reloaded config allow entry: %v", err)
	}
	if dl.reaches(att, false) {
		t.Fatal("reload dropped enforcement")
	}
	if st.Backend != "xdp" || len(st.Interfaces) != 2 || st.Entries != len(es) {
		t.Errorf("status %+v", st)
	}

	// The manual allow entry survives a restart.
	dl.shutdown()
	dl.start()
	if _, err := dl.client.Block(ctx, api.BlockRequest{Targets: []string{"198.18.70.5"}}); apiStatus(err) != 400 {
		t.Errorf("manual allow entry lost across restart: %v", err)
	}
	if _, err := dl.client.AllowDel(ctx, api.AllowRequest{Targets: []string{"198.18.70.0/24"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := dl.client.Block(ctx, api.BlockRequest{Targets: []string{"198.18.70.5"}}); err != nil {
		t.Errorf("block after removing the allow entry: %v", err)
	}
}

// A second daemon on the same state directory is refused (the pin directory's lock is
// openBackend's test, in cmd/snared).
func TestSecondDaemonRefused(t *testing.T) {
	dl := newDaemonLab(t)
	dl.start()
	// The same state directory is refused, before anything is touched.
	_, err := control.Open(context.Background(), control.Options{Config: dl.cfg})
	if !errors.Is(err, store.ErrStoreLocked) {
		t.Fatalf("second daemon on the same state dir: %v, want ErrStoreLocked", err)
	}
}

// Trap hits from an allowlisted source are logged and never blocked; a trap block the kernel
// makes while the daemon is down is adopted at start, and its late event is the same offence.
func TestDaemonTrapAllowlistAndAdoption(t *testing.T) {
	dl := newDaemonLab(t)
	dl.start()
	ctx := context.Background()
	cli, att := dl.lab.Client(), dl.lab.Attacker()
	cli4, att4 := cli.Addr4().String(), att.Addr4().String()

	if _, err := dl.client.AllowAdd(ctx, api.AllowRequest{Targets: []string{cli4}}); err != nil {
		t.Fatal(err)
	}
	trapDial(t, dl, cli, 31337)
	var scan *api.Event
	for end := time.Now().Add(5 * time.Second); scan == nil && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		for _, ev := range dl.d.Events().Recent() {
			if ev.Event == api.EventScan && ev.Address == cli4 {
				scan = &ev
			}
		}
	}
	if scan == nil || scan.Action != "allowlisted" || scan.Proto != "tcp" || len(scan.Ports) != 1 || scan.Ports[0] != 31337 {
		t.Fatalf("scan event of an allowlisted source: %+v", scan)
	}
	if _, ok := dl.entries()[cli4+"/32"]; ok || !dl.reaches(cli, false) {
		t.Fatal("an allowlisted source was blocked by a trap")
	}

	// The daemon is down; the kernel still catches the scanner. (A different peer: the kernel
	// keeps the allowlisted source's scan state for the trap window.)
	dl.shutdown()
	trapDial(t, dl, att, 1524)
	if dl.reaches(att, false) {
		t.Fatal("kernel did not block the scanner while the daemon was down")
	}
	dl.start()
	var e api.Entry
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		e = dl.entries()[att4+"/32"]
		if strings.HasPrefix(e.Reason, "trap: tcp/1524") {
			break
		}
	}
	if e.Origin != api.OriginTrap || !strings.HasPrefix(e.Reason, "trap: tcp/1524") || e.Offences != 1 {
		t.Fatalf("adopted trap block: %+v; want origin trap, reason from its event, one offence", e)
	}
	if dl.reaches(att, false) {
		t.Fatal("adopted trap block does not drop")
	}

	// IPv6: a trap hit blocks the source's /64, recorded as such. (The client's IPv4 address is
	// allowlisted, its IPv6 address is not.)
	dst := net.JoinHostPort(dl.lab.HostIface("client").Addr6.Addr().String(), "31337")
	_ = dl.lab.Do(cli.NS, func() error {
		if c, err := net.DialTimeout("tcp", dst, 500*time.Millisecond); err == nil {
			c.Close()
		}
		return nil
	})
	want6 := netip.PrefixFrom(cli.Addr6(), 64).Masked().String()
	var e6 api.Entry
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if e6 = dl.entries()[want6]; e6.Origin != "" {
			break
		}
	}
	if e6.Origin != api.OriginTrap || !strings.HasPrefix(e6.Reason, "trap: tcp/31337") {
		t.Fatalf("IPv6 trap block of %s: %+v", want6, e6)
	}
	if dl.reaches(cli, true) || !dl.reaches(cli, false) {
		t.Fatal("IPv6 trap block: v6 still passes or v4 (allowlisted) dropped")
	}
}

// The same daemon on the iptables fallback: block drops, refused input changes nothing, expiry
// at the deadline, restart keeps the list and enforcement, unblock, trap block.
func TestDaemonFallback(t *testing.T) {
	dl := newDaemonLab(t)
	dl.backend = "iptables"
	dl.start()
	ctx := context.Background()
	att, cli := dl.lab.Attacker(), dl.lab.Client()
	att4 := att.Addr4().String()
	if _, err := dl.client.Block(ctx, api.BlockRequest{Targets: []string{att4}, Reason: "fb"}); err != nil {
		t.Fatal(err)
	}
	if dl.reaches(att, false) || !dl.reaches(cli, false) {
		t.Fatal("fallback block: attacker passes or client blocked")
	}
	if _, err := dl.client.Block(ctx, api.BlockRequest{Targets: []string{dl.lab.HostIface("client").Addr4.Addr().String()}}); apiStatus(err) != 400 {
		t.Errorf("own address on the fallback: %v", err)
	}
	short, err := dl.client.Block(ctx, api.BlockRequest{Targets: []string{cli.Addr4().String()}, TTL: "2s"})
	if err != nil {
		t.Fatal(err)
	}
	if dl.reaches(cli, false) {
		t.Fatal("client passes right after its 2s block")
	}
	for time.Now().Before(short.Entries[0].Expires.Add(4 * time.Second)) {
		if dl.reaches(cli, false) {
			break
		}
	}
	if !dl.reaches(cli, false) {
		t.Fatal("client still blocked after its deadline")
	}
	st, err := dl.client.Status(ctx)
	if err != nil || st.Backend != "iptables" {
		t.Fatalf("status %+v, %v", st, err)
	}
	dl.shutdown()
	if dl.reaches(att, false) {
		t.Fatal("attacker passes while the daemon is down")
	}
	dl.start()
	if e, ok := dl.entries()[att4+"/32"]; !ok || e.Reason != "fb" {
		t.Fatalf("after restart: %+v %v", e, ok)
	}
	if dl.reaches(att, false) {
		t.Fatal("attacker passes after restart")
	}
	if _, err := dl.client.Unblock(ctx, api.UnblockRequest{Targets: []string{att4}}); err != nil {
		t.Fatal(err)
	}
	if !dl.reaches(att, false) {
		t.Fatal("unblocked attacker still dropped")
	}
	trapDial(t, dl, att, 31337)
	var e api.Entry
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if e = dl.entries()[att4+"/32"]; e.Origin == api.OriginTrap {
			break
		}
	}
	if e.Origin != api.OriginTrap || !strings.Contains(e.Reason, "tcp/31337") {
		t.Fatalf("fallback trap block: %+v", e)
	}
	if dl.reaches(att, false) {
		t.Fatal("trapped attacker passes on the fallback")
	}
}
