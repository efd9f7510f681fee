package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/blocklist"
)

// Request bodies are bounded: an import of 1,000,000 addresses is about 20 MB of JSON; every
// other request is a list of targets, and a command line (ARG_MAX) holds at most a few MB.
const (
	maxImportBody  = 512 << 20
	maxRequestBody = 8 << 20
)

// Handler returns the API (see control/api) as an http.Handler.
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
	mux.HandleFunc("GET /v1/fleet", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, d.FleetStatus())
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
	enc := json.NewEncoder(bw)
	n := 0
	err := d.EachEntry(r.Context(), func(e *api.Entry) error {
		start()
		if lines {
			return enc.Encode(e)
		}
		if n > 0 {
			bw.WriteByte(',')
		}
		n++
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		_, err = bw.Write(b)
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
// takes as long as it needs. One that sends a byte now and then, just inside idle, is cut off
// once it has run for uploadGrace idle periods averaging under minUploadRate: it would hold the
// one import slot for as long as it likes.
type idleReader struct {
	r     io.Reader
	rc    *http.ResponseController
	idle  time.Duration
	start time.Time
	total int64
}

const (
	minUploadRate = 1024 // bytes a second
	uploadGrace   = 4    // idle periods
)

func (b *idleReader) Read(p []byte) (int, error) {
	if b.start.IsZero() {
		b.start = time.Now()
	}
	// A ResponseWriter without a connection (the Handler served in process) has no deadlines:
	// the body is read without one.
	if err := b.rc.SetReadDeadline(time.Now().Add(b.idle)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return 0, fmt.Errorf("set read deadline: %w", err)
	}
	n, err := b.r.Read(p)
	b.total += int64(n)
	took := time.Since(b.start)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return n, userErrorf("the upload sent nothing for %s: cut off, nothing imported", b.idle)
	case err == nil && took > uploadGrace*b.idle && float64(b.total) < minUploadRate*took.Seconds():
		return n, userErrorf("the upload sent %d bytes in %s, under %d bytes a second: cut off, nothing imported",
			b.total, took.Round(100*time.Millisecond), minUploadRate)
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
