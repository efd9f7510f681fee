package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/config"
)

// startFleetDaemon is startDaemon with extra SNARE_* settings (the fleet's).
func startFleetDaemon(t *testing.T, env ...string) string {
	t.Helper()
	dir := stateDir(t)
	socket := filepath.Join(dir, "snare.sock")
	cfg, err := config.Load(config.LoadOptions{Env: append(env, "SNARE_STATE_DIR="+dir, "SNARE_SOCKET="+socket)})
	if err != nil {
		t.Fatal(err)
	}
	serveDaemon(t, cfg, newMemEnforcer(), nil)
	return socket
}

func TestFleetStatus(t *testing.T) {
	// No fleet section: said so.
	r := runCLI(t, startDaemon(t), "", "fleet", "status")
	if r.code != exitOK || !strings.Contains(r.stdout, "not configured") {
		t.Errorf("no fleet: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}

	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	defer srv.Shutdown()
	socket := startFleetDaemon(t, "SNARE_FLEET_SERVERS="+srv.ClientURL(), "SNARE_FLEET_NODE=web-1")
	var st api.FleetStatus
	deadline := time.Now().Add(10 * time.Second)
	for !st.Connected && time.Now().Before(deadline) {
		r = runCLI(t, socket, "", "fleet", "status", "-o", "json")
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || !strings.Contains(r.stdout, `"connected":`) {
			t.Fatalf("fleet status -o json: %v %q %q", err, r.stdout, r.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !st.Connected || st.Node != "web-1" || st.Servers[0] != srv.ClientURL() {
		t.Fatalf("status %+v", st)
	}
	if r = runCLI(t, socket, "", "block", "198.18.0.7"); r.code != exitOK {
		t.Fatal(r.stderr)
	}
	table := ""
	for time.Now().Before(deadline) && !strings.Contains(table, "published: 1") {
		r = runCLI(t, socket, "", "fleet", "status")
		table = strings.Join(strings.Fields(r.stdout), " ")
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{"node: web-1", "connected: yes", "outbox: 0", "published: 1"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, r.stdout)
		}
	}

	// A server that is not there: not connected, and the block still works at once.
	socket = startFleetDaemon(t, "SNARE_FLEET_SERVERS=nats://127.0.0.1:1", "SNARE_FLEET_NODE=web-2")
	if r = runCLI(t, socket, "", "block", "198.18.0.8"); r.code != exitOK {
		t.Fatal(r.stderr)
	}
	r = runCLI(t, socket, "", "fleet", "status", "-o", "json")
	if !strings.Contains(r.stdout, `"connected": false`) || !strings.Contains(r.stdout, `"outbox": 1`) {
		t.Errorf("unreachable server: %s", r.stdout)
	}
	if r = runCLI(t, socket, "", "fleet", "nonsense"); r.code != exitUsage {
		t.Errorf("fleet nonsense: code %d", r.code)
	}
}

// The table shows why the engine refused something: in the connected line when not connected,
// on a line of its own when connected (a permission the user lacks, say).
func TestFleetStatusShowsError(t *testing.T) {
	f := newFakeDaemon(t)
	perm := `nats: permissions violation: Permissions Violation for Publish to "$KV.other.4.198-18-0-9.32"`
	for _, tc := range []struct {
		st   api.FleetStatus
		want string
	}{
		{api.FleetStatus{Enabled: true, Node: "web-1", Connected: true, Error: perm, Outbox: 1}, "connected: yes last error: " + perm},
		{api.FleetStatus{Enabled: true, Node: "web-1", Error: "connect to nats://198.18.0.5:4222: refused"}, "connected: no (connect to nats://198.18.0.5:4222: refused)"},
		{api.FleetStatus{Enabled: true, Node: "web-1", Connected: true}, "connected: yes outbox: 0"},
	} {
		f.set(func() { f.fleet = tc.st })
		r := runCLI(t, f.socket, "", "fleet", "status")
		if table := strings.Join(strings.Fields(r.stdout), " "); r.code != exitOK || !strings.Contains(table, tc.want) {
			t.Errorf("fleet status of %+v: code %d, table\n%s\nwant %q", tc.st, r.code, r.stdout, tc.want)
		}
	}
}
