package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control/api"
)

// fakeDaemon is a minimal stand-in for snared's API (control/api) on a Unix socket: it records
// every request and answers with canned data. The real daemon is tested end to end elsewhere;
// this only shows what snarectl sends and how it prints the answers.
type fakeDaemon struct {
	socket string

	mu    sync.Mutex
	calls []fakeCall
	canned
}

// canned are the fake's answers; tests change them with set.
type canned struct {
	list     api.ListResponse
	status   api.StatusResponse
	fleet    api.FleetStatus
	allow    api.AllowResponse
	events   []api.Event
	export   string
	refuse   string              // when set, POSTs answer 400 with this message
	notFound map[string]bool     // unblock targets reported as not blocked
	imported *api.ImportResponse // answer to import; default: one entry per line
	// holdFollow keeps an events stream with follow=1 open until the client leaves.
	holdFollow bool
}

type fakeCall struct {
	Method, Path, Query string
	Body                []byte
}

// newFakeDaemon serves the fake API on a fresh socket until the test ends. The directory is
// short (not t.TempDir, whose path grows with the test name) because a Unix socket path must
// fit in 108 bytes.
func newFakeDaemon(t *testing.T) *fakeDaemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "snarectl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeDaemon{socket: filepath.Join(dir, "snare.sock"), canned: canned{notFound: map[string]bool{}}}
	ln, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f.handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f
}

// fakeRules are the target rules the fake daemon checks blocks against: the defaults (block.*
// in defaults.yaml).
var fakeRules = input.TargetRules{IPv6Prefix: 64, MinPrefixV4: 8, MinPrefixV6: 32}

func (f *fakeDaemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/block", func(w http.ResponseWriter, r *http.Request) {
		var req api.BlockRequest
		if _, ok := f.decode(w, r, &req); !ok {
			return
		}
		now := time.Now()
		var resp api.BlockResponse
		for _, t := range req.Targets {
			p, err := input.ParseTarget(t, fakeRules)
			if err != nil {
				fail(w, http.StatusBadRequest, err.Error())
				return
			}
			e := api.Entry{Prefix: p.String(), Reason: req.Reason, Origin: "manual", Created: now, Offences: 1}
			if req.TTL == "permanent" {
				e.Permanent = true
			} else {
				e.Expires = now.Add(5 * 24 * time.Hour)
			}
			resp.Entries = append(resp.Entries, e)
		}
		answer(w, resp)
	})
	mux.HandleFunc("POST /v1/unblock", func(w http.ResponseWriter, r *http.Request) {
		var req api.UnblockRequest
		c, ok := f.decode(w, r, &req)
		if !ok {
			return
		}
		var resp api.UnblockResponse
		for _, t := range req.Targets {
			if c.notFound[t] {
				resp.NotFound = append(resp.NotFound, t)
			} else {
				resp.Removed = append(resp.Removed, t)
			}
		}
		answer(w, resp)
	})
	mux.HandleFunc("GET /v1/list", func(w http.ResponseWriter, r *http.Request) {
		c := f.record(r, nil)
		if r.URL.Query().Get("stream") != "1" {
			answer(w, c.list)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson") // JSON lines, as snared streams them
		enc := json.NewEncoder(w)
		for _, e := range c.list.Entries {
			enc.Encode(e)
		}
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { answer(w, f.record(r, nil).status) })
	mux.HandleFunc("GET /v1/fleet", func(w http.ResponseWriter, r *http.Request) { answer(w, f.record(r, nil).fleet) })
	mux.HandleFunc("GET /v1/allow", func(w http.ResponseWriter, r *http.Request) { answer(w, f.record(r, nil).allow) })
	allowChange := func(w http.ResponseWriter, r *http.Request) {
		var req api.AllowRequest
		if c, ok := f.decode(w, r, &req); ok {
			answer(w, c.allow)
		}
	}
	mux.HandleFunc("POST /v1/allow/add", allowChange)
	mux.HandleFunc("POST /v1/allow/del", allowChange)
	mux.HandleFunc("POST /v1/import", func(w http.ResponseWriter, r *http.Request) {
		var req api.ImportRequest
		var c canned
		if strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain") {
			// The streamed form: the list is the body, options in the query. Recorded as the
			// equivalent JSON request so tests check one form.
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return // the upload was cut off: nothing happens
			}
			q := r.URL.Query()
			req = api.ImportRequest{Content: string(body), TTL: q.Get("ttl"), Reason: q.Get("reason"),
				Name: q.Get("name"), SkipBad: q.Get("skip_bad") == "true"}
			js, _ := json.Marshal(req)
			if c = f.record(r, js); c.refuse != "" {
				fail(w, http.StatusBadRequest, c.refuse)
				return
			}
		} else {
			var ok bool
			if c, ok = f.decode(w, r, &req); !ok {
				return
			}
		}
		if c.imported != nil {
			answer(w, *c.imported)
			return
		}
		answer(w, api.ImportResponse{Imported: len(strings.Fields(req.Content))})
	})
	mux.HandleFunc("GET /v1/export", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, f.record(r, nil).export)
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		c := f.record(r, nil)
		enc := json.NewEncoder(w)
		for _, ev := range c.events {
			enc.Encode(ev)
		}
		if r.URL.Query().Get("follow") == "1" && c.holdFollow {
			// Like snared: keep the stream open until the client goes away.
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}
	})
	return mux
}

// decode records a POST and decodes its body; a refusing fake answers 400 instead.
func (f *fakeDaemon) decode(w http.ResponseWriter, r *http.Request, v any) (canned, bool) {
	body, _ := io.ReadAll(r.Body)
	c := f.record(r, body)
	if c.refuse != "" {
		fail(w, http.StatusBadRequest, c.refuse)
		return c, false
	}
	if err := json.Unmarshal(body, v); err != nil {
		fail(w, http.StatusBadRequest, fmt.Sprintf("bad request body: %v", err))
		return c, false
	}
	return c, true
}

// record notes a request and returns the canned answers as they are now.
func (f *fakeDaemon) record(r *http.Request, body []byte) canned {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fakeCall{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Body: body})
	return f.canned
}

// set changes the canned answers; the fake serves them from other goroutines.
func (f *fakeDaemon) set(change func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change()
}

// Calls returns every request received so far.
func (f *fakeDaemon) Calls() []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeCall(nil), f.calls...)
}

// Mutations returns the requests that could have changed something (every POST).
func (f *fakeDaemon) Mutations() []fakeCall {
	var m []fakeCall
	for _, c := range f.Calls() {
		if c.Method != http.MethodGet {
			m = append(m, c)
		}
	}
	return m
}

// lastBody decodes the body of the last request to path into v.
func (f *fakeDaemon) lastBody(t *testing.T, path string, v any) {
	t.Helper()
	calls := f.Calls()
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].Path == path {
			reflect.ValueOf(v).Elem().SetZero() // no fields left over from an earlier decode
			if err := json.Unmarshal(calls[i].Body, v); err != nil {
				t.Fatalf("decode %s body %q: %v", path, calls[i].Body, err)
			}
			return
		}
	}
	t.Fatalf("no request to %s; got %+v", path, calls)
}

func answer(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.ErrorResponse{Error: msg})
}
