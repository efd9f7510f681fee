package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/blocklist"
)

// Request bodies are bounded: an import of 1,000,000 addresses is about 20 MB of JSON; every
// other request is a list of targets, and a command line (ARG_MAX) holds at most a few MB.
const (
	maxImportBody  = 512 << 20
	maxRequestBody = 8 << 20
)

// Handler returns the API (see api.go) as an http.Handler.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/block", func(w http.ResponseWriter, r *http.Request) {
		var req api.BlockRequest
		if !decode(w, r, &req, maxRequestBody) {
			return
		}
		rules, err := d.Block(r.Context(), req.Targets, req.TTL, req.Reason)
		if err != nil {
			writeError(w, err)
			return
		}
		out := api.BlockResponse{Entries: make([]api.Entry, 0, len(rules))}
		for _, r := range rules {
			out.Entries = append(out.Entries, entryOf(r))
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("POST /v1/unblock", func(w http.ResponseWriter, r *http.Request) {
		var req api.UnblockRequest
		if !decode(w, r, &req, maxRequestBody) {
			return
		}
		removed, notFound, err := d.Unblock(r.Context(), req.Targets)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, api.UnblockResponse{Removed: orEmpty(removed), NotFound: notFound})
	})
	mux.HandleFunc("GET /v1/list", d.serveList)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := d.Status(r.Context())
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, st)
	})
	allow := func(add bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var req api.AllowRequest
			if !decode(w, r, &req, maxRequestBody) {
				return
			}
			change := d.AllowDel
			if add {
				change = d.AllowAdd
			}
			if err := change(r.Context(), req.Targets); err != nil {
				writeError(w, err)
				return
			}
			writeJSON(w, api.AllowResponse{Entries: d.Allowlist()})
		}
	}
	mux.HandleFunc("POST /v1/allow/add", allow(true))
	mux.HandleFunc("POST /v1/allow/del", allow(false))
	mux.HandleFunc("GET /v1/allow", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, api.AllowResponse{Entries: d.Allowlist()})
	})
	mux.HandleFunc("POST /v1/import", func(w http.ResponseWriter, r *http.Request) {
		var req api.ImportRequest
		var resp api.ImportResponse
		var err error
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "text/plain" {
			// The list itself as the body, options in the query: parsed while it arrives,
			// with no JSON string of many megabytes to build and unescape on either side.
			q := r.URL.Query()
			req = api.ImportRequest{TTL: q.Get("ttl"), Reason: q.Get("reason"), Name: q.Get("name")}
			if sb := q.Get("skip_bad"); sb != "" {
				if req.SkipBad, err = strconv.ParseBool(sb); err != nil {
					writeErrorStatus(w, http.StatusBadRequest, fmt.Sprintf("bad skip_bad %q: want true or false", sb))
					return
				}
			}
			body := &idleReader{r: http.MaxBytesReader(w, r.Body, maxImportBody), rc: http.NewResponseController(w), idle: d.opts.ImportIdleTimeout}
			resp, err = d.ImportStream(r.Context(), body, req)
		} else {
			if !decode(w, r, &req, maxImportBody) {
				return
			}
			resp, err = d.Import(r.Context(), req)
		}
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, resp)
	})
	mux.HandleFunc("GET /v1/export", func(w http.ResponseWriter, r *http.Request) {
		format := r.URL.Query().Get("format")
		if format != "" && format != blocklist.FormatBlockedList && format != blocklist.FormatPlain {
			writeError(w, userErrorf("unknown export format %q (want %s or %s)", format, blocklist.FormatBlockedList, blocklist.FormatPlain))
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := d.Export(w, format); err != nil {
			d.log.Error("export", "err", err)
		}
	})
	mux.HandleFunc("GET /v1/events", d.serveEvents)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErrorStatus(w, http.StatusNotFound, fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// serveList streams the list: a ListResponse document, or with ?stream=1 one Entry per line
// (JSON lines, what snarectl reads). Entries are encoded as they are read from the store, so a
// million of them are never held at once. An error after the first bytes can only cut the
// answer short, which the client sees as a truncated document.
func (d *Daemon) serveList(w http.ResponseWriter, r *http.Request) {
	lines := r.URL.Query().Get("stream") == "1"
	bw := bufio.NewWriterSize(w, 256<<10)
	started := false
	start := func() {
		if started {
			return
		}
		started = true
		// How many entries to expect (the store's count, expired ones included), so that a
		// client collecting them allocates once.
		w.Header().Set("X-Snare-Entries", strconv.Itoa(d.store.Count()))
		if lines {
			w.Header().Set("Content-Type", "application/x-ndjson")
		} else {
			w.Header().Set("Content-Type", "application/json")
			bw.WriteString(`{"entries":[`)
		}
	}
	var buf []byte
	n := 0
	err := d.EachEntry(r.Context(), func(e *api.Entry) error {
		start()
		buf = buf[:0]
		if !lines && n > 0 {
			buf = append(buf, ',')
		}
		n++
		buf = api.AppendEntryJSON(buf, e, "", "")
		if lines {
			buf = append(buf, '\n')
		}
		_, err := bw.Write(buf)
		return err
	})
	if err != nil {
		if !started {
			writeError(w, err)
			return
		}
		d.log.Error("list", "err", err)
		if lines { // the client stops at this line with the error
			b, _ := json.Marshal(api.ErrorResponse{Error: err.Error()})
			bw.Write(append(b, '\n'))
			bw.Flush()
		}
		return // a document is cut short: no closing bracket
	}
	start()
	if !lines {
		bw.WriteString("]}\n")
	}
	bw.Flush()
}

func (d *Daemon) serveEvents(w http.ResponseWriter, r *http.Request) {
	follow := r.URL.Query().Get("follow")
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	if follow == "" || follow == "0" || follow == "false" {
		for _, ev := range d.events.Recent() {
			if enc.Encode(ev) != nil {
				return
			}
		}
		return
	}
	recent, ch, cancel := d.events.Follow()
	defer cancel()
	for _, ev := range recent {
		if enc.Encode(ev) != nil {
			return
		}
	}
	if flusher != nil {
		flusher.Flush()
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case ev := <-ch:
			if enc.Encode(ev) != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}

// idleReader reads a request body with a deadline that moves with every read: an upload that
// sends nothing for idle is cut off with an error saying so, while a big one that keeps sending
// takes as long as it needs.
type idleReader struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
}

func (b *idleReader) Read(p []byte) (int, error) {
	// A ResponseWriter without a connection (the Handler served in process) has no deadlines:
	// the body is read without one.
	if err := b.rc.SetReadDeadline(time.Now().Add(b.idle)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return 0, fmt.Errorf("set read deadline: %w", err)
	}
	n, err := b.r.Read(p)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return n, userErrorf("the upload sent nothing for %s: cut off, nothing imported", b.idle)
	case err != nil:
		// The body is read (or broken): no deadline for the server's own read of the connection
		// while the import is written, which would cancel the request when it fires.
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// decode reads the request body, one JSON document of at most limit bytes, into into. Anything
// else is answered here: 413 for a body over the limit, 400 for an empty body, bad JSON, unknown
// fields, or data after the document (which would otherwise be silently ignored).
func decode(w http.ResponseWriter, r *http.Request, into any, limit int64) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	err := dec.Decode(into)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errTrailingData
			if terr != nil && !isSyntaxError(terr) {
				err = terr
			}
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return true
	case errors.As(err, &tooBig):
		writeTooLarge(w, tooBig)
	case errors.Is(err, io.EOF):
		writeErrorStatus(w, http.StatusBadRequest, "bad request body: empty, want a JSON document")
	default:
		writeErrorStatus(w, http.StatusBadRequest, fmt.Sprintf("bad request body: %v", err))
	}
	return false
}

// errTrailingData is a request body with more than one JSON document, or garbage after one.
var errTrailingData = errors.New("data after the JSON document: send exactly one")

func isSyntaxError(err error) bool {
	var se *json.SyntaxError
	return errors.As(err, &se)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers err: 413 for a body over its limit, 400 for a UserError, 500 for the rest.
func writeError(w http.ResponseWriter, err error) {
	var ue *UserError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeTooLarge(w, tooBig)
	case errors.As(err, &ue):
		writeErrorStatus(w, http.StatusBadRequest, err.Error())
	default:
		writeErrorStatus(w, http.StatusInternalServerError, err.Error())
	}
}

func writeTooLarge(w http.ResponseWriter, err *http.MaxBytesError) {
	writeErrorStatus(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes: refused, nothing changed", err.Limit))
}

func writeErrorStatus(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(api.ErrorResponse{Error: msg})
}

// Listen opens the API socket: its directory is created (0755), a stale socket left by a dead
// daemon is removed, one a live daemon answers on is refused, and the socket is made 0600.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("socket path %s exists and is not a socket: refusing to replace it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s: another snared is answering there", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	return l, nil
}

// Serve runs the daemon until ctx ends: the API on the config's socket, the sweeper, the trap
// event reader and the trap-port watcher. ready is called once the socket accepts connections.
// On return the socket is removed; enforcement stays in place (Close does not tear it down).
func (d *Daemon) Serve(ctx context.Context, ready func()) error {
	cfg := d.Config()
	l, err := Listen(cfg.Socket)
	if err != nil {
		return err
	}
	return d.ServeListener(ctx, l, ready)
}

// ServeListener is Serve on an already open listener.
func (d *Daemon) ServeListener(ctx context.Context, l net.Listener, ready func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}

	var bg []func()
	run := func(f func()) {
		ch := make(chan struct{})
		bg = append(bg, func() { <-ch })
		go func() { defer close(ch); f() }()
	}

	events, err := d.enf.TrapEvents(ctx)
	if err != nil {
		l.Close()
		return fmt.Errorf("trap events: %w", err)
	}
	run(func() { d.HandleTrapEvents(ctx, events) })
	run(func() { d.sweepLoop(ctx) })
	d.watchMu.Lock()
	d.serveCtx = ctx
	d.watchMu.Unlock()
	d.startTrapWatcher()

	srvErr := make(chan error, 1)
	go func() {
		err := srv.Serve(l)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		srvErr <- err
	}()
	if ready != nil {
		ready()
	}
	select {
	case <-ctx.Done():
	case err = <-srvErr:
		cancel()
	}
	shutCtx, shutCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer shutCancel()
	_ = srv.Shutdown(shutCtx)
	cancel()
	d.stopTrapWatcher()
	for _, wait := range bg {
		wait()
	}
	d.logEvents(api.Event{Time: time.Now(), Event: api.EventStop, Source: "daemon", Detail: "snared stopped; enforcement stays in place"})
	return err
}

