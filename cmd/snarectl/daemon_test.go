package main

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

	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/internal/testutil"

	"github.com/snare-dev/snare/control/api"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control"
)

// newMemEnforcer is an in-memory enforcer that reports itself as the XDP back-end on veth0, so
// that snarectl can be run against the real control.Daemon and its real API handler without
// root or a kernel.
func newMemEnforcer() *testutil.MemEnforcer {
	return &testutil.MemEnforcer{Backend: "xdp", Interfaces: []backend.InterfaceStatus{{Name: "veth0", Mode: "native"}}, Capacity: 1000}
}

// startDaemon runs the real control.Daemon (store, allowlist, import parser, event log, API)
// over an in-memory enforcer, with 198.18.0.1 as its "gateway", and returns its socket.
func startDaemon(t *testing.T) string {
	t.Helper()
	return startDaemonIn(t, stateDir(t), newMemEnforcer())
}

// stateDir is a fresh state directory, removed when the test ends. It is short (not t.TempDir,
// whose path grows with the test name): the socket in it must fit in 108 bytes.
func stateDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "snarectl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startDaemonIn is startDaemon on the state in dir (a store and event log written before, as
// an older snared left them) and the given enforcer.
func startDaemonIn(t *testing.T, dir string, enf *testutil.MemEnforcer) string {
	t.Helper()
	socket := filepath.Join(dir, "snare.sock")
	cfg, err := config.Load(config.LoadOptions{Env: []string{"SNARE_STATE_DIR=" + dir, "SNARE_SOCKET=" + socket}})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Block.Capacity = 1000 // what newMemEnforcer reports
	serveDaemon(t, cfg, enf, control.Allowlist{{Prefix: netip.MustParsePrefix("198.18.0.1/32"), Source: api.AllowGateway}})
	return socket
}

// serveDaemon runs the real control.Daemon on cfg and enf, with implicit as its implicit
// allowlist and no listening ports, serving its API on cfg.Socket until the test ends.
func serveDaemon(t *testing.T, cfg *config.Config, enf backend.Enforcer, implicit control.Allowlist) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := control.Open(ctx, control.Options{
		Config:        cfg,
		Version:       "test",
		OpenEnforcer:  func() (backend.Enforcer, string, error) { return enf, "", nil },
		ImplicitAllow: func() (control.Allowlist, error) { return implicit, nil },
		Listening:     func(context.Context) (tcp, udp map[uint16]bool, err error) { return nil, nil, nil },
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	l, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); d.ServeListener(ctx, l, func() {}) }()
	t.Cleanup(func() { cancel(); <-done; d.Close() })
}

