package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control/store"

	"github.com/snare-dev/snare/control/api"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/internal/testutil"
)

func fakeDaemon(t testing.TB) (*Daemon, *testutil.MemEnforcer) {
	t.Helper()
	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = t.TempDir()
	f := &testutil.MemEnforcer{}
	d, err := Open(context.Background(), Options{
		Config: cfg, OpenEnforcer: func() (backend.Enforcer, string, error) { return f, "", nil },
		ImplicitAllow: func() (Allowlist, error) {
			return Allowlist{{netip.MustParsePrefix("198.18.1.1/32"), api.AllowOwnAddress}}, nil
		},
		Listening: func(context.Context) (map[uint16]bool, map[uint16]bool, error) {
			return map[uint16]bool{31337: true}, nil, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, f
}

func TestEscalationThroughBlocks(t *testing.T) {
	d, f := fakeDaemon(t)
	ctx := context.Background()
	day := 24 * time.Hour
	block := func(ttl string) store.Rule {
		t.Helper()
		rs, err := d.Block(ctx, []string{"198.18.0.7"}, ttl, "")
		if err != nil {
			t.Fatal(err)
		}
		return rs[0]
	}
	within := func(got time.Time, want time.Duration) bool {
		d := time.Until(got) - want
		return d > -time.Minute && d < time.Minute
	}
	r := block("")
	if r.Offences != 1 || !within(r.Deadline, 5*day) {
		t.Fatalf("first block %+v: want 1 offence, 5d", r)
	}
	// Blocking again counts a repeat and escalates: 5d * 2.
	r = block("")
	if r.Offences != 2 || !within(r.Deadline, 10*day) {
		t.Fatalf("second block %+v: want 2 offences, 10d", r)
	}
	// Unblocked and blocked again within the lookback: still a repeat offender.
	if _, _, err := d.Unblock(ctx, []string{"198.18.0.7"}); err != nil {
		t.Fatal(err)
	}
	r = block("")
	if r.Offences != 3 || !within(r.Deadline, 20*day) {
		t.Fatalf("third block %+v: want 3 offences, 20d", r)
	}
	// Capped at max_ttl (90d).
	block("")
	r = block("")
	if r.Offences != 5 || !within(r.Deadline, 80*day) {
		t.Fatalf("fifth block %+v: want 80d", r)
	}
	r = block("")
	if !within(r.Deadline, 90*day) {
		t.Fatalf("sixth block %+v: want the 90d cap", r)
	}
	// An explicit TTL is the operator's word: no escalation; it does not shorten a block.
	r = block("2h")
	if !within(r.Deadline, 90*day) || r.Offences != 7 {
		t.Fatalf("explicit shorter TTL %+v: want the 90d kept, offences counted", r)
	}
	if _, _, err := d.Unblock(ctx, []string{"198.18.0.7"}); err != nil {
		t.Fatal(err)
	}
	r = block("2h")
	if !within(r.Deadline, 2*time.Hour) || r.Offences != 8 {
		t.Fatalf("explicit TTL %+v: want exactly 2h for a repeat offender", r)
	}
	// The kernel got the same deadline the store has.
	rs, _ := f.Rules(ctx)
	if len(rs) != 1 || !rs[0].Deadline.Equal(r.Deadline) {
		t.Errorf("enforcer holds %+v, store %s", rs, r.Deadline)
	}
	// Permanent stays permanent and a later default block does not shorten it.
	block("permanent")
	if r = block(""); !r.Permanent() {
		t.Errorf("default block shortened a permanent one: %+v", r)
	}
}

func TestBlockFailsAtomically(t *testing.T) {
	d, f := fakeDaemon(t)
	ctx := context.Background()
	f.FailBlocks(context.DeadlineExceeded)
	if _, err := d.Block(ctx, []string{"198.18.0.9"}, "", ""); err == nil {
		t.Fatal("block succeeded although the enforcer failed")
	}
	f.FailBlocks(nil)
	es, err := listEntries(ctx, d)
	if err != nil || len(es) != 0 {
		t.Fatalf("a failed block left %v in the store (%v)", es, err)
	}
	if r, _ := d.Block(ctx, []string{"198.18.0.9"}, "", ""); r[0].Offences != 1 {
		t.Errorf("the failed block counted an offence: %+v", r[0])
	}
}

func TestTrapPortsSkipListeningPorts(t *testing.T) {
	d, f := fakeDaemon(t)
	trap := f.Trap()
	for _, p := range trap.TCPPorts {
		if p == 31337 {
			t.Fatal("a port the host listens on is a trap")
		}
	}
	if len(trap.TCPPorts) == 0 || len(trap.UDPPorts) == 0 || !trap.BlockTCP {
		t.Errorf("trap config %+v", trap)
	}
	st, _ := d.Status(context.Background())
	if strings.Contains(st.Trap.TCPPorts, "31337") || !strings.Contains(st.Trap.UDPPorts, "31337") {
		t.Errorf("status trap ports tcp %q udp %q", st.Trap.TCPPorts, st.Trap.UDPPorts)
	}
}

func TestAPIErrors(t *testing.T) {
	d, _ := fakeDaemon(t)
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	for _, tc := range []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/v1/block", `{"targets":["198.18.0.7"],"ttl":"5x"}`, 400, "bad TTL"},
		{"POST", "/v1/block", `{"targets":["198.18.1.1"]}`, 400, "allowlisted"},
		{"POST", "/v1/block", `{"targets":[]}`, 400, "no address"},
		{"POST", "/v1/block", `{"targets":["198.18.0.7"],"bogus":1}`, 400, "unknown field"},
		{"POST", "/v1/block", `not json`, 400, "bad request body"},
		{"GET", "/v1/block", ``, 404, "no API endpoint GET /v1/block"},
		{"GET", "/v1/nope", ``, 404, "no API endpoint"},
		{"POST", "/v1/unblock", `{"targets":["::/0"]}`, 400, "every IPv6"},
		{"POST", "/v1/allow/del", `{"targets":["198.18.1.1"]}`, 400, "own-address"},
		{"POST", "/v1/import", `{"content":"198.18.0.1\nx\n"}`, 400, "line 2"},
		{"GET", "/v1/export?format=csv", ``, 400, "unknown export format"},
		{"POST", "/v1/block", `{"targets":["198.18.0.7"],"ttl":"1h"}`, 200, `"offences":1`},
		{"POST", "/v1/unblock", `{"targets":["198.18.0.7","198.18.0.8"]}`, 200, `"not_found":["198.18.0.8"]`},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, bytes.NewBufferString(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(buf.String(), tc.want) {
			t.Errorf("%s %s %s: %d %s; want %d containing %q", tc.method, tc.path, tc.body, resp.StatusCode, buf.String(), tc.status, tc.want)
		}
		if tc.status >= 400 {
			var e api.ErrorResponse
			if json.Unmarshal(buf.Bytes(), &e) != nil || e.Error == "" {
				t.Errorf("%s %s: error body %q is not an ErrorResponse", tc.method, tc.path, buf.String())
			}
		}
	}
	if es, _ := listEntries(context.Background(), d); len(es) != 0 {
		t.Errorf("entries left: %+v", es)
	}
}

func TestListenSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run", "snare", "s.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another snared") {
		t.Errorf("second listener on a live socket: %v", err)
	}
	// A stale socket left by a daemon that died (nothing answers) is replaced.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	l2, err := Listen(path)
	if err != nil {
		t.Fatalf("listen after close: %v", err)
	}
	l2.Close()

	plain := filepath.Join(dir, "not-a-socket")
	os.WriteFile(plain, []byte("keep me"), 0o600)
	if _, err := Listen(plain); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listen on a regular file: %v", err)
	}
	if b, _ := os.ReadFile(plain); string(b) != "keep me" {
		t.Error("a regular file at the socket path was replaced")
	}
}

