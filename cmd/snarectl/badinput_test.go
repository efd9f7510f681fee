package main

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/store"

	"github.com/snare-dev/snare/control/api"
)

// Reasons too long or holding control characters, and link-local, multicast or loopback
// targets, are refused by the real snarectl against the real daemon: a message naming the
// problem, exit code 2, and the block list unchanged.
func TestBadInputAgainstRealDaemon(t *testing.T) {
	socket := startDaemon(t)
	run := func(stdin string, args ...string) result { return runCLI(t, socket, stdin, args...) }
	if r := run("", "block", "198.18.0.7", "--reason", "keep me"); r.code != exitOK {
		t.Fatalf("block: %+v", r)
	}
	list := func() string {
		r := run("", "list", "-o", "json")
		if r.code != exitOK {
			t.Fatalf("list: %+v", r)
		}
		return r.stdout
	}
	before := list()
	goodList := writeFile(t, "good.list", "198.18.0.9\n")
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		want  []string
	}{
		{"reason too long", "", []string{"block", "198.18.0.8", "--reason", strings.Repeat("r", 257)}, []string{"bad --reason: reason is 257 bytes long: at most 256 allowed"}},
		{"reason with newline", "", []string{"block", "198.18.0.8", "--reason", "a\n198.18.9.9 forged"}, []string{`bad --reason: reason "a\n198.18.9.9 forged" holds the control character U+000A`}},
		{"reason with escape", "", []string{"block", "198.18.0.8", "--reason", "\x1b[2Jcleared"}, []string{`"\x1b[2Jcleared"`, "U+001B"}},
		{"reason with bidi override", "", []string{"block", "198.18.0.8", "--reason", "abc\u202edef"}, []string{"U+202E"}},
		{"import reason with newline", "", []string{"import", goodList, "--reason", "a\nb"}, []string{"bad --reason", "U+000A"}},
		{"import reason too long", "", []string{"import", goodList, "--reason", strings.Repeat("r", 1000)}, []string{"reason is 1000 bytes long"}},
		{"link-local v6", "", []string{"block", "fe80::5"}, []string{`"fe80::5" is a link-local address (fe80::/10)`}},
		{"link-local v4", "", []string{"block", "169.254.10.1"}, []string{"link-local address (169.254.0.0/16)"}},
		{"CIDR over link-local", "", []string{"block", "169.254.0.0/16"}, []string{"overlaps the link-local range 169.254.0.0/16"}},
		{"multicast v6", "", []string{"block", "ff02::1"}, []string{"multicast address (ff00::/8)"}},
		{"multicast v4 CIDR", "", []string{"block", "198.18.0.8", "224.0.0.0/24"}, []string{"overlaps the multicast range 224.0.0.0/4"}},
		{"loopback v6", "", []string{"block", "::1"}, []string{`"::1" is a loopback address`}},
		{"import of link-local", "198.18.0.9\nfe80::1 20250101\n", []string{"import", "-"}, []string{"<stdin>:2:", "link-local"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(tc.stdin, tc.args...)
			if r.code != exitUsage {
				t.Errorf("exit code %d, want %d: %+v", r.code, exitUsage, r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q lacks %q", r.stderr, w)
				}
			}
			for _, l := range strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n") {
				if strings.ContainsAny(l, "\x1b\u202e") || !strings.HasPrefix(l, "Error: ") && !strings.HasPrefix(l, "<stdin>:") {
					t.Errorf("stderr holds a line that is not an escaped message: %q", r.stderr)
				}
			}
			if after := list(); after != before {
				t.Errorf("the list changed:\n%s\nwant\n%s", after, before)
			}
		})
	}
}

