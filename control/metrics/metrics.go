// Package metrics exports snare's Prometheus metrics: what the daemon counts (blocks, expiries,
// sweeps, trap events) and, at scrape time, the enforcer's own counters.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/snare-dev/snare/backend"
)

// StatusSource is what the metrics collector reads at scrape time: the enforcer (or anything in
// front of it). Reading the kernel counters when Prometheus asks, instead of copying them around
// on a timer, keeps the numbers exact and costs nothing between scrapes.
type StatusSource interface {
	Status(context.Context) (backend.Status, error)
}

// StatusFunc adapts a function to StatusSource, e.g. StatusFunc(daemon.EnforcerStatus).
type StatusFunc func(context.Context) (backend.Status, error)

// Status implements StatusSource.
func (f StatusFunc) Status(ctx context.Context) (backend.Status, error) { return f(ctx) }

// Options configure New.
type Options struct {
	// Status is read on every scrape; nil leaves out the enforcer's metrics until
	// SetStatusSource is called (the daemon exists only after its Recorder).
	Status StatusSource
	// Version goes into snare_build_info.
	Version string
	// StatusTimeout bounds one read of Status during a scrape (default 5s).
	StatusTimeout time.Duration
}

// Origins of a block, as recorded in the store and in snare_blocks_total.
var blockOrigins = []string{"manual", "trap", "import", "fleet"}

// Metrics is snare's Prometheus instrumentation. It is both the daemon's Recorder (the control
// plane tells it what happened: blocks, expiries, evictions, trap hits, sweeps) and a
// prometheus.Collector that pulls the enforcer's counters at scrape time. Register it once with
// a registry; all methods are safe for concurrent use.
type Metrics struct {
	opts Options

	blocks       *prometheus.CounterVec
	unblocks     prometheus.Counter
	expiries     prometheus.Counter
	evictions    prometheus.Counter
	trapHits     *prometheus.CounterVec
	sweep        prometheus.Histogram
	scrapeErrors prometheus.Counter
	storeBytes   prometheus.Gauge

	buildInfo    *prometheus.Desc
	up           *prometheus.Desc
	backendInfo  *prometheus.Desc
	ifaceInfo    *prometheus.Desc
	packets      *prometheus.Desc
	bytes        *prometheus.Desc
	ifacePackets *prometheus.Desc
	ifaceBytes   *prometheus.Desc
	entries      *prometheus.Desc
	capacity     *prometheus.Desc
	fillRatio    *prometheus.Desc
	suppressed   *prometheus.Desc
	trapProbes   *prometheus.Desc
	trapTrigger  *prometheus.Desc

	mu     sync.Mutex
	status StatusSource
}

