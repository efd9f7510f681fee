package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"

	"github.com/spf13/cobra"
)

// TestMain lets a test run the real main (with its real os.Exit) by re-executing the test
// binary with SNARECTL_TEST_MAIN=1; see TestExitCodesOfTheBinary.
func TestMain(m *testing.M) {
	if os.Getenv("SNARECTL_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// testNow is the clock of every in-process run, so relative times are exact.
var testNow = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs one snarectl command line in-process against the fake daemon's socket (via
// SNARE_SOCKET, as a user would), with stdin as standard input.
func runCLI(t *testing.T, socket, stdin string, args ...string) result {
	t.Helper()
	var out bytes.Buffer
	r := runCLIWith(context.Background(), &out, socket, stdin, args...)
	r.stdout = out.String()
	return r
}

// runCLIWith is runCLI with the caller's context and stdout (result.stdout stays empty).
func runCLIWith(ctx context.Context, stdout io.Writer, socket, stdin string, args ...string) result {
	return runCLIAt(ctx, testNow, stdout, socket, stdin, args...)
}

// runCLIAt is runCLIWith on a clock stopped at now.
func runCLIAt(ctx context.Context, now time.Time, stdout io.Writer, socket, stdin string, args ...string) result {
	var errOut bytes.Buffer
	code := run(env{
		ctx:    ctx,
		args:   args,
		stdin:  strings.NewReader(stdin),
		stdout: stdout,
		stderr: &errOut,
		getenv: func(k string) string {
			if k == "SNARE_SOCKET" {
				return socket
			}
			return ""
		},
		now: func() time.Time { return now },
		loc: time.UTC,
	})
	return result{stderr: errOut.String(), code: code}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Every bad input a user can give: a clear message naming the problem, exit code 2, and no
// request reaches the daemon, so nothing can have changed. (An import's bad lines are found by
// the daemon, which refuses the whole file: daemon_test.go.)
func TestBadInputChangesNothing(t *testing.T) {
	f := newFakeDaemon(t)
	good := writeFile(t, "good.list", "198.18.0.7\n")
	tests := []struct {
		name string
		args []string
		want []string // substrings of stderr
	}{
		{"malformed v4", []string{"block", "198.18.0.300"}, []string{`"198.18.0.300" is not an IP address or CIDR`}},
		{"malformed text", []string{"block", "scanner.example"}, []string{`"scanner.example" is not an IP address or CIDR`}},
		{"one bad among good", []string{"block", "198.18.0.1", "198.18.0"}, []string{`"198.18.0" is not an IP address`}},
		{"v4 prefix out of range", []string{"block", "198.18.0.0/33"}, []string{`"198.18.0.0/33": prefix length /33 out of range for IPv4 (0-32)`}},
		{"v6 prefix out of range", []string{"block", "2001:db8::/129"}, []string{`prefix length /129 out of range for IPv6 (0-128)`}},
		{"prefix not a number", []string{"block", "198.18.0.0/x"}, []string{`prefix length "x" is not a number`}},
		{"all v4", []string{"block", "0.0.0.0/0"}, []string{`"0.0.0.0/0" would block every IPv4 address: refused`}},
		{"all v6", []string{"block", "::/0"}, []string{`"::/0" would block every IPv6 address: refused`}},
		{"unspecified", []string{"block", "0.0.0.0"}, []string{`unspecified address`}},
		{"bad ttl", []string{"block", "198.18.0.7", "--ttl", "5x"}, []string{`bad --ttl "5x": not a duration`}},
		{"negative ttl", []string{"block", "198.18.0.7", "--ttl", "-5d"}, []string{`bad --ttl "-5d": negative`}},
		{"negative ttl hours", []string{"block", "198.18.0.7", "--ttl=-12h"}, []string{`bad --ttl "-12h": negative`}},
		{"zero ttl", []string{"block", "198.18.0.7", "--ttl", "0s"}, []string{`bad --ttl "0s": zero`}},
		{"empty ttl", []string{"block", "198.18.0.7", "--ttl", ""}, []string{`bad --ttl "": empty`}},
		{"huge ttl", []string{"block", "198.18.0.7", "--ttl", "40000d"}, []string{`longer than 100 years`}},
		{"unknown flag", []string{"block", "198.18.0.7", "--forever"}, []string{"unknown flag: --forever", "snarectl block --help"}},
		{"unknown shorthand", []string{"list", "-x"}, []string{"unknown shorthand flag: 'x' in -x"}},
		{"no target", []string{"block"}, []string{"missing address or CIDR to block"}},
		{"unknown command", []string{"blok", "198.18.0.7"}, []string{`unknown command "blok"`}},
		{"unblock malformed", []string{"unblock", "198.18.0.256"}, []string{`"198.18.0.256" is not an IP address or CIDR`}},
		{"unblock all", []string{"unblock", "::/0"}, []string{`"::/0" is the whole address space, which is never blocked`}},
		{"unblock no target", []string{"unblock"}, []string{"missing address or CIDR to unblock"}},
		{"allow malformed", []string{"allow", "add", "198.18.0.1/40"}, []string{`prefix length /40 out of range`}},
		{"allow everything", []string{"allow", "add", "0.0.0.0/0"}, []string{`"0.0.0.0/0" would allow every IPv4 address: refused`}},
		{"allow del malformed", []string{"allow", "del", "nope"}, []string{`"nope" is not an IP address or CIDR`}},
		{"allow unknown verb", []string{"allow", "remove", "198.18.0.1"}, []string{`unknown command "remove" for "snarectl allow"`}},
		{"import missing file", []string{"import", filepath.Join(t.TempDir(), "nope.list")}, []string{"read block list:", "no such file or directory"}},
		{"import bad ttl", []string{"import", good, "--ttl", "-1h"}, []string{`bad --ttl "-1h": negative`}},
		{"import no file", []string{"import"}, []string{"missing FILE"}},
		{"import two files", []string{"import", good, good}, []string{"too many arguments"}},
		{"list bad output", []string{"list", "-o", "yaml"}, []string{`invalid argument "yaml" for "-o, --output" flag: must be one of table, json`}},
		{"list bad sort", []string{"list", "--sort", "size"}, []string{`invalid argument "size" for "--sort" flag`}},
		{"list bad address", []string{"list", "198.18.0.256"}, []string{`bad address to look for: "198.18.0.256" is not an IP address or CIDR`}},
		{"status extra arg", []string{"status", "198.18.0.7"}, []string{`unexpected arguments ["198.18.0.7"]`}},
		{"status bad output", []string{"status", "-o", "xml"}, []string{`invalid argument "xml"`}},
		{"export bad format", []string{"export", "--format", "csv"}, []string{`invalid argument "csv" for "--format" flag: must be one of blocked-list, plain`}},
		{"top negative limit", []string{"top", "-n", "-1"}, []string{`bad --limit -1`}},
		{"completion unknown shell", []string{"completion", "tcsh"}, []string{`unknown shell "tcsh"`}},
		{"fleet without command", []string{"fleet"}, []string{"missing fleet command (want: status)"}},
		{"fleet unknown command", []string{"fleet", "stats"}, []string{`unknown fleet command "stats" (want: status)`}},
		{"fleet status extra arg", []string{"fleet", "status", "web-1"}, []string{`unexpected arguments ["web-1"]`}},
		{"fleet status bad output", []string{"fleet", "status", "-o", "yaml"}, []string{`invalid argument "yaml" for "-o, --output" flag: must be one of table, json`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.Calls())
			r := runCLI(t, f.socket, "", tt.args...)
			if r.code != exitUsage {
				t.Errorf("exit code %d, want %d (stderr %q)", r.code, exitUsage, r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q does not contain %q", r.stderr, w)
				}
			}
			if !strings.Contains(r.stderr, "Error: ") {
				t.Errorf("stderr %q has no Error: line", r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			if calls := f.Calls()[before:]; len(calls) != 0 {
				t.Errorf("daemon received %+v, want no request", calls)
			}
		})
	}
	if m := f.Mutations(); len(m) != 0 {
		t.Fatalf("mutating calls reached the daemon: %+v", m)
	}
}

func TestUnreachableDaemon(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")

	// A stale socket: the file exists, nothing listens.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	for _, tc := range []struct {
		socket, want string
	}{
		{missing, "cannot reach snared: socket " + missing + " does not exist"},
		{stale, "cannot reach snared: nothing listens on " + stale},
	} {
		for _, args := range [][]string{
			{"block", "198.18.0.7"}, {"unblock", "198.18.0.7"}, {"list"}, {"status", "-o", "json"}, {"top"},
			{"allow", "list"}, {"export"}, {"events"}, {"import", "-"},
		} {
			r := runCLI(t, tc.socket, "198.18.0.7\n", args...)
			if r.code != exitUnreachable || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%v on %s: code %d stderr %q, want code %d and %q", args, filepath.Base(tc.socket), r.code, r.stderr, exitUnreachable, tc.want)
			}
		}
	}

	// --socket wins over SNARE_SOCKET.
	f := newFakeDaemon(t)
	if r := runCLI(t, missing, "", "--socket", f.socket, "list"); r.code != exitOK {
		t.Errorf("--socket %s: code %d stderr %q", f.socket, r.code, r.stderr)
	}
	if r := runCLI(t, f.socket, "", "--socket", missing, "list"); r.code != exitUnreachable {
		t.Errorf("--socket %s over a working SNARE_SOCKET: code %d, want %d", missing, r.code, exitUnreachable)
	}

	// version still works, and says the daemon is unreachable.
	r := runCLI(t, missing, "", "version")
	if r.code != exitOK || !strings.Contains(r.stdout, "snarectl ") || !strings.Contains(r.stdout, "cannot reach snared") {
		t.Errorf("version without daemon: code %d stdout %q", r.code, r.stdout)
	}
}

// The daemon's refusals (allowlisted target, prefix wider than the configured minimum) come
// back as exit code 1 with the daemon's message.
func TestDaemonRefusal(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.refuse = `"198.18.0.1": allowlisted (gateway 198.18.0.1/32): refused` })
	for _, args := range [][]string{
		{"block", "198.18.0.1"},
		{"unblock", "198.18.0.1"},
		{"allow", "del", "198.18.0.1"},
	} {
		r := runCLI(t, f.socket, "", args...)
		if r.code != exitError {
			t.Errorf("%v: code %d, want %d", args, r.code, exitError)
		}
		want := "Error: " + args[0] + ": " + f.refuse
		if args[0] == "allow" {
			want = "Error: allow del: " + f.refuse
		}
		if strings.TrimSpace(r.stderr) != want {
			t.Errorf("%v: stderr %q, want %q", args, r.stderr, want)
		}
	}
}