func TestServeEventsFollow(t *testing.T) {
	d, _ := fakeDaemon(t)
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- d.ServeListener(ctx, l, func() { close(ready) }) }()
	<-ready
	c := api.NewClient(sock)

	got := make(chan api.Event, 16)
	fctx, fcancel := context.WithCancel(context.Background())
	followDone := make(chan error, 1)
	go func() {
		followDone <- c.Events(fctx, true, func(ev api.Event) error { got <- ev; return nil })
	}()
	waitFor := func(kind, addr string) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case ev := <-got:
				if ev.Event == kind && ev.Address == addr {
					return
				}
			case <-timeout:
				t.Fatalf("no %s event for %s", kind, addr)
			}
		}
	}
	waitFor(api.EventStart, "") // the recent history comes first
	if _, err := c.Block(context.Background(), api.BlockRequest{Targets: []string{"198.18.0.7"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(api.EventBlock, "198.18.0.7/32")
	fcancel()
	if err := <-followDone; err != nil {
		t.Errorf("follow ended with %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(context.Background()); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("socket after stop: %v", err)
	}
}

func TestImplicitAllowFollowsTheHost(t *testing.T) {
	d, f := fakeDaemon(t)
	ctx := context.Background()
	gw := netip.MustParsePrefix("198.18.9.1/32")
	d.opts.ImplicitAllow = func() (Allowlist, error) {
		return Allowlist{{netip.MustParsePrefix("198.18.1.1/32"), api.AllowOwnAddress}, {gw, api.AllowGateway}}, nil
	}
	if _, err := d.Block(ctx, []string{"198.18.9.1"}, "", ""); err != nil {
		t.Fatalf("block before the gateway appeared: %v", err)
	}
	if _, _, err := d.Unblock(ctx, []string{"198.18.9.1"}); err != nil {
		t.Fatal(err)
	}
	if err := d.RefreshImplicitAllow(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Block(ctx, []string{"198.18.9.1"}, "", ""); err == nil || !strings.Contains(err.Error(), "gateway") {
		t.Errorf("block of the new gateway: %v", err)
	}
	if !slices.Contains(f.Allowed(), gw) {
		t.Errorf("enforcer allowlist %v lacks the new gateway", f.Allowed())
	}
}

// TestAllowlistWinsOverExistingBlocks: an address allowlisted after it was blocked (by hand, or
// a gateway that appeared) loses its block at once, in the store and in the kernel; blocks
// outside the new allow prefix stay.
func TestAllowlistWinsOverExistingBlocks(t *testing.T) {
	d, f := fakeDaemon(t)
	ctx := context.Background()
	if _, err := d.Block(ctx, []string{"198.18.5.5", "198.18.6.6", "198.18.9.1"}, "", "test"); err != nil {
		t.Fatal(err)
	}
	if err := d.AllowAdd(ctx, []string{"198.18.5.0/24"}); err != nil {
		t.Fatal(err)
	}
	held := func() []string { return heldPrefixes(t, f) }
	if got, want := held(), []string{"198.18.6.6/32", "198.18.9.1/32"}; !slices.Equal(got, want) {
		t.Fatalf("enforcer holds %v after allow add, want %v", got, want)
	}
	es, err := listEntries(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Prefix == "198.18.5.5/32" {
			t.Fatalf("store still lists the allowlisted %s", e.Prefix)
		}
	}
	var unblocked bool
	for _, ev := range d.Events().Recent() {
		if ev.Event == api.EventUnblock && ev.Address == "198.18.5.5/32" && strings.Contains(ev.Detail, "allowlisted") {
			unblocked = true
		}
	}
	if !unblocked {
		t.Error("no unblock event for the allowlisted address")
	}

	// The implicit allowlist growing (a new gateway) has the same effect.
	d.opts.ImplicitAllow = func() (Allowlist, error) {
		return Allowlist{{netip.MustParsePrefix("198.18.1.1/32"), api.AllowOwnAddress},
			{netip.MustParsePrefix("198.18.9.1/32"), api.AllowGateway}}, nil
	}
	if err := d.RefreshImplicitAllow(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := held(), []string{"198.18.6.6/32"}; !slices.Equal(got, want) {
		t.Fatalf("enforcer holds %v after the gateway appeared, want %v", got, want)
	}
}

// TestRestoreAfterAllowlistChange: the store is read while the enforcer loads; when the start's
// allowlist refresh then drops a stored block (the address became the gateway while snared was
// down), that snapshot is stale and must not put the block back into the kernel.
func TestRestoreAfterAllowlistChange(t *testing.T) {
	d, _ := fakeDaemon(t)
	ctx := context.Background()
	if _, err := d.Block(ctx, []string{"198.18.9.1", "198.18.6.6"}, "", "test"); err != nil {
		t.Fatal(err)
	}
	cfg := d.Config()
	d.Close()

	f := &testutil.MemEnforcer{} // empty maps: a start after a reboot
	d2, err := Open(ctx, Options{
		Config: cfg, OpenEnforcer: func() (backend.Enforcer, string, error) { return f, "", nil },
		ImplicitAllow: func() (Allowlist, error) {
			return Allowlist{{netip.MustParsePrefix("198.18.1.1/32"), api.AllowOwnAddress},
				{netip.MustParsePrefix("198.18.9.1/32"), api.AllowGateway}}, nil
		},
		Listening: func(context.Context) (map[uint16]bool, map[uint16]bool, error) { return nil, nil, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if held, want := heldPrefixes(t, f), []string{"198.18.6.6/32"}; !slices.Equal(held, want) {
		t.Fatalf("kernel holds %v after the restart, want %v (the gateway's block dropped)", held, want)
	}
	es, err := listEntries(ctx, d2)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Prefix != "198.18.6.6/32" {
		t.Fatalf("store lists %+v, want only 198.18.6.6/32", es)
	}
}

// heldPrefixes is what the fake enforcer holds, sorted.
func heldPrefixes(t *testing.T, f *testutil.MemEnforcer) []string {
	t.Helper()
	rs, err := f.Rules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		out = append(out, r.Prefix.String())
	}
	slices.Sort(out)
	return out
}

// A start adopts the trap blocks the kernel made while no daemon ran: recorded in the store as
// trap blocks and left in the kernel with their deadline from the store; an expired trap block,
// one the allowlist covers now and an entry nobody knows are removed.
func TestOpenAdoptsTrapBlocks(t *testing.T) {
	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = t.TempDir()
	f := &testutil.MemEnforcer{}
	open := func() *Daemon {
		d, err := Open(context.Background(), Options{Config: cfg,
			OpenEnforcer: func() (backend.Enforcer, string, error) { return f, "", nil },
			ImplicitAllow: func() (Allowlist, error) {
				return Allowlist{{netip.MustParsePrefix("198.19.0.5/32"), api.AllowOwnAddress}}, nil
			},
			Listening: func(context.Context) (map[uint16]bool, map[uint16]bool, error) { return nil, nil, nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d := open()
	if _, err := d.Block(context.Background(), []string{"198.19.0.1"}, "1h", "by hand"); err != nil {
		t.Fatal(err)
	}
	d.Close()

	P := netip.MustParsePrefix
	now := time.Now()
	f.Put(backend.RuleState{Rule: backend.Rule{Prefix: P("198.19.0.9/32"), Deadline: now.Add(time.Hour)}, FromTrap: true})
	f.Put(backend.RuleState{Rule: backend.Rule{Prefix: P("198.19.0.8/32"), Deadline: now.Add(-time.Minute)}, FromTrap: true})
	f.Put(backend.RuleState{Rule: backend.Rule{Prefix: P("198.19.0.7/32"), Deadline: now.Add(time.Hour)}})
	f.Put(backend.RuleState{Rule: backend.Rule{Prefix: P("198.19.0.5/32"), Deadline: now.Add(time.Hour)}, FromTrap: true})

	d = open()
	defer d.Close()
	stored := entriesByPrefix(t, d)
	if len(stored) != 2 || stored["198.19.0.1/32"].Reason != "by hand" {
		t.Fatalf("store after start: %+v, want the manual block and the adopted trap block", stored)
	}
	adopted := stored["198.19.0.9/32"]
	if adopted.Origin != api.OriginTrap || adopted.Reason != adoptReason || adopted.Expires.IsZero() {
		t.Fatalf("adopted trap block %+v: want origin trap, reason %q, a deadline", adopted, adoptReason)
	}
	held := f.Held()
	if gap := held[P("198.19.0.9/32")].Deadline.Sub(adopted.Expires); len(held) != 2 || gap < -time.Millisecond || gap > time.Millisecond {
		t.Fatalf("kernel after start: %v; want 198.19.0.1 and 198.19.0.9 expiring %v", held, adopted.Expires)
	}
	if _, ok := held[P("198.19.0.1/32")]; !ok {
		t.Fatalf("kernel after start lost the manual block: %v", held)
	}
}

// Trap events the back-end delivers after the daemon's context ended (read from the kernel
// during a shutdown) are still recorded: each scanner's block is in the store and the kernel.
// Every call gets a context that has ended and a channel holding one event, then closed.
func TestTrapEventsAfterShutdownRecorded(t *testing.T) {
	d, f := fakeDaemon(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var srcs []netip.Addr
	for i := range 10 {
		src := netip.AddrFrom4([4]byte{198, 18, 50, byte(10 + i)})
		srcs = append(srcs, src)
		ch := make(chan backend.TrapEvent, 1)
		ch <- backend.TrapEvent{Time: time.Now(), Source: src, Proto: "tcp", Ports: []uint16{31337}, TCPFlags: "SYN", Blocked: true}
		close(ch)
		d.HandleTrapEvents(ctx, ch)
	}
	stored := entriesByPrefix(t, d)
	for _, src := range srcs {
		p := netip.PrefixFrom(src, 32)
		if e, ok := stored[p.String()]; !ok || e.Origin != api.OriginTrap || !strings.HasPrefix(e.Reason, "trap: tcp/31337") {
			t.Errorf("%s: stored %v %+v, want a trap block", p, ok, e)
		}
		if _, ok := f.Rule(p); !ok {
			t.Errorf("%s: not in the kernel", p)
		}
	}
}

// listEntries returns every active block of d with its live counters, in prefix order, as
// GET /v1/list does.
func listEntries(ctx context.Context, d *Daemon) ([]api.Entry, error) {
	var out []api.Entry
	err := d.EachEntry(ctx, func(e *api.Entry) error {
		out = append(out, *e)
		return nil
	})
	return out, err
}

// entriesByPrefix is what the daemon lists, by prefix.
func entriesByPrefix(t testing.TB, d *Daemon) map[string]api.Entry {
	t.Helper()
	es, err := listEntries(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]api.Entry{}
	for _, e := range es {
		out[e.Prefix] = e
	}
	return out
}

// block.capacity is per family and counts what the store holds: a block that would exceed it is
// refused with a message naming it and changes nothing; blocking again what is stored adds
// nothing and passes; the other family and the room an unblock frees are usable.
func TestBlockRefusedAtCapacity(t *testing.T) {
	d, f := fakeDaemon(t)
	d.cfg.Block.Capacity = 3
	ctx := context.Background()
	if _, err := d.Block(ctx, []string{"198.18.0.1", "198.18.0.2"}, "", ""); err != nil {
		t.Fatal(err)
	}
	_, err := d.Block(ctx, []string{"198.18.0.3", "198.18.0.4"}, "", "")
	var ue *UserError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "block.capacity 3") {
		t.Fatalf("two more at capacity 3: %v, want a user error (400) naming block.capacity 3", err)
	}
	if es, _ := listEntries(ctx, d); len(es) != 2 || f.Len() != 2 {
		t.Fatalf("the refused block changed something: %d stored, %d in the kernel", len(es), f.Len())
	}
	if _, err := d.Block(ctx, []string{"198.18.0.1", "198.18.0.2", "198.18.0.3"}, "", ""); err != nil {
		t.Fatalf("blocking two stored and one new at capacity 3: %v", err)
	}
	if _, err := d.Block(ctx, []string{"2001:db8::/64", "2001:db8:1::/64", "2001:db8:2::/64"}, "", ""); err != nil {
		t.Fatalf("IPv6 with IPv4 full: %v", err)
	}
	if _, err := d.Block(ctx, []string{"198.18.0.4"}, "", ""); err == nil {
		t.Fatal("a fourth IPv4 block at capacity 3 was accepted")
	}
	if _, _, err := d.Unblock(ctx, []string{"198.18.0.3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Block(ctx, []string{"198.18.0.4"}, "", ""); err != nil {
		t.Fatalf("after an unblock made room: %v", err)
	}
}