// A store written before reasons were checked may hold any text: a reason of megabytes, one
// with a newline that would forge a row, one with terminal escapes. list, top and events print
// every entry, one row each, escaped; -o json keeps the text as it is.
func TestTablesEscapeOldStoredText(t *testing.T) {
	dir := stateDir(t)
	now := time.Now()
	forged := "ssh\n198.18.6.6     forged       manual  1m ago   in 5d    0     -"
	escape := "\x1b[31mred\x1b[0m\x07"
	huge := strings.Repeat("h", 2<<20)
	reasons := map[string]string{"198.18.0.7/32": forged, "198.18.0.8/32": escape, "198.18.0.9/32": huge}
	st, err := store.OpenStore(filepath.Join(dir, "snare.db"))
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(func(tx *store.Tx) error {
		for p, reason := range reasons {
			r := store.Rule{Prefix: netip.MustParsePrefix(p), Reason: reason, Origin: api.OriginManual,
				Created: now.Add(-time.Minute), Deadline: now.Add(time.Hour), Offences: 1}
			if err := tx.PutRule(r); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := st.Close(); err != nil || cerr != nil {
		t.Fatal(err, cerr)
	}
	var events []byte
	for _, ev := range []api.Event{
		{Time: now, Event: "block", Address: "198.18.0.7/32", Reason: forged, Source: "manual"},
		{Time: now, Event: "block\x1b[2J", Address: "198.18.0.8/32\nforged", Source: "man\x1bual"},
	} {
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		events = append(append(events, b...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, "events.jsonl"), events, 0o600); err != nil {
		t.Fatal(err)
	}
	enf := newMemEnforcer()
	enf.Hits = 3
	socket := startDaemonIn(t, dir, enf)

	clean := func(t *testing.T, what string, r result, rows int) {
		t.Helper()
		if r.code != exitOK {
			t.Fatalf("%s: %+v", what, r)
		}
		if strings.ContainsAny(r.stdout, "\x1b\x07\r") {
			t.Errorf("%s: control characters reach the terminal: %.300q", what, r.stdout)
		}
		if n := strings.Count(r.stdout, "\n"); n != rows {
			t.Errorf("%s: %d lines, want %d (a header and one row each):\n%.2000s", what, n, rows, r.stdout)
		}
	}
	for _, verb := range []string{"list", "top"} {
		r := runCLI(t, socket, "", verb)
		clean(t, verb, r, 4)
		for _, want := range []string{`ssh\n198.18.6.6     forged`, `\x1b[31mred\x1b[0m\a`, huge} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("%s: the escaped reason %.40q is missing", verb, want)
			}
		}
	}
	r := runCLI(t, socket, "", "list", "-o", "json")
	var resp api.ListResponse
	if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil || len(resp.Entries) != 3 {
		t.Fatalf("list -o json: %v, %d entries", err, len(resp.Entries))
	}
	for _, e := range resp.Entries {
		if e.Reason != reasons[e.Prefix] {
			t.Errorf("list -o json: %s has reason %.40q, want it as stored", e.Prefix, e.Reason)
		}
	}
	r = runCLI(t, socket, "", "events", "-o", "json")
	n := strings.Count(r.stdout, "\n") // the daemon's own start event and the two above
	r = runCLI(t, socket, "", "events")
	clean(t, "events", r, n+1)
	for _, want := range []string{`block\x1b[2J`, `198.18.0.8/32\nforged`, `man\x1bual`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("events: %q is missing:\n%s", want, r.stdout)
		}
	}
}

// status and allow list escape what any daemon sends (interface names, versions, reasons,
// sources), keeping one row per field.
func TestStatusAndAllowEscape(t *testing.T) {
	f := newFakeDaemon(t)
	r := runCLI(t, f.socket, "", "status")
	if r.code != exitOK {
		t.Fatalf("status: %+v", r)
	}
	rows := strings.Count(r.stdout, "\n")
	f.set(func() {
		f.status.Backend = "xdp\x1b[2J"
		f.status.Fallback = "why\nforged: row"
		f.status.Version = "v1\x07"
		f.status.Interfaces = []api.InterfaceStatus{{Name: "eth0\tx", Mode: "native\u202e"}}
		f.allow.Entries = []api.AllowEntry{{Prefix: "198.18.0.0/24\nforged", Source: "manual\x1b[0m"}}
	})
	r = runCLI(t, f.socket, "", "status")
	if r.code != exitOK || strings.ContainsAny(r.stdout, "\x1b\x07\t\u202e") || strings.Count(r.stdout, "\n") != rows {
		t.Errorf("status not escaped (%d rows, want %d):\n%q", strings.Count(r.stdout, "\n"), rows, r.stdout)
	}
	for _, want := range []string{`xdp\x1b[2J (fallback: why\nforged: row)`, `eth0\tx (native\u202e)`, `v1\a`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	r = runCLI(t, f.socket, "", "allow", "list")
	if want := "PREFIX                 SOURCE\n198.18.0.0/24\\nforged  manual\\x1b[0m\n"; r.code != exitOK || r.stdout != want {
		t.Errorf("allow list:\n%q\nwant\n%q", r.stdout, want)
	}
}