func TestBlock(t *testing.T) {
	f := newFakeDaemon(t)
	r := runCLI(t, f.socket, "", "block", "198.18.0.7", "2001:db8::1", "--ttl", "12h", "--reason", "ssh brute force")
	if r.code != exitOK {
		t.Fatalf("code %d stderr %q", r.code, r.stderr)
	}
	var req api.BlockRequest
	f.lastBody(t, "/v1/block", &req)
	want := api.BlockRequest{Targets: []string{"198.18.0.7", "2001:db8::1"}, TTL: "12h", Reason: "ssh brute force"}
	if !reflect.DeepEqual(req, want) {
		t.Errorf("request %+v, want %+v", req, want)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "blocked 198.18.0.7 until ") || !strings.HasPrefix(lines[1], "blocked 2001:db8::/64 until ") {
		t.Errorf("stdout %q", r.stdout)
	}

	// Without --ttl the daemon's default applies: no TTL is sent. "permanent" is passed on.
	runCLI(t, f.socket, "", "block", "198.18.0.8")
	req = api.BlockRequest{}
	f.lastBody(t, "/v1/block", &req)
	if req.TTL != "" {
		t.Errorf("TTL %q sent without --ttl", req.TTL)
	}
	r = runCLI(t, f.socket, "", "block", "198.18.0.9", "--ttl", "permanent")
	f.lastBody(t, "/v1/block", &req)
	if req.TTL != "permanent" || r.stdout != "blocked 198.18.0.9 permanently\n" {
		t.Errorf("permanent: request %+v, stdout %q", req, r.stdout)
	}

	r = runCLI(t, f.socket, "", "block", "198.18.0.10", "-o", "json")
	var resp api.BlockResponse
	if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil || len(resp.Entries) != 1 || resp.Entries[0].Prefix != "198.18.0.10/32" {
		t.Errorf("-o json: %v, stdout %q", err, r.stdout)
	}
}

