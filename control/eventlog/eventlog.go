// Package eventlog is snare's JSON-lines event log (scan, block, unblock, expire: the old
// scan.log), with the most recent events in memory for the API and followers.
package eventlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/snare-dev/snare/control/api"
)

// recentEvents is how many events the API returns without follow.
const recentEvents = 1000

// Log writes events as JSON lines to a file (the old scan.log), keeps the most recent ones
// in memory for the API and fans new ones out to followers.
type Log struct {
	mu      sync.Mutex
	path    string
	f       *os.File
	w       *bufio.Writer
	recent  []api.Event // ring of the last recentEvents, oldest at next
	next    int
	full    bool
	subs    map[chan api.Event]struct{}
	dropped uint64 // events a slow follower missed
}

// Open opens (appending) or creates the log at path and loads its tail as the recent
// events.
func Open(path string) (*Log, error) {
	l := &Log{path: path, recent: make([]api.Event, recentEvents), subs: map[chan api.Event]struct{}{}}
	l.loadTail()
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Log) open() error {
	if err := os.MkdirAll(filepath.Dir(l.path), 0o700); err != nil {
		return fmt.Errorf("create event log directory: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("open event log: %w", err)
	}
	l.f, l.w = f, bufio.NewWriterSize(f, 64<<10)
	return nil
}

// loadTail reads the last events of an existing log so `snarectl events` shows history across
// restarts. A missing or unreadable file just means no history.
func (l *Log) loadTail() {
	f, err := os.Open(l.path)
	if err != nil {
		return
	}
	defer f.Close()
	const tail = 512 << 10
	if st, err := f.Stat(); err == nil && st.Size() > tail {
		if _, err := f.Seek(st.Size()-tail, io.SeekStart); err != nil {
			return
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		var ev api.Event
		if json.Unmarshal(line, &ev) == nil && ev.Event != "" {
			l.remember(ev)
		}
	}
}

func (l *Log) remember(ev api.Event) {
	l.recent[l.next] = ev
	l.next = (l.next + 1) % len(l.recent)
	if l.next == 0 {
		l.full = true
	}
}

// Log appends events to the file (flushed before Log returns) and hands them to followers.
func (l *Log) Log(evs ...api.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	enc := json.NewEncoder(l.w)
	var werr error
	for _, ev := range evs {
		if werr == nil && l.w != nil {
			werr = enc.Encode(ev)
		}
		l.remember(ev)
		for ch := range l.subs {
			select {
			case ch <- ev:
			default:
				l.dropped++
			}
		}
	}
	if werr == nil && l.w != nil {
		werr = l.w.Flush()
	}
	if werr != nil {
		// The buffered writer keeps a write error (a full disk) for good: start it afresh, so
		// that the log resumes once there is room. The lines not written are lost, and one may
		// be cut short: the next one starts on a new line.
		l.w.Reset(l.f)
		l.w.WriteByte('\n')
		return fmt.Errorf("write event log %s: %w", l.path, werr)
	}
	return nil
}

// Recent returns the events kept in memory, oldest first.
func (l *Log) Recent() []api.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recentLocked()
}

func (l *Log) recentLocked() []api.Event {
	var out []api.Event
	if l.full {
		out = append(out, l.recent[l.next:]...)
	}
	return append(out, l.recent[:l.next]...)
}

// Follow returns the recent events and a channel of every later one; cancel stops it. Taking
// both under one lock means no event falls between them. A follower that does not keep up
// misses events rather than slowing the daemon down.
func (l *Log) Follow() (recent []api.Event, ch <-chan api.Event, cancel func()) {
	c := make(chan api.Event, 1024)
	l.mu.Lock()
	recent = l.recentLocked()
	l.subs[c] = struct{}{}
	l.mu.Unlock()
	return recent, c, func() {
		l.mu.Lock()
		delete(l.subs, c)
		l.mu.Unlock()
	}
}

// Reopen closes and reopens the file, for log rotation (SIGHUP).
func (l *Log) Reopen() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.w.Flush()
		l.f.Close()
		l.f, l.w = nil, nil
	}
	return l.open()
}

// Close flushes and closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.w.Flush()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f, l.w = nil, nil
	return err
}
