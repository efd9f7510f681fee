package metrics

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/snare-dev/snare/backend"
)

// fakeStatus is an enforcer whose status the test changes between scrapes.
type fakeStatus struct {
	mu  sync.Mutex
	st  backend.Status
	err error
}

func (f *fakeStatus) Status(context.Context) (backend.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st, f.err
}

func (f *fakeStatus) set(fn func(*backend.Status)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.st)
}

func newTestMetrics(t *testing.T) (*Metrics, *prometheus.Registry, *fakeStatus) {
	t.Helper()
	src := &fakeStatus{st: backend.Status{
		Backend:    "xdp",
		Interfaces: []backend.InterfaceStatus{{Name: "eth0", Mode: "native"}, {Name: "eth1", Mode: "generic"}},
		Counters: backend.Counters{
			ByReason:      map[string]uint64{"pass": 100, "pass_allow": 3, "dry_run": 0, "drop_exact": 7, "drop_cidr": 2, "trap_hit": 5, "event_sent": 4},
			BytesByReason: map[string]uint64{"pass": 6400, "drop_exact": 448},
			Suppressed:    1,
			TrapHits:      5,
			TrapBlocks:    2,
			ScanEntries:   9,
			Entries:       250,
			Capacity:      1000,
		},
	}}
	m := New(Options{Status: src, Version: "test-1"})
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatalf("register: %v", err)
	}
	return m, reg, src
}