// New builds the metrics; register the result with a prometheus.Registry.
func New(o Options) *Metrics {
	if o.StatusTimeout <= 0 {
		o.StatusTimeout = 5 * time.Second
	}
	m := &Metrics{
		opts:   o,
		status: o.Status,
		blocks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "snare_blocks_total",
			Help: "Blocks recorded by the daemon, by origin (manual, trap, import, fleet: made by another host). Repeat blocks count again.",
		}, []string{"origin"}),
		unblocks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "snare_unblocks_total",
			Help: "Blocks removed by hand.",
		}),
		expiries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "snare_expiries_total",
			Help: "Blocks that reached their deadline and were reclaimed by the sweeper.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "snare_evictions_total",
			Help: "Blocks found missing from the kernel maps (LRU eviction, flushed sets) and re-inserted from the store.",
		}),
		trapHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "snare_trap_hits_total",
			Help: "Trap events received by the daemon, by protocol and the trap port that was hit (events are rate-limited in the kernel; see snare_trap_probes_total).",
		}, []string{"proto", "port"}),
		sweep: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "snare_sweep_duration_seconds",
			Help:    "Time one sweep (expiry and reconciliation of the kernel maps with the store) took.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10), // 0.5ms .. ~131s
		}),
		scrapeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "snare_scrape_errors_total",
			Help: "Scrapes in which the enforcer's status could not be read.",
		}),
		storeBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "snare_store_bytes",
			Help: "Size of the durable store's file in bytes, as of the last sweep.",
		}),
		buildInfo: prometheus.NewDesc("snare_build_info",
			"Always 1; the labels say which snare is running.", []string{"version", "goversion"}, nil),
		up: prometheus.NewDesc("snare_enforcer_up",
			"1 when the enforcer's status could be read in this scrape, else 0.", nil, nil),
		backendInfo: prometheus.NewDesc("snare_backend_info",
			"Always 1; the label names the enforcement back-end in use (xdp or iptables).", []string{"backend"}, nil),
		ifaceInfo: prometheus.NewDesc("snare_interface_info",
			"Always 1 per protected interface; mode is native, generic (XDP) or iptables.", []string{"interface", "mode"}, nil),
		packets: prometheus.NewDesc("snare_packets_total",
			"Packets seen by the enforcer, by verdict (action) and why (reason). Since the kernel maps were created.",
			[]string{"action", "reason"}, nil),
		bytes: prometheus.NewDesc("snare_bytes_total",
			"Bytes of the packets in snare_packets_total, by verdict and reason.", []string{"action", "reason"}, nil),
		ifacePackets: prometheus.NewDesc("snare_interface_packets_total",
			"Packets by ingress interface, verdict and reason (XDP back-end; interfaces listed in snarectl status as sharing a counter slot report the same numbers).",
			[]string{"interface", "action", "reason"}, nil),
		ifaceBytes: prometheus.NewDesc("snare_interface_bytes_total",
			"Bytes of the packets in snare_interface_packets_total.", []string{"interface", "action", "reason"}, nil),
		entries: prometheus.NewDesc("snare_entries",
			"Entries in the enforcer's maps: block (addresses and prefixes blocked) and scan (per-source trap state).",
			[]string{"map"}, nil),
		capacity: prometheus.NewDesc("snare_capacity",
			"Entries the enforcer's map can hold.", []string{"map"}, nil),
		fillRatio: prometheus.NewDesc("snare_fill_ratio",
			"Block entries divided by block capacity (0..1); alert well before 1.", nil, nil),
		suppressed: prometheus.NewDesc("snare_events_suppressed_total",
			"Trap events the kernel did not send to the daemon (rate limit or full ring buffer). The blocks still happened.", nil, nil),
		trapProbes: prometheus.NewDesc("snare_trap_probes_total",
			"Packets that reached a trap port, counted in the data path (not rate-limited).", nil, nil),
		trapTrigger: prometheus.NewDesc("snare_trap_triggers_total",
			"Blocks the data path inserted itself when a source tripped the trap threshold.", nil, nil),
	}
	for _, o := range blockOrigins {
		m.blocks.WithLabelValues(o) // export zeros so rate() works from the first block
	}
	return m
}

// Metrics is the daemon's Recorder.

// Blocked counts n blocks recorded with the given origin ("manual", "trap", "import").
func (m *Metrics) Blocked(origin string, n int) {
	m.blocks.WithLabelValues(origin).Add(float64(max(n, 0)))
}

// Unblocked counts n blocks removed by hand.
func (m *Metrics) Unblocked(n int) { m.unblocks.Add(float64(max(n, 0))) }

// Expired counts n blocks reclaimed after their deadline.
func (m *Metrics) Expired(n int) { m.expiries.Add(float64(max(n, 0))) }

// Evicted counts n blocks found missing from the kernel and re-inserted.
func (m *Metrics) Evicted(n int) { m.evictions.Add(float64(max(n, 0))) }

// SweepDuration observes how long one sweep took.
func (m *Metrics) SweepDuration(d time.Duration) { m.sweep.Observe(d.Seconds()) }