// Well-formed targets go to the daemon as typed: IPv4-mapped IPv6 and the configured bounds
// (here the fake's /8 minimum) are the daemon's to apply.
func TestBlockLeavesConfigRulesToDaemon(t *testing.T) {
	f := newFakeDaemon(t)
	r := runCLI(t, f.socket, "", "block", "::ffff:198.18.0.7")
	if r.code != exitOK || r.stdout == "" || !strings.HasPrefix(r.stdout, "blocked 198.18.0.7 ") {
		t.Errorf("mapped: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, f.socket, "", "block", "198.0.0.0/7")
	if r.code != exitError || !strings.Contains(r.stderr, "prefix /7 is wider than the configured minimum /8") {
		t.Errorf("/7: code %d stderr %q", r.code, r.stderr)
	}
}

func TestUnblock(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.notFound["198.18.0.9"] = true })
	r := runCLI(t, f.socket, "", "unblock", "198.18.0.7", "198.18.0.9")
	if r.code != exitError || r.stdout != "unblocked 198.18.0.7\n" || !strings.Contains(r.stderr, "not blocked: 198.18.0.9") {
		t.Errorf("code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	var req api.UnblockRequest
	f.lastBody(t, "/v1/unblock", &req)
	if !reflect.DeepEqual(req.Targets, []string{"198.18.0.7", "198.18.0.9"}) {
		t.Errorf("targets %q", req.Targets)
	}
	if r := runCLI(t, f.socket, "", "unblock", "198.18.0.7"); r.code != exitOK {
		t.Errorf("code %d stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, f.socket, "", "unblock", "198.18.0.7", "198.18.0.9", "-o", "json")
	var resp api.UnblockResponse
	if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil || r.code != exitError ||
		!reflect.DeepEqual(resp, api.UnblockResponse{Removed: []string{"198.18.0.7"}, NotFound: []string{"198.18.0.9"}}) {
		t.Errorf("-o json: code %d, %v, stdout %q", r.code, err, r.stdout)
	}
}

// sampleEntries are three blocks with distinct hits, expiries and creation times.
func sampleEntries() []api.Entry {
	return []api.Entry{
		{Prefix: "2001:db8::/64", Reason: "trap tcp/1", Origin: "trap", Created: testNow.Add(-2 * time.Hour),
			Expires: testNow.Add(5*24*time.Hour - 2*time.Hour), Offences: 1, Hits: 5, LastHit: testNow.Add(-30 * time.Second)},
		{Prefix: "198.18.0.7/32", Reason: "ssh brute force", Origin: "manual", Created: testNow.Add(-3 * 24 * time.Hour),
			Permanent: true, Offences: 2, Hits: 1200, LastHit: testNow.Add(-5 * time.Minute)},
		{Prefix: "198.18.1.0/24", Origin: "import", Created: testNow.Add(-10 * time.Minute),
			Expires: testNow.Add(90 * time.Minute), Offences: 1},
	}
}

func TestListTable(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.list.Entries = sampleEntries() })
	r := runCLI(t, f.socket, "", "list")
	want := `ADDRESS        REASON           ORIGIN  CREATED  EXPIRES   HITS  LAST HIT
198.18.0.7     ssh brute force  manual  3d ago   never     1200  5m ago
198.18.1.0/24  -                import  10m ago  in 1h30m  0     -
2001:db8::/64  trap tcp/1       trap    2h ago   in 4d22h  5     30s ago
`
	if r.code != exitOK || r.stdout != want {
		t.Errorf("code %d stderr %q\ngot:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	order := func(args ...string) []string {
		r := runCLI(t, f.socket, "", args...)
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n")[1:] {
			got = append(got, strings.Fields(l)[0])
		}
		return got
	}
	for sort, want := range map[string][]string{
		"hits":    {"198.18.0.7", "2001:db8::/64", "198.18.1.0/24"},
		"expires": {"198.18.1.0/24", "2001:db8::/64", "198.18.0.7"},
		"created": {"198.18.1.0/24", "2001:db8::/64", "198.18.0.7"},
		"address": {"198.18.0.7", "198.18.1.0/24", "2001:db8::/64"},
	} {
		if got := order("list", "--sort", sort); !reflect.DeepEqual(got, want) {
			t.Errorf("--sort %s: %q, want %q", sort, got, want)
		}
	}
}

// list ADDR|CIDR... shows only the blocks covering or overlapping them.
func TestListFilter(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.list.Entries = sampleEntries() })
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"198.18.1.77"}, "198.18.1.0/24"},
		{[]string{"2001:db8::42", "198.18.0.7"}, "198.18.0.7 2001:db8::/64"},
		{[]string{"::ffff:198.18.0.7"}, "198.18.0.7"},
		{[]string{"198.18.0.0/16"}, "198.18.0.7 198.18.1.0/24"},
		{[]string{"198.18.200.1"}, ""},
	} {
		r := runCLI(t, f.socket, "", append([]string{"list"}, tc.args...)...)
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n")[1:] {
			got = append(got, strings.Fields(l)[0])
		}
		if r.code != exitOK || strings.Join(got, " ") != tc.want {
			t.Errorf("list %v: code %d, got %q, want %q", tc.args, r.code, got, tc.want)
		}
	}
}

