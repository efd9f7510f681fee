package control

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/metrics"

	labutil "github.com/snare-dev/snare/internal/testutil"

	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/loader"
)

// TestMetricsRealDaemon scrapes a real daemon over HTTP: the XDP program attached to veths in a
// lab of network namespaces, real packets from a blocked attacker, a real trap probe, a real
// sweep. The metrics must follow each of them.
func TestMetricsRealDaemon(t *testing.T) {
	lab := labutil.NewLab(t, "attacker", "client")
	state := t.TempDir()
	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Interfaces = lab.HostIfaceNames()
	cfg.BPFFS = filepath.Join(labutil.TempBPFFS(t), "pins")
	cfg.StateDir = state
	cfg.Socket = filepath.Join(state, "snare.sock")
	cfg.Sweep.Interval = config.Duration(time.Hour) // swept by hand below

	var x *loader.XDP
	var implicit Allowlist
	err = lab.Do(lab.Host.NS, func() error {
		var err error
		x, err = loader.Open(loader.Options{Interfaces: cfg.Interfaces, Mode: cfg.XDPMode, PinDir: cfg.BPFFS, Capacity: 4096})
		if err != nil {
			return err
		}
		implicit, err = ImplicitAllowlist("")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// As snared wires it: the Recorder first, the status source once the daemon exists.
	m := metrics.New(metrics.Options{Version: "lab"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := Open(ctx, Options{
		Config: cfg, Recorder: m,
		OpenEnforcer:  func() (backend.Enforcer, string, error) { return x, "", nil },
		ImplicitAllow: func() (Allowlist, error) { return implicit, nil },
		Listening:     func(context.Context) (map[uint16]bool, map[uint16]bool, error) { return nil, nil, nil },
	})
	if err != nil {
		x.Close()
		t.Fatal(err)
	}
	ready := make(chan struct{})
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-served:
		d.Close()
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		<-served
		d.Close()
		// Take the program off the lab's veths and remove the pins (the lab goes away anyway).
		_ = lab.Do(lab.Host.NS, func() error { return loader.Remove(cfg.BPFFS, cfg.Interfaces) })
	})
	srv, err := metrics.Start(ctx, m, metrics.StatusFunc(d.EnforcerStatus), "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	scrape := func() map[string]float64 {
		t.Helper()
		resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("scrape: %s %v", resp.Status, err)
		}
		out := map[string]float64{}
		for _, line := range strings.Split(string(body), "\n") {
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			i := strings.LastIndexByte(line, ' ')
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err != nil {
				t.Fatalf("bad line %q", line)
			}
			out[line[:i]] = v
		}
		return out
	}

	first := scrape()
	for _, name := range cfg.Interfaces {
		key := `snare_interface_info{interface="` + name + `",mode="native"}`
		if first[key] != 1 {
			t.Errorf("%s = %v, want 1 (lab veths attach natively)", key, first[key])
		}
	}
	if first[`snare_backend_info{backend="xdp"}`] != 1 || first["snare_enforcer_up"] != 1 {
		t.Errorf("backend info / up: %v %v", first[`snare_backend_info{backend="xdp"}`], first["snare_enforcer_up"])
	}
	if first[`snare_capacity{map="block"}`] != 4096 {
		t.Errorf("capacity = %v, want 4096", first[`snare_capacity{map="block"}`])
	}

	// Block the attacker; its pings are dropped in XDP and counted.
	attacker := lab.Attacker()
	if _, err := d.Block(ctx, []string{attacker.Addr4().String()}, "1h", "metrics test"); err != nil {
		t.Fatal(err)
	}
	const pings = 3
	for range pings {
		if lab.Ping(attacker.NS, lab.HostIface("attacker").Addr4.Addr(), 200*time.Millisecond) == nil {
			t.Fatal("blocked attacker got an answer")
		}
	}
	after := scrape()
	drops := `snare_packets_total{action="drop",reason="exact"}`
	if got := after[drops] - first[drops]; got < pings {
		t.Errorf("%s rose by %v, want at least %d", drops, got, pings)
	}
	dropBytes := `snare_bytes_total{action="drop",reason="exact"}`
	if got := after[dropBytes] - first[dropBytes]; got < pings*(14+20+8) {
		t.Errorf("%s rose by %v, want at least %d", dropBytes, got, pings*42)
	}
	if after[`snare_blocks_total{origin="manual"}`] != 1 || after[`snare_entries{map="block"}`] != 1 {
		t.Errorf("blocks manual = %v, entries = %v; want 1, 1", after[`snare_blocks_total{origin="manual"}`], after[`snare_entries{map="block"}`])
	}
	if r := after["snare_fill_ratio"]; r != 1.0/4096 {
		t.Errorf("fill ratio = %v, want 1/4096", r)
	}

	// A probe of a trap port from the client: the data path blocks it, the daemon records it.
	client := lab.Client()
	dst := net.JoinHostPort(lab.HostIface("client").Addr4.Addr().String(), "31337")
	_ = lab.Do(client.NS, func() error {
		if c, err := net.DialTimeout("tcp", dst, 300*time.Millisecond); err == nil {
			c.Close()
		}
		return nil
	})
	var trap map[string]float64
	for range 50 { // the event reaches the daemon asynchronously; bounded wait
		trap = scrape()
		if trap[`snare_blocks_total{origin="trap"}`] >= 1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if trap[`snare_blocks_total{origin="trap"}`] != 1 {
		t.Errorf("trap blocks recorded = %v, want 1", trap[`snare_blocks_total{origin="trap"}`])
	}
	if trap["snare_trap_probes_total"] < 1 || trap["snare_trap_triggers_total"] != 1 {
		t.Errorf("trap probes = %v (want >= 1), triggers = %v (want 1)", trap["snare_trap_probes_total"], trap["snare_trap_triggers_total"])
	}

	// Unblock by hand and sweep: the counters and the sweep histogram move, the store has a size.
	if _, _, err := d.Unblock(ctx, []string{attacker.Addr4().String()}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	last := scrape()
	if last["snare_unblocks_total"] != 1 {
		t.Errorf("unblocks = %v, want 1", last["snare_unblocks_total"])
	}
	if last["snare_sweep_duration_seconds_count"] < 1 {
		t.Errorf("sweep count = %v, want >= 1", last["snare_sweep_duration_seconds_count"])
	}
	if last["snare_store_bytes"] <= 0 {
		t.Errorf("store bytes = %v, want > 0", last["snare_store_bytes"])
	}
	if last[`snare_entries{map="block"}`] != 1 { // the trap block remains
		t.Errorf("entries after unblock = %v, want 1", last[`snare_entries{map="block"}`])
	}
}