// StoreSize sets snare_store_bytes, the durable store's file size.
func (m *Metrics) StoreSize(bytes int64) { m.storeBytes.Set(float64(bytes)) }

// TrapHit counts one trap event by protocol and the trap port that was hit.
func (m *Metrics) TrapHit(proto string, port uint16) {
	m.trapHits.WithLabelValues(proto, strconv.Itoa(int(port))).Inc()
}

// TrapEvent counts a trap event from the enforcer: the newest port in it is the one just hit
// (the earlier ones were counted with earlier events).
func (m *Metrics) TrapEvent(ev backend.TrapEvent) {
	if len(ev.Ports) == 0 {
		return
	}
	m.TrapHit(ev.Proto, ev.Ports[len(ev.Ports)-1])
}

// SetStatusSource sets (or replaces) what scrapes read the enforcer's counters from.
func (m *Metrics) SetStatusSource(src StatusSource) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.status = src
}

// NewRegistry returns a registry with m and the standard Go runtime and process
// collectors (go_*, process_*: memory, file descriptors, CPU), ready for Serve.
func NewRegistry(m *Metrics) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return reg, nil
}

func (m *Metrics) inner() []prometheus.Collector {
	return []prometheus.Collector{m.blocks, m.unblocks, m.expiries, m.evictions, m.trapHits, m.sweep, m.scrapeErrors, m.storeBytes}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.inner() {
		c.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{m.buildInfo, m.up, m.backendInfo, m.ifaceInfo, m.packets, m.bytes, m.ifacePackets, m.ifaceBytes,
		m.entries, m.capacity, m.fillRatio, m.suppressed, m.trapProbes, m.trapTrigger} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the recorder's metrics plus a fresh read of the
// enforcer's status.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(m.buildInfo, prometheus.GaugeValue, 1, m.opts.Version, runtime.Version())
	m.mu.Lock()
	src := m.status
	m.mu.Unlock()
	var err error
	if src != nil {
		err = m.collectStatus(ch, src)
	}
	if err != nil {
		m.scrapeErrors.Inc()
	}
	for _, c := range m.inner() {
		c.Collect(ch)
	}
}

func (m *Metrics) collectStatus(ch chan<- prometheus.Metric, src StatusSource) error {
	ctx, cancel := context.WithTimeout(context.Background(), m.opts.StatusTimeout)
	defer cancel()
	st, err := src.Status(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(m.up, prometheus.GaugeValue, 0)
		return fmt.Errorf("enforcer status: %w", err)
	}
	ch <- prometheus.MustNewConstMetric(m.up, prometheus.GaugeValue, 1)
	if st.Backend != "" {
		ch <- prometheus.MustNewConstMetric(m.backendInfo, prometheus.GaugeValue, 1, st.Backend)
	}
	for _, i := range st.Interfaces {
		ch <- prometheus.MustNewConstMetric(m.ifaceInfo, prometheus.GaugeValue, 1, i.Name, i.Mode)
		for name, n := range i.Packets {
			if action, reason, ok := Verdict(name); ok {
				ch <- prometheus.MustNewConstMetric(m.ifacePackets, prometheus.CounterValue, float64(n), i.Name, action, reason)
			}
		}
		for name, n := range i.Bytes {
			if action, reason, ok := Verdict(name); ok {
				ch <- prometheus.MustNewConstMetric(m.ifaceBytes, prometheus.CounterValue, float64(n), i.Name, action, reason)
			}
		}
	}
	c := st.Counters
	for name, n := range c.ByReason {
		if action, reason, ok := Verdict(name); ok {
			ch <- prometheus.MustNewConstMetric(m.packets, prometheus.CounterValue, float64(n), action, reason)
		}
	}
	for name, n := range c.BytesByReason {
		if action, reason, ok := Verdict(name); ok {
			ch <- prometheus.MustNewConstMetric(m.bytes, prometheus.CounterValue, float64(n), action, reason)
		}
	}
	ch <- prometheus.MustNewConstMetric(m.entries, prometheus.GaugeValue, float64(c.Entries), "block")
	ch <- prometheus.MustNewConstMetric(m.entries, prometheus.GaugeValue, float64(c.ScanEntries), "scan")
	if c.Capacity > 0 {
		ch <- prometheus.MustNewConstMetric(m.capacity, prometheus.GaugeValue, float64(c.Capacity), "block")
		ch <- prometheus.MustNewConstMetric(m.fillRatio, prometheus.GaugeValue, float64(c.Entries)/float64(c.Capacity))
	}
	ch <- prometheus.MustNewConstMetric(m.suppressed, prometheus.CounterValue, float64(c.Suppressed))
	ch <- prometheus.MustNewConstMetric(m.trapProbes, prometheus.CounterValue, float64(c.TrapHits))
	ch <- prometheus.MustNewConstMetric(m.trapTrigger, prometheus.CounterValue, float64(c.TrapBlocks))
	return nil
}

// Verdict splits an enforcer counter name (backend.Counters.ByReason) into the action and reason
// labels of snare_packets_total: "drop_exact" → drop, exact; "pass_allow" → pass, allow; "pass"
// (nothing matched) → pass, none; "dry_run" (would have dropped) → pass, dry_run. Counters that
// are not packet verdicts (trap_hit, event_sent, ...) return ok false: they have metrics of their
// own and must not be summed with the verdicts.
func Verdict(name string) (action, reason string, ok bool) {
	switch {
	case name == "pass":
		return "pass", "none", true
	case name == "dry_run":
		return "pass", "dry_run", true
	case strings.HasPrefix(name, "pass_"):
		return "pass", strings.TrimPrefix(name, "pass_"), true
	case strings.HasPrefix(name, "drop_"):
		return "drop", strings.TrimPrefix(name, "drop_"), true
	}
	return "", "", false
}

// Server serves /metrics over HTTP.
type Server struct {
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// Serve listens on addr ("host:port"; port 0 picks a free one) and serves g on /metrics
// until ctx ends or Close is called. Binding happens before it returns, so a taken port is an
// error at start, not a log line later. An address that is not loopback is served (the operator
// asked for it) but logged as a warning, since metrics reveal what is blocked and how much.
func Serve(ctx context.Context, addr string, g prometheus.Gatherer, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if addr == "" {
		return nil, errors.New("metrics listen address is empty (an empty metrics.listen disables metrics: do not call Serve)")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen on %s: %w", addr, err)
	}
	warnIfExposed(log, ln.Addr())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "snare metrics: /metrics")
	})
	s := &Server{
		ln:   ln,
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "listen", ln.Addr().String(), "err", err)
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.done:
		}
	}()
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return s, nil
}

// warnIfExposed logs a warning when addr is reachable from other hosts.
func warnIfExposed(log *slog.Logger, addr net.Addr) {
	if tcp, ok := addr.(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.Warn("metrics are served on a non-loopback address: anyone who can reach it sees what snare blocks; restrict it with a firewall or use 127.0.0.1",
			"listen", addr.String())
	}
}

// Start is snared's whole metrics wiring after Open: m (the daemon's Recorder) reads src
// (the daemon's EnforcerStatus) at scrape time, and the registry (m plus Go and process metrics) is served on listen
// until ctx ends, with the extra collectors (the fleet's). Call it only when metrics.listen is
// not empty.
func Start(ctx context.Context, m *Metrics, src StatusSource, listen string, log *slog.Logger, extra ...prometheus.Collector) (*Server, error) {
	m.SetStatusSource(src)
	reg, err := NewRegistry(m)
	if err != nil {
		return nil, err
	}
	for _, c := range extra {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return Serve(ctx, listen, reg, log)
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server and waits until it has stopped; in-flight scrapes get a moment to end.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	return err
}