func (d *Daemon) sweepLoop(ctx context.Context) {
	for {
		interval := time.Duration(d.Config().Sweep.Interval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		if err := d.RefreshImplicitAllow(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("rediscover implicit allowlist", "err", err)
		}
		res, err := d.Sweep(ctx)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("sweep", "err", err)
			}
			continue
		}
		if res.Expired+res.Evicted+res.Adopted+res.Stale > 0 {
			d.log.Info("sweep", "expired", res.Expired, "evicted", res.Evicted, "adopted", res.Adopted, "stale", res.Stale, "took", res.Duration)
		}
	}
}

// startTrapWatcher (re)starts the watcher that keeps trap ports current as services start and
// stop, with the configuration in force.
func (d *Daemon) startTrapWatcher() {
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	if d.serveCtx == nil {
		return
	}
	if d.watchCancel != nil {
		d.watchCancel()
	}
	cfg := d.Config()
	spec := trapSpec(cfg)
	if len(spec.TCP)+len(spec.UDP) == 0 && spec.AdvancedBelow == 0 {
		d.watchCancel = nil
		return
	}
	ctx, cancel := context.WithCancel(d.serveCtx)
	d.watchCancel = cancel
	w := TrapPortWatcher{
		Spec:      spec,
		Listening: d.opts.Listening,
		Update: func(tcp, udp []uint16) {
			d.mu.Lock()
			defer d.mu.Unlock()
			if ctx.Err() != nil || d.cfg != cfg {
				return // superseded by a reload
			}
			if slices.Equal(tcp, d.trapTCP) && slices.Equal(udp, d.trapUDP) {
				return
			}
			if err := d.applyTrapLocked(ctx, cfg, tcp, udp); err != nil {
				d.log.Error("update trap ports", "err", err)
				return
			}
			d.log.Info("trap ports changed", "tcp", len(tcp), "udp", len(udp))
		},
		OnError: func(err error) { d.log.Warn("trap port watcher", "err", err) },
	}
	go func() {
		if err := w.Run(ctx); err != nil {
			d.log.Warn("trap port watcher stopped; trap ports stay as they are", "err", err)
		}
	}()
}