func TestListJSON(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.list.Entries = sampleEntries() })
	r := runCLI(t, f.socket, "", "list", "-o", "json", "--sort", "hits")
	if r.code != exitOK {
		t.Fatalf("code %d stderr %q", r.code, r.stderr)
	}
	// The shape scripts rely on: {"entries": [{"prefix", "reason", "origin", "created", ...}]}.
	var raw map[string][]map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, r.stdout)
	}
	entries := raw["entries"]
	if len(raw) != 1 || len(entries) != 3 {
		t.Fatalf("shape: %s", r.stdout)
	}
	first := entries[0]
	for _, k := range []string{"prefix", "reason", "origin", "created", "permanent", "offences", "hits", "last_hit"} {
		if _, ok := first[k]; !ok {
			t.Errorf("entry lacks %q: %v", k, first)
		}
	}
	if first["prefix"] != "198.18.0.7/32" || first["hits"] != float64(1200) || first["created"] != "2026-11-22T10:00:00Z" {
		t.Errorf("first entry %v", first)
	}
	if _, ok := first["expires"]; ok {
		t.Errorf("permanent entry has expires: %v", first)
	}
	var back api.ListResponse
	json.Unmarshal([]byte(r.stdout), &back)
	want := sampleEntries()
	sortEntries(want, "hits")
	if !reflect.DeepEqual(back.Entries, want) {
		t.Errorf("round trip:\n%+v\nwant\n%+v", back.Entries, want)
	}
}

