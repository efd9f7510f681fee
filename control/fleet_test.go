package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/control/fleet"
	"github.com/snare-dev/snare/control/store"
	"github.com/snare-dev/snare/internal/testutil"
)

// natsServer runs a real JetStream server on 127.0.0.1 (port -1: a free one), its store in dir.
func natsServer(t *testing.T, dir string, port int) *server.Server {
	t.Helper()
	return natsServerWith(t, &server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoSigs: true})
}

func natsServerWith(t *testing.T, o *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s
}

// jetStream is a JetStream client of the server at url, closed when the test ends: what another
// fleet member, or a hand on the bucket, does.
func jetStream(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// fleetHost is one snared of a fleet: a real daemon with an in-memory enforcer, serving.
type fleetHost struct {
	d     *Daemon
	f     *testutil.MemEnforcer
	state string
	stop  func()
}

// startFleetHost opens and serves a daemon in the fleet at url; allow is its implicit allowlist.
func startFleetHost(t *testing.T, url, node, state string, allow ...string) *fleetHost {
	t.Helper()
	return startFleetHostWith(t, state, func(c *config.Config) {
		c.Fleet.Servers = []string{url}
		c.Fleet.Node = node
	}, allow...)
}

// startFleetHostWith is startFleetHost with the fleet configured by set.
func startFleetHostWith(t *testing.T, state string, set func(*config.Config), allow ...string) *fleetHost {
	t.Helper()
	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = state
	set(cfg)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	f := &testutil.MemEnforcer{}
	d, err := Open(context.Background(), Options{
		Config: cfg, OpenEnforcer: func() (backend.Enforcer, string, error) { return f, "", nil },
		ImplicitAllow: func() (Allowlist, error) {
			var a Allowlist
			for _, s := range allow {
				a = append(a, AllowItem{netip.MustParsePrefix(s), api.AllowOwnAddress})
			}
			return a, nil
		},
		Listening: func(context.Context) (map[uint16]bool, map[uint16]bool, error) { return nil, nil, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "snfl")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(sockDir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.ServeListener(ctx, l, nil) }()
	h := &fleetHost{d: d, f: f, state: state}
	stopped := false
	h.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-served
		d.Close()
		os.RemoveAll(sockDir)
	}
	t.Cleanup(h.stop)
	return h
}

func (h *fleetHost) rule(t *testing.T, p string) (store.Rule, bool) {
	t.Helper()
	var r store.Rule
	var ok bool
	err := h.d.store.View(func(tx *store.Tx) error {
		var err error
		r, ok, err = tx.Rule(netip.MustParsePrefix(p))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return r, ok
}

func (h *fleetHost) enforced(p string) bool {
	_, ok := h.f.Rule(netip.MustParsePrefix(p))
	return ok
}

// waitFor polls cond for up to limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// importBig imports n addresses, 198.19.0.0 on, for a day on h.
func importBig(t *testing.T, h *fleetHost, n int) {
	t.Helper()
	var list strings.Builder
	for i := range n {
		fmt.Fprintf(&list, "198.19.%d.%d\n", i/256, i%256)
	}
	if _, err := h.d.Import(context.Background(), api.ImportRequest{Content: list.String(), TTL: "1d", Name: "big"}); err != nil {
		t.Fatal(err)
	}
}

// startFleet runs a NATS server and, on it, a host of each name with a fresh state, and waits
// until all are connected; it returns the server's client URL and the hosts in names' order.
func startFleet(t *testing.T, names ...string) (string, []*fleetHost) {
	t.Helper()
	url := natsServer(t, t.TempDir(), -1).ClientURL()
	var hs []*fleetHost
	for _, n := range names {
		hs = append(hs, startFleetHost(t, url, n, t.TempDir()))
	}
	waitConnected(t, hs...)
	return url, hs
}

func waitConnected(t *testing.T, hs ...*fleetHost) {
	t.Helper()
	for _, h := range hs {
		waitFor(t, 10*time.Second, h.d.FleetStatus().Node+" connected", func() bool { return h.d.FleetStatus().Connected })
	}
}

// shared waits until every host has p: the fleet's rule in store and enforcer (the node's own
// rule on the node that made it), with the same absolute deadline everywhere.
func shared(t *testing.T, p, node string, hs ...*fleetHost) {
	t.Helper()
	var deadline time.Time
	for i, h := range hs {
		waitFor(t, 2*time.Second, p+" on "+h.d.FleetStatus().Node, func() bool { _, ok := h.rule(t, p); return ok && h.enforced(p) })
		r, _ := h.rule(t, p)
		if h.d.FleetStatus().Node != node && (r.Origin != api.OriginFleet || r.Node != node) {
			t.Errorf("%s on %s: origin %q node %q, want fleet from %s", p, h.d.FleetStatus().Node, r.Origin, r.Node, node)
		}
		if i == 0 {
			deadline = r.Deadline
		} else if !r.Deadline.Equal(deadline) {
			t.Errorf("%s on %s: deadline %s, want %s (the absolute deadline of the block)", p, h.d.FleetStatus().Node, r.Deadline, deadline)
		}
	}
}

func gone(t *testing.T, p string, hs ...*fleetHost) {
	t.Helper()
	for _, h := range hs {
		waitFor(t, 2*time.Second, p+" gone on "+h.d.FleetStatus().Node, func() bool { _, ok := h.rule(t, p); return !ok && !h.enforced(p) })
	}
}

func TestFleetSharesDecisions(t *testing.T) {
	srv := natsServer(t, t.TempDir(), -1)
	url := srv.ClientURL()
	a := startFleetHost(t, url, "a", t.TempDir())
	b := startFleetHost(t, url, "b", t.TempDir(), "198.18.5.1/32")
	c := startFleetHost(t, url, "c", t.TempDir())
	waitConnected(t, a, b, c)
	ctx := context.Background()

	// A manual block on A, with an escalation-free TTL, reaches B and C with A's deadline.
	if _, err := a.d.Block(ctx, []string{"198.18.0.7"}, "2h", "scanner"); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.7/32", "a", a, b, c)
	if r, _ := b.rule(t, "198.18.0.7/32"); r.Reason != "scanner" {
		t.Errorf("reason on b: %q", r.Reason)
	}
	if e := entriesByPrefix(t, c.d)["198.18.0.7/32"]; e.Origin != api.OriginFleet || e.Node != "a" {
		t.Errorf("list on c: %+v, want origin fleet from node a", e)
	}

	// A trap block on B reaches A and C.
	if err := b.d.handleTraps(ctx, []backend.TrapEvent{{Time: time.Now(), Source: netip.MustParseAddr("198.18.0.9"),
		Proto: "tcp", Ports: []uint16{1}, TCPFlags: "SYN", Blocked: true}}); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.9/32", "b", b, a, c)

	// An unblock on C removes A's block everywhere, A's own rule included.
	if _, _, err := c.d.Unblock(ctx, []string{"198.18.0.7"}); err != nil {
		t.Fatal(err)
	}
	gone(t, "198.18.0.7/32", a, b, c)

	// B allowlists 198.18.5.1: a fleet block of it is enforced on A and C, not on B.
	if _, err := a.d.Block(ctx, []string{"198.18.5.1"}, "", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.5.1/32", "a", a, c)
	waitFor(t, 2*time.Second, "allowlisted counted on b", func() bool { return b.d.FleetStatus().Allowlisted == 1 })
	if _, ok := b.rule(t, "198.18.5.1/32"); ok || b.enforced("198.18.5.1/32") {
		t.Error("b enforces a fleet block of its allowlisted address")
	}

	// A short block expires on every host at the same instant: the deadline it came with.
	if _, err := a.d.Block(ctx, []string{"2001:db8:1::1"}, "3s", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "2001:db8:1::/64", "a", a, b, c)
	ra, _ := a.rule(t, "2001:db8:1::/64")
	rb, _ := b.rule(t, "2001:db8:1::/64")
	if !rb.Deadline.Equal(ra.Deadline) || rb.Expired(ra.Deadline.Add(-time.Millisecond)) || !rb.Expired(ra.Deadline) {
		t.Errorf("remote deadline %s, want %s", rb.Deadline, ra.Deadline)
	}

	waitFor(t, 2*time.Second, "a's outbox drained", func() bool { return a.d.FleetStatus().Outbox == 0 })
	st := a.d.FleetStatus()
	// a published three blocks, and received b's trap block and c's unblock.
	if st.Published != 3 || st.Received != 2 || st.Outbox != 0 || len(st.Peers) != 1 || st.Peers[0].Node != "b" || st.Refused != 0 {
		t.Errorf("status of a: %+v", st)
	}
}

func TestFleetRefusesBadValues(t *testing.T) {
	srv := natsServer(t, t.TempDir(), -1)
	b := startFleetHost(t, srv.ClientURL(), "b", t.TempDir())
	waitConnected(t, b)
	js := jetStream(t, srv.ClientURL())
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, "snare")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	value := func(prefix string, deadline time.Time) []byte {
		v := fleet.Value{Prefix: prefix, Origin: api.OriginManual, Reason: "x", Node: "x", MadeMs: now.UnixMilli()}
		if !deadline.IsZero() {
			v.DeadlineMs = deadline.UnixMilli()
		}
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	bad := []struct{ key, value string }{
		{"4.198-18-0-20.32", "not json"},
		{"4.198-18-0-21.32", string(value("198.18.0.22/32", now.Add(time.Hour)))},        // another prefix than its key
		{"4.0-0-0-0.0", string(value("0.0.0.0/0", now.Add(time.Hour)))},                  // everything
		{"4.198-18-0-23.32", string(value("198.18.0.23/32", now.Add(365*24*time.Hour)))}, // beyond max_ttl 90d
		{"4.300-18-0-1.32", string(value("198.18.0.1/32", now.Add(time.Hour)))},          // out-of-range address
		{"x", string(value("198.18.0.1/32", now.Add(time.Hour)))},                        // not a key of ours
		{fleet.BulkKey(), "SNB1 is not enough"},                                          // a bulk value cut short
	}
	for _, v := range bad {
		if _, err := kv.Put(ctx, v.key, []byte(v.value)); err != nil {
			t.Fatal(err)
		}
	}
	// The watcher goes on: a good value after them is applied.
	if _, err := kv.Put(ctx, fleet.Key(netip.MustParsePrefix("198.18.0.24/32")), value("198.18.0.24/32", now.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.24/32", "x", b)
	if st := b.d.FleetStatus(); st.Refused != uint64(len(bad)) || st.Received != 1 {
		t.Errorf("refused %d (want %d), received %d (want 1)", st.Refused, len(bad), st.Received)
	}
	if n := b.d.store.Count(); n != 1 {
		t.Errorf("store holds %d rules, want 1", n)
	}
}

// A host that was away catches up: blocks made meanwhile arrive, and a fleet block removed
// meanwhile goes, even with its delete marker purged.
func TestFleetCatchUp(t *testing.T) {
	url, hs := startFleet(t, "a", "b")
	a, b := hs[0], hs[1]
	ctx := context.Background()
	for _, p := range []string{"198.18.0.30", "198.18.0.31"} {
		if _, err := a.d.Block(ctx, []string{p}, "1h", ""); err != nil {
			t.Fatal(err)
		}
	}
	shared(t, "198.18.0.30/32", "a", a, b)
	shared(t, "198.18.0.31/32", "a", a, b)

	b.stop()
	if _, err := a.d.Block(ctx, []string{"198.18.0.32"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"198.18.0.30", "198.18.0.31"} {
		if _, _, err := a.d.Unblock(ctx, []string{p}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 2*time.Second, "a's outbox drained", func() bool { return a.d.FleetStatus().Outbox == 0 })
	// One delete marker is purged: only a reconcile can tell b that .31 is gone.
	kv, err := jetStream(t, url).KeyValue(ctx, "snare")
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, fleet.Key(netip.MustParsePrefix("198.18.0.31/32"))); err != nil {
		t.Fatal(err)
	}
	if err := kv.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(-1)); err != nil {
		t.Fatal(err)
	}

	b2 := startFleetHost(t, url, "b", b.state)
	waitConnected(t, b2)
	shared(t, "198.18.0.32/32", "a", a, b2)
	gone(t, "198.18.0.30/32", a, b2)
	gone(t, "198.18.0.31/32", a, b2)
}

// With the engine down, local work is unchanged and decisions wait in the outbox, across a
// restart of the daemon; when the engine is back they are shared.
func TestFleetOutboxOutlivesOutage(t *testing.T) {
	jsDir := t.TempDir()
	srv := natsServer(t, jsDir, -1)
	url := srv.ClientURL()
	port := srv.Addr().(*net.TCPAddr).Port
	a := startFleetHost(t, url, "a", t.TempDir())
	b := startFleetHost(t, url, "b", t.TempDir())
	waitConnected(t, a, b)
	if _, err := a.d.Block(context.Background(), []string{"198.18.0.42"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.42/32", "a", a, b)
	srv.Shutdown()
	srv.WaitForShutdown()
	waitFor(t, 5*time.Second, "a sees the outage", func() bool { return !a.d.FleetStatus().Connected })

	ctx := context.Background()
	start := time.Now()
	if _, err := a.d.Block(ctx, []string{"198.18.0.40"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("a local block with the engine down took %s", took)
	}
	if !a.enforced("198.18.0.40/32") {
		t.Fatal("local block not enforced at once")
	}
	if n := a.d.FleetStatus().Outbox; n != 1 {
		t.Fatalf("outbox %d, want 1", n)
	}
	// Restart a during the outage: the outbox is in its store.
	a.stop()
	a = startFleetHost(t, url, "a", a.state)
	if _, _, err := a.d.Unblock(ctx, []string{"198.18.0.40"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.d.Block(ctx, []string{"198.18.0.41"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	// Unblocked and blocked again: the delete, published after the new block was made, must
	// not remove it on a (nor, followed by the block, elsewhere).
	if _, _, err := a.d.Unblock(ctx, []string{"198.18.0.42"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.d.Block(ctx, []string{"198.18.0.42"}, "2h", ""); err != nil {
		t.Fatal(err)
	}
	if n := a.d.FleetStatus().Outbox; n != 5 {
		t.Fatalf("outbox after restart %d, want 5", n)
	}

	natsServer(t, jsDir, port)
	waitConnected(t, a, b)
	shared(t, "198.18.0.41/32", "a", a, b)
	gone(t, "198.18.0.40/32", a, b)
	shared(t, "198.18.0.42/32", "a", a, b)
	time.Sleep(100 * time.Millisecond) // the watcher has seen a's own delete marker by now
	shared(t, "198.18.0.42/32", "a", a, b)
	waitFor(t, 2*time.Second, "outbox drained", func() bool { return a.d.FleetStatus().Outbox == 0 })
}

// One snared runs the JetStream server inside itself; another connects to it.
func TestFleetEmbeddedServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := l.Addr().String()
	l.Close()
	a := startFleetHostWith(t, t.TempDir(), func(c *config.Config) {
		c.Fleet.Node = "a"
		c.Fleet.Embedded.Listen = listen
	})
	b := startFleetHost(t, "nats://"+listen, "b", t.TempDir())
	waitConnected(t, a, b)
	st := a.d.FleetStatus()
	if st.Embedded == nil || !st.Embedded.Running || st.Embedded.StoreDir != filepath.Join(a.state, "nats") {
		t.Fatalf("embedded status %+v", st.Embedded)
	}
	if _, err := os.Stat(filepath.Join(a.state, "nats", "jetstream")); err != nil {
		t.Errorf("JetStream store: %v", err)
	}
	if _, err := b.d.Block(context.Background(), []string{"198.18.0.50"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.50/32", "b", b, a)
}

// An embedded server that cannot open its listener says why in the fleet status, at once; the
// host goes on enforcing its own decisions.
func TestFleetEmbeddedListenFails(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for _, tc := range []struct{ listen, clusterListen, want string }{
		{held.Addr().String(), "", "fleet.embedded.listen: listen tcp " + held.Addr().String() + ": bind: address already in use"},
		{"198.18.99.99:4222", "", "fleet.embedded.listen: listen tcp 198.18.99.99:4222: bind: cannot assign requested address"},
		{fmt.Sprintf("127.0.0.1:%d", freePort(t)), held.Addr().String(), "fleet.embedded.cluster_listen: listen tcp " + held.Addr().String() + ": bind: address already in use"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			h := startFleetHostWith(t, t.TempDir(), func(c *config.Config) {
				c.Fleet.Node = "a"
				c.Fleet.Embedded.Listen = tc.listen
				c.Fleet.Embedded.ClusterListen = tc.clusterListen
			})
			waitFor(t, 2*time.Second, "an error in the fleet status", func() bool { return h.d.FleetStatus().Error != "" })
			if st := h.d.FleetStatus(); st.Connected || st.Error != tc.want {
				t.Errorf("fleet status: connected %v, error %q; want %q", st.Connected, st.Error, tc.want)
			}
			if _, err := h.d.Block(t.Context(), []string{"198.18.0.55"}, "1h", ""); err != nil || !h.enforced("198.18.0.55/32") {
				t.Fatalf("local block: %v", err)
			}
		})
	}
}

// An embedded server whose port is held starts once it is free (as one whose address is not up
// yet at boot starts once it is), and the fleet connects.
func TestFleetEmbeddedStartsLater(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := held.Addr().String()
	a := startFleetHostWith(t, t.TempDir(), func(c *config.Config) {
		c.Fleet.Node = "a"
		c.Fleet.Embedded.Listen = listen
	})
	b := startFleetHost(t, "nats://"+listen, "b", t.TempDir())
	waitFor(t, 2*time.Second, "an error in the fleet status", func() bool { return a.d.FleetStatus().Error != "" })
	held.Close()
	waitConnected(t, a, b)
	if st := a.d.FleetStatus(); st.Embedded == nil || !st.Embedded.Running {
		t.Fatalf("embedded status %+v", st.Embedded)
	}
	if _, err := a.d.Block(t.Context(), []string{"198.18.0.56"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.56/32", "a", a, b)
}

// A stale unblock never removes a newer block: neither an unblock made before a later block
// (held in an outbox meanwhile), nor a delete with an older revision than the rule's.
func TestFleetStaleUnblock(t *testing.T) {
	url, hs := startFleet(t, "a", "c")
	a, c := hs[0], hs[1]
	ctx := context.Background()
	if _, err := a.d.Block(ctx, []string{"198.18.0.60"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.60/32", "a", a, c)

	// c, cut off from the engine, unblocks; a blocks again afterwards; then c comes back.
	c.stop()
	c = startFleetHost(t, "nats://127.0.0.1:1", "c", c.state)
	if _, _, err := c.d.Unblock(ctx, []string{"198.18.0.60"}); err != nil {
		t.Fatal(err)
	}
	c.stop()
	time.Sleep(5 * time.Millisecond) // the block is made after the unblock, in milliseconds too
	if _, _, err := a.d.Unblock(ctx, []string{"198.18.0.60"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.d.Block(ctx, []string{"198.18.0.60"}, "2h", "again"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "a's outbox drained", func() bool { return a.d.FleetStatus().Outbox == 0 })
	c = startFleetHost(t, url, "c", c.state)
	waitConnected(t, c)
	waitFor(t, 2*time.Second, "c's outbox drained", func() bool { return c.d.FleetStatus().Outbox == 0 })
	if st := c.d.FleetStatus(); st.Stale != 1 {
		t.Errorf("stale unblocks on c: %d, want 1 (%+v; a: %+v)", st.Stale, st, a.d.FleetStatus())
	}
	shared(t, "198.18.0.60/32", "a", a, c)

	// A delete older than the fleet rule's revision leaves it; a newer one removes it.
	r, _ := c.rule(t, "198.18.0.60/32")
	p := netip.MustParsePrefix("198.18.0.60/32")
	if n, err := c.d.RemoveFleet(ctx, []fleet.Removal{{Prefix: p, Revision: r.Revision - 1, At: time.Now()}}); err != nil || n != 0 {
		t.Fatalf("older delete: removed %d, %v", n, err)
	}
	if !c.enforced("198.18.0.60/32") {
		t.Fatal("an older delete removed a newer block")
	}
	if n, err := c.d.RemoveFleet(ctx, []fleet.Removal{{Prefix: p, Revision: r.Revision + 1, At: time.Now()}}); err != nil || n != 1 {
		t.Fatalf("newer delete: removed %d, %v", n, err)
	}
}

// An import, small or big (the store's bulk path), is shared packed into bulk values, queued in
// the commit that stores it, and every entry reaches the other host.
func TestFleetSharesImports(t *testing.T) {
	url, hs := startFleet(t, "a", "b")
	a, b := hs[0], hs[1]
	ctx := context.Background()
	n := bulkImport + 10_000 // the bulk path
	importBig(t, a, n)
	if _, err := a.d.Import(ctx, api.ImportRequest{Content: "198.18.0.70\n2001:db8:7::/48\n", Name: "small"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "every imported entry on b", func() bool { return b.d.store.Count() == n+2 })
	shared(t, "198.19.0.0/32", "a", a, b)
	shared(t, fmt.Sprintf("198.19.%d.%d/32", (n-1)/256, (n-1)%256), "a", a, b)
	shared(t, "2001:db8:7::/48", "a", a, b)
	if st := a.d.FleetStatus(); st.Published != uint64(n+2) || st.Outbox != 0 {
		t.Errorf("a published %d, outbox %d; want %d, 0", st.Published, st.Outbox, n+2)
	}
	kv, err := jetStream(t, url).KeyValue(ctx, "snare")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var perPrefix, bulk int
	for k := range keys.Keys() {
		if fleet.IsBulkKey(k) {
			bulk++
		} else {
			perPrefix++
		}
	}
	if perPrefix != 0 || bulk < 3 {
		t.Errorf("the bucket holds %d keys of a prefix and %d bulk values; want none and one per 512 KB of each import", perPrefix, bulk)
	}
}

// A trap flood is shared up to fleet.max_publish_per_second; the rest is shed and counted, and
// enforced locally all the same.
func TestFleetShedsTrapFlood(t *testing.T) {
	srv := natsServer(t, t.TempDir(), -1)
	url := srv.ClientURL()
	a := startFleetHostWith(t, t.TempDir(), func(c *config.Config) {
		c.Fleet.Servers = []string{url}
		c.Fleet.Node = "a"
		c.Fleet.MaxPublishPerSecond = 5
	})
	b := startFleetHost(t, url, "b", t.TempDir())
	waitConnected(t, a, b)
	var evs []backend.TrapEvent
	for i := range 40 {
		evs = append(evs, backend.TrapEvent{Time: time.Now(), Source: netip.AddrFrom4([4]byte{198, 18, 9, byte(i)}),
			Proto: "tcp", Ports: []uint16{1}, TCPFlags: "SYN", Blocked: true})
	}
	if err := a.d.handleTraps(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a's outbox drained", func() bool { return a.d.FleetStatus().Outbox == 0 })
	st := a.d.FleetStatus()
	if st.Shed < 30 || st.Shed+st.Published != 40 {
		t.Errorf("shed %d, published %d: want the cap (5 a second) shared and the rest of 40 shed", st.Shed, st.Published)
	}
	if got := a.d.store.Count(); got != 40 {
		t.Errorf("a enforces %d trap blocks, want 40", got)
	}
	waitFor(t, 2*time.Second, "b has what was shared", func() bool { return uint64(b.d.store.Count()) == st.Published })
}

// The fleet section changes only on restart: a reload that adds one keeps the host on its own.
func TestFleetReloadNeedsRestart(t *testing.T) {
	d, _ := fakeDaemon(t)
	next := *d.Config()
	next.Fleet.Servers = []string{"nats://198.18.0.5:4222"}
	if err := d.Reload(context.Background(), &next); err != nil {
		t.Fatal(err)
	}
	if d.Config().FleetEnabled() || d.FleetStatus().Enabled {
		t.Error("a reload turned the fleet on without a node to run it")
	}
}

// An unblock of a prefix a shared import holds reaches every host, a host that joins later
// included, and a later block of it is shared again.
func TestFleetUnblockInsideSharedImport(t *testing.T) {
	url, hs := startFleet(t, "a", "b")
	a, b := hs[0], hs[1]
	ctx := context.Background()
	n := bulkImport + 10 // the bulk path
	importBig(t, a, n)
	waitFor(t, 60*time.Second, "every imported entry on b", func() bool { return b.d.store.Count() == n })
	if _, _, err := b.d.Unblock(ctx, []string{"198.19.0.5"}); err != nil {
		t.Fatal(err)
	}
	gone(t, "198.19.0.5/32", a, b)

	c := startFleetHost(t, url, "c", t.TempDir())
	waitConnected(t, c)
	waitFor(t, 60*time.Second, "the import on c, but the unblocked entry", func() bool { return c.d.store.Count() == n-1 })
	gone(t, "198.19.0.5/32", c)
	shared(t, "198.19.0.6/32", "a", a, b, c)

	if _, err := c.d.Block(ctx, []string{"198.19.0.5"}, "1h", "again"); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.19.0.5/32", "c", c, a, b)
}

// A reconnect reads every key again: what is applied already is not counted again, and a block
// the allowlist keeps out is counted and logged once.
func TestFleetReconnectCountsOnce(t *testing.T) {
	jsDir := t.TempDir()
	srv := natsServer(t, jsDir, -1)
	url := srv.ClientURL()
	port := srv.Addr().(*net.TCPAddr).Port
	a := startFleetHost(t, url, "a", t.TempDir())
	b := startFleetHost(t, url, "b", t.TempDir(), "198.18.5.1/32")
	waitConnected(t, a, b)
	ctx := context.Background()
	for _, p := range []string{"198.18.0.80", "198.18.5.1"} {
		if _, err := a.d.Block(ctx, []string{p}, "1h", ""); err != nil {
			t.Fatal(err)
		}
	}
	shared(t, "198.18.0.80/32", "a", a, b)
	waitFor(t, 2*time.Second, "allowlisted counted on b", func() bool { return b.d.FleetStatus().Allowlisted == 1 })

	srv.Shutdown()
	srv.WaitForShutdown()
	waitFor(t, 5*time.Second, "b sees the outage", func() bool { return !b.d.FleetStatus().Connected })
	natsServer(t, jsDir, port)
	waitConnected(t, b) // connected once the bucket's keys are all applied again
	if st := b.d.FleetStatus(); st.Received != 1 || st.Allowlisted != 1 {
		t.Errorf("after a reconnect b counts received %d, allowlisted %d; want 1 and 1", st.Received, st.Allowlisted)
	}
}

// A server whose max_payload is too small for a bulk value: the import is enforced here, waits
// in the outbox, and fleet status says why.
func TestFleetBulkOverMaxPayload(t *testing.T) {
	srv := natsServerWith(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
		MaxPayload: 256 << 10})
	a := startFleetHost(t, srv.ClientURL(), "a", t.TempDir())
	waitConnected(t, a)
	importBig(t, a, bulkImport+10)
	if !a.enforced("198.19.0.1/32") {
		t.Fatal("the import is not enforced here")
	}
	waitFor(t, 5*time.Second, "fleet status names max_payload", func() bool {
		return strings.Contains(a.d.FleetStatus().Error, "max_payload")
	})
	if st := a.d.FleetStatus(); st.Outbox == 0 || st.Published != 0 {
		t.Errorf("outbox %d, published %d: want the import waiting", st.Outbox, st.Published)
	}
}

// A repeat offender's escalated block is shared with its longer deadline.
func TestFleetSharesEscalation(t *testing.T) {
	_, hs := startFleet(t, "a", "b")
	a, b := hs[0], hs[1]
	if !b.d.Config().Block.Escalation.Enabled {
		t.Fatal("escalation is off by default: this test needs it on")
	}
	ctx := context.Background()
	trap := func() {
		t.Helper()
		if err := b.d.handleTraps(ctx, []backend.TrapEvent{{Time: time.Now(), Source: netip.MustParseAddr("198.18.0.90"),
			Proto: "tcp", Ports: []uint16{1}, TCPFlags: "SYN", Blocked: true}}); err != nil {
			t.Fatal(err)
		}
	}
	trap()
	shared(t, "198.18.0.90/32", "b", b, a)
	first, _ := a.rule(t, "198.18.0.90/32")
	if _, _, err := b.d.Unblock(ctx, []string{"198.18.0.90"}); err != nil {
		t.Fatal(err)
	}
	gone(t, "198.18.0.90/32", a, b)
	trap()
	shared(t, "198.18.0.90/32", "b", b, a)
	again, _ := a.rule(t, "198.18.0.90/32")
	base := time.Duration(b.d.Config().Block.TTL)
	if got := again.Deadline.Sub(again.LastOffence); got < base*3/2 || !again.Deadline.After(first.Deadline) {
		t.Errorf("the second block reached a for %s (the first for %s), want an escalated TTL over %s",
			got, first.Deadline.Sub(first.LastOffence), base)
	}
}

// An existing bucket is used as it is: fleet.replicas applies only when snared creates it (a
// host configured for 3 replicas joins a one-server fleet's bucket), and one that cannot take a
// TTL per key is refused with the reason in fleet status.
func TestFleetBucketAsItIs(t *testing.T) {
	srv := natsServer(t, t.TempDir(), -1)
	url := srv.ClientURL()
	a := startFleetHost(t, url, "a", t.TempDir())
	waitConnected(t, a)
	b := startFleetHostWith(t, t.TempDir(), func(c *config.Config) {
		c.Fleet.Servers, c.Fleet.Node, c.Fleet.Replicas = []string{url}, "b", 3
	})
	waitConnected(t, b)
	if _, err := b.d.Block(t.Context(), []string{"198.18.0.95"}, "1h", ""); err != nil {
		t.Fatal(err)
	}
	shared(t, "198.18.0.95/32", "b", b, a)

	if _, err := jetStream(t, url).CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "plain"}); err != nil {
		t.Fatal(err)
	}
	c := startFleetHostWith(t, t.TempDir(), func(c *config.Config) {
		c.Fleet.Servers, c.Fleet.Node, c.Fleet.Bucket = []string{url}, "c", "plain"
	})
	waitFor(t, 5*time.Second, "the reason in c's fleet status", func() bool {
		return strings.Contains(c.d.FleetStatus().Error, "bucket plain does not take a TTL per key")
	})
	if c.d.FleetStatus().Connected {
		t.Error("c connected to a bucket it cannot use")
	}
}