func TestMetricsFromStatus(t *testing.T) {
	_, reg, src := newTestMetrics(t)

	want := `
# HELP snare_packets_total Packets seen by the enforcer, by verdict (action) and why (reason). Since the kernel maps were created.
# TYPE snare_packets_total counter
snare_packets_total{action="drop",reason="cidr"} 2
snare_packets_total{action="drop",reason="exact"} 7
snare_packets_total{action="pass",reason="allow"} 3
snare_packets_total{action="pass",reason="dry_run"} 0
snare_packets_total{action="pass",reason="none"} 100
# HELP snare_bytes_total Bytes of the packets in snare_packets_total, by verdict and reason.
# TYPE snare_bytes_total counter
snare_bytes_total{action="drop",reason="exact"} 448
snare_bytes_total{action="pass",reason="none"} 6400
# HELP snare_entries Entries in the enforcer's maps: block (addresses and prefixes blocked) and scan (per-source trap state).
# TYPE snare_entries gauge
snare_entries{map="block"} 250
snare_entries{map="scan"} 9
# HELP snare_capacity Entries the enforcer's map can hold.
# TYPE snare_capacity gauge
snare_capacity{map="block"} 1000
# HELP snare_fill_ratio Block entries divided by block capacity (0..1); alert well before 1.
# TYPE snare_fill_ratio gauge
snare_fill_ratio 0.25
# HELP snare_events_suppressed_total Trap events the kernel did not send to the daemon (rate limit or full ring buffer). The blocks still happened.
# TYPE snare_events_suppressed_total counter
snare_events_suppressed_total 1
# HELP snare_interface_info Always 1 per protected interface; mode is native, generic (XDP) or iptables.
# TYPE snare_interface_info gauge
snare_interface_info{interface="eth0",mode="native"} 1
snare_interface_info{interface="eth1",mode="generic"} 1
# HELP snare_backend_info Always 1; the label names the enforcement back-end in use (xdp or iptables).
# TYPE snare_backend_info gauge
snare_backend_info{backend="xdp"} 1
# HELP snare_enforcer_up 1 when the enforcer's status could be read in this scrape, else 0.
# TYPE snare_enforcer_up gauge
snare_enforcer_up 1
# HELP snare_trap_probes_total Packets that reached a trap port, counted in the data path (not rate-limited).
# TYPE snare_trap_probes_total counter
snare_trap_probes_total 5
# HELP snare_trap_triggers_total Blocks the data path inserted itself when a source tripped the trap threshold.
# TYPE snare_trap_triggers_total counter
snare_trap_triggers_total 2
`
	names := []string{"snare_packets_total", "snare_bytes_total", "snare_entries", "snare_capacity", "snare_fill_ratio",
		"snare_events_suppressed_total", "snare_interface_info", "snare_backend_info", "snare_enforcer_up",
		"snare_trap_probes_total", "snare_trap_triggers_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}

	// The enforcer's counters move: the next scrape shows the new values, nothing cached.
	src.set(func(st *backend.Status) {
		st.Counters.ByReason["drop_exact"] = 70
		st.Counters.BytesByReason["drop_exact"] = 4480
		st.Counters.Entries = 900
		st.Counters.Suppressed = 11
		st.Interfaces = st.Interfaces[:1]
	})
	want2 := `
# HELP snare_fill_ratio Block entries divided by block capacity (0..1); alert well before 1.
# TYPE snare_fill_ratio gauge
snare_fill_ratio 0.9
# HELP snare_events_suppressed_total Trap events the kernel did not send to the daemon (rate limit or full ring buffer). The blocks still happened.
# TYPE snare_events_suppressed_total counter
snare_events_suppressed_total 11
# HELP snare_interface_info Always 1 per protected interface; mode is native, generic (XDP) or iptables.
# TYPE snare_interface_info gauge
snare_interface_info{interface="eth0",mode="native"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want2),
		"snare_fill_ratio", "snare_events_suppressed_total", "snare_interface_info"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			got[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	for key, v := range map[string]float64{
		"snare_packets_total,action=drop,reason=exact": 70,
		"snare_bytes_total,action=drop,reason=exact":   4480,
		"snare_entries,map=block":                      900,
	} {
		if got[key] != v {
			t.Errorf("%s = %v after the status changed, want %v", key, got[key], v)
		}
	}
	// trap_hit and event_sent are not verdicts: they must not appear as packets.
	for key := range got {
		if strings.Contains(key, "reason=trap_hit") || strings.Contains(key, "reason=hit") || strings.Contains(key, "event") && strings.HasPrefix(key, "snare_packets_total") {
			t.Errorf("non-verdict counter exported as packets: %s", key)
		}
	}
}

func TestMetricsRecorderCalls(t *testing.T) {
	m, reg, _ := newTestMetrics(t)

	// Before anything happened: the origins are exported as zeros.
	want := `
# HELP snare_blocks_total Blocks recorded by the daemon, by origin (manual, trap, import, fleet: made by another host). Repeat blocks count again.
# TYPE snare_blocks_total counter
snare_blocks_total{origin="fleet"} 0
snare_blocks_total{origin="import"} 0
snare_blocks_total{origin="manual"} 0
snare_blocks_total{origin="trap"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "snare_blocks_total"); err != nil {
		t.Fatal(err)
	}

	m.Blocked("manual", 1)
	m.Blocked("manual", 1)
	m.Blocked("trap", 1)
	m.Blocked("import", 1000)
	m.Blocked("import", 0)
	m.Blocked("import", -5) // a caller bug must not make a counter go down (prometheus would panic)
	m.Unblocked(2)
	m.StoreSize(1 << 20)
	m.StoreSize(32768)
	m.Expired(3)
	m.Expired(0)
	m.Expired(-1)
	m.Evicted(2)
	m.SweepDuration(1500 * time.Microsecond)
	m.SweepDuration(40 * time.Millisecond)
	m.TrapHit("udp", 161)
	m.TrapEvent(backend.TrapEvent{Proto: "tcp", Ports: []uint16{31337, 1}})
	m.TrapEvent(backend.TrapEvent{Proto: "tcp", Ports: []uint16{1}})
	m.TrapEvent(backend.TrapEvent{Proto: "tcp"}) // no port: ignored

	want = `
# HELP snare_blocks_total Blocks recorded by the daemon, by origin (manual, trap, import, fleet: made by another host). Repeat blocks count again.
# TYPE snare_blocks_total counter
snare_blocks_total{origin="fleet"} 0
snare_blocks_total{origin="import"} 1000
snare_blocks_total{origin="manual"} 2
snare_blocks_total{origin="trap"} 1
# HELP snare_unblocks_total Blocks removed by hand.
# TYPE snare_unblocks_total counter
snare_unblocks_total 2
# HELP snare_store_bytes Size of the durable store's file in bytes, as of the last sweep.
# TYPE snare_store_bytes gauge
snare_store_bytes 32768
# HELP snare_expiries_total Blocks that reached their deadline and were reclaimed by the sweeper.
# TYPE snare_expiries_total counter
snare_expiries_total 3
# HELP snare_evictions_total Blocks found missing from the kernel maps (LRU eviction, flushed sets) and re-inserted from the store.
# TYPE snare_evictions_total counter
snare_evictions_total 2
# HELP snare_trap_hits_total Trap events received by the daemon, by protocol and the trap port that was hit (events are rate-limited in the kernel; see snare_trap_probes_total).
# TYPE snare_trap_hits_total counter
snare_trap_hits_total{port="1",proto="tcp"} 2
snare_trap_hits_total{port="161",proto="udp"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "snare_blocks_total", "snare_unblocks_total",
		"snare_store_bytes", "snare_expiries_total", "snare_evictions_total", "snare_trap_hits_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.sweep); n != 1 {
		t.Fatalf("sweep histogram series = %d, want 1", n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, mf := range mfs {
		if mf.GetName() != "snare_sweep_duration_seconds" {
			continue
		}
		found = true
		h := mf.GetMetric()[0].GetHistogram()
		if h.GetSampleCount() != 2 || h.GetSampleSum() < 0.0414 || h.GetSampleSum() > 0.0416 {
			t.Errorf("sweep histogram count %d sum %v, want 2 and 0.0415", h.GetSampleCount(), h.GetSampleSum())
		}
	}
	if !found {
		t.Error("snare_sweep_duration_seconds missing")
	}
}

func TestMetricsStatusError(t *testing.T) {
	_, reg, src := newTestMetrics(t)
	src.mu.Lock()
	src.err = errors.New("map gone")
	src.mu.Unlock()
	// A broken enforcer does not break the scrape: the daemon's own metrics still come, up says 0
	// and the error is counted.
	want := `
# HELP snare_enforcer_up 1 when the enforcer's status could be read in this scrape, else 0.
# TYPE snare_enforcer_up gauge
snare_enforcer_up 0
# HELP snare_scrape_errors_total Scrapes in which the enforcer's status could not be read.
# TYPE snare_scrape_errors_total counter
snare_scrape_errors_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "snare_enforcer_up", "snare_scrape_errors_total",
		"snare_packets_total"); err != nil {
		t.Fatal(err)
	}
	// Once the status reads again, up is 1 and the count of failed scrapes stays.
	src.mu.Lock()
	src.err = nil
	src.mu.Unlock()
	want = `
# HELP snare_enforcer_up 1 when the enforcer's status could be read in this scrape, else 0.
# TYPE snare_enforcer_up gauge
snare_enforcer_up 1
# HELP snare_scrape_errors_total Scrapes in which the enforcer's status could not be read.
# TYPE snare_scrape_errors_total counter
snare_scrape_errors_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "snare_enforcer_up", "snare_scrape_errors_total"); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

func TestVerdict(t *testing.T) {
	for _, tc := range []struct {
		name, action, reason string
		ok                   bool
	}{
		{"pass", "pass", "none", true},
		{"pass_unparsed", "pass", "unparsed", true},
		{"pass_expired", "pass", "expired", true},
		{"pass_allow", "pass", "allow", true},
		{"dry_run", "pass", "dry_run", true},
		{"drop_exact", "drop", "exact", true},
		{"drop_cidr", "drop", "cidr", true},
		{"drop_trap", "drop", "trap", true},
		{"trap_hit", "", "", false},
		{"trap_block", "", "", false},
		{"event_sent", "", "", false},
		{"event_suppressed", "", "", false},
	} {
		a, r, ok := Verdict(tc.name)
		if a != tc.action || r != tc.reason || ok != tc.ok {
			t.Errorf("Verdict(%q) = %q, %q, %v; want %q, %q, %v", tc.name, a, r, ok, tc.action, tc.reason, tc.ok)
		}
	}
}

func TestServeMetricsHTTP(t *testing.T) {
	m, reg, _ := newTestMetrics(t)
	var logBuf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := Serve(ctx, "127.0.0.1:0", reg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if strings.Contains(logBuf.String(), "non-loopback") {
		t.Errorf("loopback address logged as non-loopback: %s", logBuf.String())
	}

	scrape := func() string {
		t.Helper()
		resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
		}
		return string(body)
	}
	body := scrape()
	for _, line := range []string{`snare_blocks_total{origin="trap"} 0`, `snare_entries{map="block"} 250`, `snare_build_info{`} {
		if !strings.Contains(body, line) {
			t.Errorf("first scrape lacks %q", line)
		}
	}
	m.Blocked("trap", 1)
	if body := scrape(); !strings.Contains(body, `snare_blocks_total{origin="trap"} 1`) {
		t.Errorf("second scrape does not show the trap block:\n%s", body)
	}

	resp, err := http.Get("http://" + srv.Addr().String() + "/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nothing: %s, want 404", resp.Status)
	}

	// Cancelling the context stops the server.
	addr := srv.Addr().String()
	cancel()
	<-srv.done
	if _, err := http.Get("http://" + addr + "/metrics"); err == nil {
		t.Error("metrics still served after the context ended")
	}
}

func TestServeMetricsBadAddress(t *testing.T) {
	reg := prometheus.NewRegistry()
	ctx := context.Background()
	if _, err := Serve(ctx, "", reg, nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty address: err = %v", err)
	}
	if _, err := Serve(ctx, "127.0.0.1:99999", reg, nil); err == nil || !strings.Contains(err.Error(), "metrics listen on 127.0.0.1:99999") {
		t.Errorf("bad port: err = %v", err)
	}
	// A taken port is an error at start, naming the address.
	first, err := Serve(ctx, "127.0.0.1:0", reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := Serve(ctx, first.Addr().String(), reg, nil); err == nil || !strings.Contains(err.Error(), first.Addr().String()) {
		t.Errorf("taken port: err = %v", err)
	}
}

func TestMetricsWarnsOffLoopback(t *testing.T) {
	// Checked on addresses rather than by listening on all interfaces: tests keep off the host's network.
	for _, tc := range []struct {
		addr string
		warn bool
	}{
		{"127.0.0.1:9477", false},
		{"[::1]:9477", false},
		{"0.0.0.0:9477", true},
		{"[::]:9477", true},
		{"198.18.0.1:9477", true},
		{"[2001:db8::1]:9477", true},
	} {
		var logBuf bytes.Buffer
		a, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		warnIfExposed(slog.New(slog.NewTextHandler(&logBuf, nil)), a)
		got := strings.Contains(logBuf.String(), "level=WARN") && strings.Contains(logBuf.String(), "non-loopback")
		if got != tc.warn {
			t.Errorf("%s: warned %v, want %v; log: %q", tc.addr, got, tc.warn, logBuf.String())
		}
	}
}

func TestMetricsStatusSourceLater(t *testing.T) {
	// The daemon needs its Recorder before the enforcer exists: metrics start without a source.
	m := New(Options{Version: "test-1"})
	reg, err := NewRegistry(m)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "snare_enforcer_up", "snare_packets_total"); err != nil || n != 0 {
		t.Fatalf("without a source: %d enforcer series (err %v), want 0", n, err)
	}
	src := &fakeStatus{st: backend.Status{Backend: "iptables", Counters: backend.Counters{
		ByReason: map[string]uint64{"drop_exact": 4}, Entries: 10, Capacity: 100}}}
	m.SetStatusSource(StatusFunc(src.Status))
	want := `
# HELP snare_packets_total Packets seen by the enforcer, by verdict (action) and why (reason). Since the kernel maps were created.
# TYPE snare_packets_total counter
snare_packets_total{action="drop",reason="exact"} 4
# HELP snare_fill_ratio Block entries divided by block capacity (0..1); alert well before 1.
# TYPE snare_fill_ratio gauge
snare_fill_ratio 0.1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "snare_packets_total", "snare_fill_ratio"); err != nil {
		t.Fatal(err)
	}
	// The standard collectors are there too.
	if n, err := testutil.GatherAndCount(reg, "go_goroutines", "process_resident_memory_bytes"); err != nil || n != 2 {
		t.Errorf("go/process collectors: %d series (err %v), want 2", n, err)
	}
}