func TestTop(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.list.Entries = sampleEntries() })
	r := runCLI(t, f.socket, "", "top")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != exitOK || len(lines) != 3 || !strings.HasPrefix(lines[1], "198.18.0.7 ") || !strings.HasPrefix(lines[2], "2001:db8::/64 ") {
		t.Errorf("code %d stdout:\n%s", r.code, r.stdout)
	}
	r = runCLI(t, f.socket, "", "top", "-n", "1", "-o", "json")
	var resp api.ListResponse
	if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil || len(resp.Entries) != 1 || resp.Entries[0].Prefix != "198.18.0.7/32" {
		t.Errorf("top -n 1 -o json: %v %s", err, r.stdout)
	}
	f.set(func() { f.list.Entries = f.list.Entries[2:] }) // no hits at all
	if r := runCLI(t, f.socket, "", "top"); r.code != exitOK || !strings.Contains(r.stdout, "no blocked source has sent anything") {
		t.Errorf("empty top: code %d stdout %q", r.code, r.stdout)
	}
}

func sampleStatus() api.StatusResponse {
	return api.StatusResponse{
		Version: "v0.1.0", Backend: "xdp",
		Interfaces: []api.InterfaceStatus{{Name: "eth0", Mode: "native"}, {Name: "veth1", Mode: "generic"}},
		Entries:    2500, Capacity: 1000000, Passed: 123456789, Dropped: 4321,
		ByReason: map[string]uint64{"drop_exact": 4000, "drop_cidr": 321, "drop_trap": 0, "pass": 123456000,
			"pass_allow": 789, "dry_run": 5},
		Evictions: 0, Allowlist: 6,
		Trap: api.TrapStatus{TCPPorts: "1,11,15", UDPPorts: "1,7,9", Threshold: 1, Window: "1m", TCPMode: "block", UDPMode: "log",
			ScanEntries: 17, Hits: 40, Blocks: 12, Suppressed: 3},
		StartedAt: testNow.Add(-26 * time.Hour),
	}
}

func TestStatus(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.status = sampleStatus() })
	r := runCLI(t, f.socket, "", "status")
	want := `backend:            xdp
interfaces:         eth0 (native), veth1 (generic)
entries:            2,500 of 1,000,000 (0.2% full)
passed:             123,456,789 packets (allow: 789, not blocked: 123,456,000)
dropped:            4,321 packets (cidr: 321, exact: 4,000)
other counters:     dry_run: 5
evictions:          0
allowlist:          6 entries
trap tcp ports:     1,11,15 (block)
trap udp ports:     1,7,9 (log)
trap trigger:       1 distinct port within 1m
trap hits:          40 (12 blocks)
scan entries:       17
events suppressed:  3
started:            2026-11-24 08:00:00 UTC (1d2h ago)
version:            v0.1.0
`
	if r.code != exitOK || r.stdout != want {
		t.Errorf("code %d stderr %q\ngot:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	f.set(func() {
		f.status.Backend, f.status.Fallback, f.status.DryRun = "iptables", "xdp attach failed: operation not supported", true
	})
	r = runCLI(t, f.socket, "", "status")
	if !strings.Contains(r.stdout, "backend:            iptables (fallback: xdp attach failed: operation not supported), DRY RUN") {
		t.Errorf("fallback status:\n%s", r.stdout)
	}

	r = runCLI(t, f.socket, "", "status", "-o", "json")
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, r.stdout)
	}
	for _, k := range []string{"backend", "interfaces", "entries", "capacity", "passed", "dropped", "evictions", "trap", "started_at"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("status JSON lacks %q", k)
		}
	}
	var back api.StatusResponse
	json.Unmarshal([]byte(r.stdout), &back)
	if !reflect.DeepEqual(back, f.status) {
		t.Errorf("round trip:\n%+v\nwant\n%+v", back, f.status)
	}
}