// The CLI against the real API: what snarectl sends is what snared understands, and the
// daemon's refusals come back as exit code 1 with its message.
func TestAgainstRealDaemon(t *testing.T) {
	socket := startDaemon(t)
	run := func(stdin string, args ...string) result { return runCLI(t, socket, stdin, args...) }
	list := func() []string {
		r := run("", "list", "-o", "json")
		var resp api.ListResponse
		if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil {
			t.Fatalf("list -o json: %v %q %q", err, r.stdout, r.stderr)
		}
		var out []string
		for _, e := range resp.Entries {
			out = append(out, e.Prefix)
		}
		return out
	}

	if r := run("", "block", "198.18.0.7", "2001:db8::1", "--ttl", "12h", "--reason", "test"); r.code != exitOK ||
		!strings.Contains(r.stdout, "blocked 198.18.0.7 until") || !strings.Contains(r.stdout, "blocked 2001:db8::/64 until") {
		t.Fatalf("block: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if got := list(); strings.Join(got, " ") != "198.18.0.7/32 2001:db8::/64" {
		t.Errorf("after block: %q", got)
	}

	// Refused by the daemon: the gateway, a prefix wider than block.min_prefix_v4.
	for _, tc := range []struct{ target, want string }{
		{"198.18.0.1", "allowlisted"},
		{"198.0.0.0/7", "wider than the configured minimum /8"},
	} {
		r := run("", "block", tc.target)
		if r.code != exitError || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("block %s: code %d stderr %q, want %d and %q", tc.target, r.code, r.stderr, exitError, tc.want)
		}
	}
	// Import: a line only the daemon's configuration refuses rejects the whole file.
	if r := run("198.18.5.5\n198.0.0.0/7\n", "import", "-"); r.code != exitError || !strings.Contains(r.stderr, "line 2") {
		t.Errorf("import with a refused line: code %d stderr %q", r.code, r.stderr)
	}
	if got := list(); len(got) != 2 {
		t.Errorf("refusals changed the list: %q", got)
	}
	// Bad lines: the daemon refuses the whole file, and snarectl's own check of it names each
	// bad line by number (exit 2); nothing is imported.
	bad := "# old list\n198.18.0.7 20261101\n198.18.0.300 20261101\n198.18.1.0/24\n0.0.0.0/0\n" +
		"2001:db8::1 2026-11-01\n198.18.2.1 20991231\n::/0 ; everything\n"
	r := run(bad, "import", "-")
	for _, want := range []string{
		`<stdin>:3: "198.18.0.300" is not an IP address or CIDR`,
		`<stdin>:5: "0.0.0.0/0" would block every IPv4 address`,
		`<stdin>:6: "2026-11-01" is not a date in YYYYMMDD form`,
		`<stdin>:7: date 20991231 is in the future`,
		`<stdin>:8: "::/0" would block every IPv6 address`,
		"5 bad lines, nothing imported", "--skip-bad",
	} {
		if r.code != exitUsage || !strings.Contains(r.stderr, want) {
			t.Errorf("import with bad lines: code %d stderr %q, want %d and %q", r.code, r.stderr, exitUsage, want)
		}
	}
	if got := list(); len(got) != 2 {
		t.Errorf("an import with bad lines changed the list: %d entries", len(got))
	}
	// A bad last line, after 900 good ones.
	var big strings.Builder
	for i := range 900 {
		fmt.Fprintf(&big, "198.18.%d.%d\n", 20+i/250, 1+i%250)
	}
	big.WriteString("198.18.300.1\n")
	if r := run(big.String(), "import", "-"); r.code != exitUsage || !strings.Contains(r.stderr, "<stdin>:901:") ||
		!strings.Contains(r.stderr, "nothing imported") {
		t.Errorf("import with a bad last line: code %d stderr %q", r.code, r.stderr)
	}
	if got := list(); len(got) != 2 {
		t.Errorf("an import with a bad last line changed the list: %d entries", len(got))
	}
	// A list longer than the daemon takes (4 times block.capacity, at least 1M lines: here
	// 1M blank lines and one address) is refused whole, with the limit named.
	if r := run(strings.Repeat("\n", 1<<20)+"198.18.30.1\n", "import", "-"); r.code != exitError ||
		!strings.Contains(r.stderr, "more than 1048576 lines") || !strings.Contains(r.stderr, "split the list") {
		t.Errorf("import of too many lines: code %d stderr %q", r.code, r.stderr)
	}
	if got := list(); len(got) != 2 {
		t.Errorf("an import of too many lines changed the list: %d entries", len(got))
	}
	if r := run("198.18.5.5\n198.0.0.0/7\n", "import", "-", "--skip-bad"); r.code != exitOK ||
		!strings.Contains(r.stdout, "imported 1 entry") || !strings.Contains(r.stderr, "<stdin>:2:") {
		t.Errorf("import --skip-bad: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}

	if r := run("", "export", "--format", "plain"); r.code != exitOK || r.stdout != "198.18.0.7\n198.18.5.5\n2001:db8::/64\n" {
		t.Errorf("export: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := run("", "unblock", "198.18.0.7", "198.18.9.9"); r.code != exitError ||
		r.stdout != "unblocked 198.18.0.7\n" || !strings.Contains(r.stderr, "not blocked: 198.18.9.9") {
		t.Errorf("unblock: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := run("", "allow", "add", "198.18.10.0/24"); r.code != exitOK || !strings.Contains(r.stdout, "198.18.10.0/24  manual") {
		t.Errorf("allow add: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := run("", "status"); r.code != exitOK || !strings.Contains(r.stdout, "interfaces:         veth0 (native)") ||
		!strings.Contains(r.stdout, "entries:            2 of 1,000") {
		t.Errorf("status: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	r = run("", "events", "-o", "json")
	var kinds []string
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev api.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("events line %q: %v", l, err)
		}
		kinds = append(kinds, ev.Event)
	}
	if k := strings.Join(kinds, " "); !strings.Contains(k, "block") || !strings.Contains(k, "unblock") {
		t.Errorf("events: %q", k)
	}
}
