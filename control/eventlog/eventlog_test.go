package eventlog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
)

func TestEventLogFileFollowReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log", "events.jsonl")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	recent, ch, cancel := l.Follow()
	defer cancel()
	if len(recent) != 0 {
		t.Fatalf("new log has %d recent events", len(recent))
	}
	ev := api.Event{Time: time.Now(), Event: api.EventScan, Address: "198.18.0.7", Proto: "tcp", Ports: []uint16{31337}, TCPFlags: "SYN", Action: "blocked"}
	if err := l.Log(ev); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-ch:
		if got.Address != ev.Address || got.Ports[0] != 31337 {
			t.Errorf("follower got %+v", got)
		}
	case <-time.After(time.Second):
		t.Fatal("follower got nothing")
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"event":"scan"`) || !strings.Contains(string(b), `"tcp_flags":"SYN"`) || strings.Count(string(b), "\n") != 1 {
		t.Errorf("log file:\n%s", b)
	}

	// Rotation: the file is moved away, Reopen starts a new one.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := l.Log(api.Event{Time: time.Now(), Event: api.EventExpire, Address: "198.18.0.8/32"}); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if !strings.Contains(string(b), "198.18.0.8") || strings.Contains(string(b), "198.18.0.7") {
		t.Errorf("reopened log:\n%s", b)
	}
	l.Close()

	// A new log object shows the file's tail as recent events (history across restarts).
	l2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if r := l2.Recent(); len(r) != 1 || r[0].Address != "198.18.0.8/32" {
		t.Errorf("recent after reopen: %+v", r)
	}
}

func TestEventLogRing(t *testing.T) {
	l, err := Open(filepath.Join(t.TempDir(), "e.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < recentEvents+10; i++ {
		l.Log(api.Event{Event: api.EventBlock, Offences: i})
	}
	r := l.Recent()
	if len(r) != recentEvents || r[0].Offences != 10 || r[len(r)-1].Offences != recentEvents+9 {
		t.Errorf("ring: %d events, first %d, last %d", len(r), r[0].Offences, r[len(r)-1].Offences)
	}
}