func TestAllow(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() {
		f.allow.Entries = []api.AllowEntry{{Prefix: "127.0.0.0/8", Source: "loopback"}, {Prefix: "198.18.10.0/24", Source: "manual"}}
	})
	r := runCLI(t, f.socket, "", "allow", "add", "198.18.10.0/24", "2001:db8:1::/48")
	want := "PREFIX          SOURCE\n127.0.0.0/8     loopback\n198.18.10.0/24  manual\n"
	if r.code != exitOK || r.stdout != want {
		t.Errorf("code %d stderr %q stdout:\n%s", r.code, r.stderr, r.stdout)
	}
	var req api.AllowRequest
	f.lastBody(t, "/v1/allow/add", &req)
	if !reflect.DeepEqual(req.Targets, []string{"198.18.10.0/24", "2001:db8:1::/48"}) {
		t.Errorf("add targets %q", req.Targets)
	}
	runCLI(t, f.socket, "", "allow", "del", "198.18.10.0/24")
	f.lastBody(t, "/v1/allow/del", &req)
	if !reflect.DeepEqual(req.Targets, []string{"198.18.10.0/24"}) {
		t.Errorf("del targets %q", req.Targets)
	}
	r = runCLI(t, f.socket, "", "allow", "list", "-o", "json")
	var resp api.AllowResponse
	if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil || !reflect.DeepEqual(resp, f.allow) {
		t.Errorf("allow list -o json: %v %s", err, r.stdout)
	}
}

func TestImport(t *testing.T) {
	f := newFakeDaemon(t)
	content := "# seed list\n198.18.0.7 20261120\n198.18.1.0/24 ; a net\n\n2001:db8::5\n"
	file := writeFile(t, "blocked.list", content)
	f.set(func() { f.imported = &api.ImportResponse{Imported: 2, Expired: 1} })
	r := runCLI(t, f.socket, "", "import", file, "--ttl", "5d", "--reason", "seed")
	if r.code != exitOK || r.stdout != "imported 2 entries from "+file+", 1 already expired\n" {
		t.Errorf("code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	var req api.ImportRequest
	f.lastBody(t, "/v1/import", &req)
	want := api.ImportRequest{Content: content, TTL: "5d", Reason: "seed", Name: file}
	if !reflect.DeepEqual(req, want) {
		t.Errorf("request %+v, want %+v", req, want)
	}

	// '-' reads standard input.
	f.set(func() { f.imported = &api.ImportResponse{Imported: 1} })
	r = runCLI(t, f.socket, "198.18.0.9\n", "import", "-")
	f.lastBody(t, "/v1/import", &req)
	if r.code != exitOK || req.Content != "198.18.0.9\n" || req.Name != "<stdin>" {
		t.Errorf("stdin import: code %d stderr %q request %+v", r.code, r.stderr, req)
	}

	// --skip-bad sends the whole file and lists the lines the daemon skipped.
	bad := writeFile(t, "bad.list", "198.18.0.7\nnot-an-ip\n")
	f.set(func() {
		f.imported = &api.ImportResponse{Imported: 1, Skipped: 1,
			Errors: []api.LineError{{Line: 2, Text: "not-an-ip", Error: `"not-an-ip" is not an IP address or CIDR`}}}
	})
	r = runCLI(t, f.socket, "", "import", bad, "--skip-bad")
	f.lastBody(t, "/v1/import", &req)
	if r.code != exitOK || !req.SkipBad || req.Content != "198.18.0.7\nnot-an-ip\n" ||
		r.stdout != "imported 1 entry from "+bad+", 1 bad line skipped\n" ||
		!strings.Contains(r.stderr, bad+`:2: "not-an-ip" is not an IP address or CIDR`) {
		t.Errorf("--skip-bad: code %d stdout %q stderr %q request %+v", r.code, r.stdout, r.stderr, req)
	}

	// Lines only the daemon's configuration refuses: reported, exit 1.
	wide := writeFile(t, "wide.list", "198.0.0.0/7\n")
	f.set(func() {
		f.imported = &api.ImportResponse{Errors: []api.LineError{{Line: 1, Text: "198.0.0.0/7", Error: `"198.0.0.0/7": prefix /7 is wider than the configured minimum /8 (block.min_prefix_v4)`}}}
	})
	r = runCLI(t, f.socket, "", "import", wide)
	if r.code != exitError || !strings.Contains(r.stderr, wide+`:1: "198.0.0.0/7": prefix /7 is wider`) ||
		!strings.Contains(r.stderr, "the daemon refused 1 line, nothing imported") {
		t.Errorf("refused lines: code %d stderr %q", r.code, r.stderr)
	}
	// snared answers such an import with an error naming the lines.
	f.set(func() {
		f.refuse = wide + ": 1 bad line, nothing imported (--skip-bad imports the good lines):\n  line 1: prefix /7 is wider"
	})
	r = runCLI(t, f.socket, "", "import", wide)
	if r.code != exitError || !strings.Contains(r.stderr, "Error: import: "+f.refuse) {
		t.Errorf("refused import: code %d stderr %q", r.code, r.stderr)
	}
}

func TestExport(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.export = "198.18.0.7 20261120\n198.18.1.0/24 20261125\n" })
	for _, tc := range []struct {
		args  []string
		query string
	}{
		{[]string{"export"}, "format=blocked-list"},
		{[]string{"export", "--format", "plain"}, "format=plain"},
	} {
		r := runCLI(t, f.socket, "", tc.args...)
		calls := f.Calls()
		if r.code != exitOK || r.stdout != f.export || calls[len(calls)-1].Query != tc.query {
			t.Errorf("%v: code %d stdout %q query %q", tc.args, r.code, r.stdout, calls[len(calls)-1].Query)
		}
	}
}

