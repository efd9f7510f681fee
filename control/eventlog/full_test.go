package eventlog_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/eventlog"

	"github.com/snare-dev/snare/control/api"

	"github.com/snare-dev/snare/internal/testutil"
)

// An event log that could not be written on a full disk is written again once there is room.
func TestEventLogFullDisk(t *testing.T) {
	testutil.RequireRoot(t)
	dir := testutil.SmallDisk(t, 1<<20)
	l, err := eventlog.Open(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// A first line leaves room in the file's last page: the write on the full disk fills it,
	// cutting a line short.
	if err := l.Log(api.Event{Time: time.Now(), Event: api.EventBlock, Address: "198.19.0.3/32"}); err != nil {
		t.Fatal(err)
	}
	filler := testutil.FillDisk(t, dir)
	ev := api.Event{Time: time.Now(), Event: api.EventBlock, Address: "198.19.0.1/32", Reason: strings.Repeat("x", 5000)}
	if err := l.Log(ev, ev); err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("log on a full disk: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := l.Log(api.Event{Time: time.Now(), Event: api.EventUnblock, Address: "198.19.0.2/32"}); err != nil {
		t.Fatalf("log with room again: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	// The last line is the event logged with room again, whole, on a line of its own.
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	var last api.Event
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Address != "198.19.0.2/32" {
		t.Fatalf("event log with room again ends with %.200q: %v", lines[len(lines)-1], err)
	}
}