func (d *Daemon) stopTrapWatcher() {
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	if d.watchCancel != nil {
		d.watchCancel()
		d.watchCancel = nil
	}
	d.serveCtx = nil
}

// Reload applies a new configuration without dropping enforcement: allowlist (rediscovering the
// implicit part), TTLs and escalation, trap ports and mode, dry-run, sweep interval; the event
// log is reopened (log rotation). Keys that need a restart (interfaces, backend, xdp_mode,
// state_dir, socket, bpffs, block.capacity, block.ipv6_prefix, events_file, metrics.listen) keep
// their old values, with a warning.
func (d *Daemon) Reload(ctx context.Context, next *config.Config) error {
	d.mu.Lock()
	cur := d.cfg
	merged := *next
	var kept []string
	keep := func(name string, same bool) {
		if !same {
			kept = append(kept, name)
		}
	}
	keep("interfaces", slices.Equal(cur.Interfaces, next.Interfaces))
	keep("backend", cur.Backend == next.Backend)
	keep("xdp_mode", cur.XDPMode == next.XDPMode)
	keep("state_dir", cur.StateDir == next.StateDir)
	keep("socket", cur.Socket == next.Socket)
	keep("bpffs", cur.BPFFS == next.BPFFS)
	keep("block.capacity", cur.Block.Capacity == next.Block.Capacity)
	keep("block.ipv6_prefix", cur.Block.IPv6Prefix == next.Block.IPv6Prefix)
	keep("events_file", cur.EventsPath() == next.EventsPath())
	keep("metrics.listen", cur.Metrics.Listen == next.Metrics.Listen)
	merged.Interfaces, merged.Backend, merged.XDPMode = cur.Interfaces, cur.Backend, cur.XDPMode
	merged.StateDir, merged.Socket, merged.BPFFS = cur.StateDir, cur.Socket, cur.BPFFS
	merged.Block.Capacity, merged.Block.IPv6Prefix, merged.EventsFile = cur.Block.Capacity, cur.Block.IPv6Prefix, cur.EventsFile
	merged.Metrics.Listen = cur.Metrics.Listen
	if len(kept) > 0 {
		d.log.Warn("reload: these keys only change on restart", "keys", kept)
	}
	d.cfg = &merged
	err := d.applyConfigLocked(ctx, &merged)
	if err != nil {
		// Go back to what was in force; the enforcer may hold parts of the new config.
		d.cfg = cur
		if rerr := d.applyConfigLocked(ctx, cur); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore previous config: %w", rerr))
		}
	}
	d.mu.Unlock()
	if rerr := d.events.Reopen(); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	d.startTrapWatcher()
	d.logEvents(api.Event{Time: time.Now(), Event: api.EventStart, Source: "daemon", Detail: "configuration reloaded"})
	return nil
}

func (d *Daemon) applyConfigLocked(ctx context.Context, cfg *config.Config) error {
	if err := d.enf.SetSettings(ctx, cfg.EnforcerSettings()); err != nil {
		return fmt.Errorf("enforcer settings: %w", err)
	}
	if err := d.refreshAllowLocked(ctx, true); err != nil {
		return err
	}
	tcp, udp, err := d.trapPorts(ctx, cfg)
	if err != nil {
		d.log.Warn("cannot list listening sockets; trap ports are the configured lists as they are", "err", err)
	}
	return d.applyTrapLocked(ctx, cfg, tcp, udp)
}