func TestEvents(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() {
		f.events = []api.Event{
			{Time: testNow.Add(-time.Minute), Event: "scan", Address: "198.18.0.7", Source: "trap", Proto: "tcp", Ports: []uint16{1, 11, 12, 13}, TCPFlags: "SYN", Action: "blocked"},
			{Time: testNow, Event: "block", Address: "198.18.0.7/32", Source: "trap", TTL: "5d", Offences: 2, Reason: "scan tcp/1"},
		}
	})
	r := runCLI(t, f.socket, "", "events")
	want := `TIME                     EVENT     ADDRESS               SOURCE   DETAILS
2026-11-25 09:59:00 UTC  scan      198.18.0.7            trap     scan=tcp 1,11-13 flags=SYN action=blocked
2026-11-25 10:00:00 UTC  block     198.18.0.7            trap     ttl=5d offence=2 reason="scan tcp/1"
`
	if r.code != exitOK || r.stdout != want {
		t.Errorf("code %d stderr %q\ngot:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}
	if q := f.Calls()[0].Query; q != "" {
		t.Errorf("query without -f: %q", q)
	}

	r = runCLI(t, f.socket, "", "events", "-f", "-o", "json")
	calls := f.Calls()
	if q := calls[len(calls)-1].Query; q != "follow=1" {
		t.Errorf("query with -f: %q", q)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 {
		t.Fatalf("JSON lines: %q", r.stdout)
	}
	for i, l := range lines {
		var ev api.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil || !reflect.DeepEqual(ev, f.events[i]) {
			t.Errorf("line %d %q: %v", i, l, err)
		}
	}
}

// events -f prints events as they arrive and ends cleanly (exit 0) when interrupted.
func TestEventsFollowInterrupted(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.holdFollow = true })
	f.set(func() {
		f.events = []api.Event{
			{Time: testNow, Event: "block", Address: "198.18.0.7/32", Source: "manual"},
			{Time: testNow, Event: "unblock", Address: "198.18.0.7/32", Source: "manual"},
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The "user" presses ^C once both events are on the screen (the stream is still open).
	out := &cancelAfter{lines: 3, cancel: cancel}
	r := runCLIWith(ctx, out, f.socket, "", "events", "-f")
	if r.code != exitOK || r.stderr != "" {
		t.Errorf("code %d stderr %q", r.code, r.stderr)
	}
	if got := out.String(); !strings.Contains(got, " block ") || !strings.Contains(got, " unblock ") {
		t.Errorf("stdout %q", got)
	}
}

// cancelAfter is a stdout that calls cancel once it has seen the given number of lines.
type cancelAfter struct {
	bytes.Buffer
	lines  int
	cancel func()
}

func (c *cancelAfter) Write(p []byte) (int, error) {
	n, err := c.Buffer.Write(p)
	if strings.Count(c.String(), "\n") >= c.lines {
		c.cancel()
	}
	return n, err
}

// Every verb has help with examples, and --help exits 0 without asking the daemon.
func TestHelpOnEveryVerb(t *testing.T) {
	f := newFakeDaemon(t)
	root := (&cli{env: env{getenv: os.Getenv}}).rootCommand()
	var walk func(*cobra.Command)
	walk = func(cmd *cobra.Command) {
		if cmd.Hidden || cmd.Name() == "help" {
			return
		}
		if cmd.Example == "" {
			t.Errorf("%q has no examples", cmd.CommandPath())
		}
		args := append(strings.Fields(cmd.CommandPath())[1:], "--help")
		r := runCLI(t, f.socket, "", args...)
		if r.code != exitOK || !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("%v: code %d stdout %q", args, r.code, r.stdout)
		}
		for _, c := range cmd.Commands() {
			walk(c)
		}
	}
	walk(root)
	if r := runCLI(t, f.socket, "", "--help"); !strings.Contains(r.stdout, "Exit codes:") {
		t.Errorf("root help does not document exit codes:\n%s", r.stdout)
	}
	if calls := f.Calls(); len(calls) != 0 {
		t.Errorf("help asked the daemon: %+v", calls)
	}
}

func TestCompletion(t *testing.T) {
	for shell, marker := range map[string]string{
		"bash": "__start_snarectl",
		"zsh":  "#compdef snarectl",
		"fish": "complete -c snarectl",
	} {
		r := runCLI(t, "/nonexistent", "", "completion", shell)
		if r.code != exitOK || !strings.Contains(r.stdout, marker) {
			t.Errorf("completion %s: code %d, output lacks %q", shell, r.code, marker)
		}
	}
	// Flag values complete from their fixed choices.
	r := runCLI(t, "/nonexistent", "", "__complete", "list", "--sort", "")
	for _, v := range []string{"address", "hits", "expires", "created"} {
		if !strings.Contains(r.stdout, v+"\n") {
			t.Errorf("completion of --sort lacks %q:\n%s", v, r.stdout)
		}
	}
}

// unblock and allow del complete from what the daemon has; without a daemon, nothing (and no
// error on the user's terminal).
func TestCompletionFromDaemon(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.list.Entries = sampleEntries() })
	f.set(func() {
		f.allow.Entries = []api.AllowEntry{{Prefix: "127.0.0.0/8", Source: "loopback"}, {Prefix: "198.18.10.0/24", Source: "manual"}}
	})
	r := runCLI(t, f.socket, "", "__complete", "unblock", "198.18.1.0/24", "")
	want := "198.18.0.7\tssh brute force\n2001:db8::/64\ttrap tcp/1\n:4\n"
	if r.code != exitOK || !strings.HasPrefix(r.stdout, want) {
		t.Errorf("unblock completion: code %d stdout %q, want prefix %q", r.code, r.stdout, want)
	}
	r = runCLI(t, f.socket, "", "__complete", "allow", "del", "")
	if !strings.HasPrefix(r.stdout, "198.18.10.0/24\n:4\n") {
		t.Errorf("allow del completion: %q", r.stdout)
	}
	r = runCLI(t, "/nonexistent.sock", "", "__complete", "unblock", "")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, ":4\n") {
		t.Errorf("completion without daemon: code %d stdout %q", r.code, r.stdout)
	}
	if m := f.Mutations(); len(m) != 0 {
		t.Errorf("completion changed something: %+v", m)
	}
}

// The committed docs/ are what gen-docs writes now (the man pages' date line aside).
func TestDocsUpToDate(t *testing.T) {
	dir := t.TempDir()
	if r := runCLI(t, "/nonexistent", "", "gen-docs", dir); r.code != exitOK {
		t.Fatalf("gen-docs: code %d stderr %q", r.code, r.stderr)
	}
	repoDocs := filepath.Join("..", "..", "docs")
	for _, pattern := range []string{"snarectl*.md", filepath.Join("man", "snarectl*.1")} {
		fresh, _ := filepath.Glob(filepath.Join(dir, pattern))
		committed, _ := filepath.Glob(filepath.Join(repoDocs, pattern))
		if len(fresh) == 0 || len(fresh) != len(committed) {
			t.Errorf("%s: gen-docs wrote %d files, docs/ has %d: run 'go run ./cmd/snarectl gen-docs'", pattern, len(fresh), len(committed))
			continue
		}
		for _, p := range fresh {
			got, _ := os.ReadFile(p)
			want, err := os.ReadFile(filepath.Join(repoDocs, strings.TrimPrefix(p, dir)))
			if err != nil || !bytes.Equal(dropTH(got), dropTH(want)) {
				t.Errorf("docs%s is stale (%v): run 'go run ./cmd/snarectl gen-docs'", strings.TrimPrefix(p, dir), err)
			}
		}
	}
}

// dropTH removes a man page's .TH line, which carries the generation month.
func dropTH(b []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if !bytes.HasPrefix(l, []byte(".TH ")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

// The real binary's exit status is what run returns: re-execute the test binary as snarectl.
func TestExitCodesOfTheBinary(t *testing.T) {
	f := newFakeDaemon(t)
	f.set(func() { f.refuse = "refused" })
	for _, tc := range []struct {
		socket string
		args   []string
		code   int
	}{
		{f.socket, []string{"version", "--client"}, exitOK},
		{f.socket, []string{"block", "198.18.0.7"}, exitError},
		{f.socket, []string{"block", "::/0"}, exitUsage},
		{filepath.Join(t.TempDir(), "none.sock"), []string{"list"}, exitUnreachable},
	} {
		cmd := exec.Command(os.Args[0], tc.args...)
		cmd.Env = append(os.Environ(), "SNARECTL_TEST_MAIN=1", "SNARE_SOCKET="+tc.socket)
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code {
			t.Errorf("snarectl %v: exit status %d, want %d (output %q)", tc.args, code, tc.code, out)
		}
	}
	if m := f.Mutations(); len(m) != 1 {
		t.Errorf("want exactly the one refused block to reach the daemon, got %+v", m)
	}
}
