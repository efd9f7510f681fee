package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The old setup's blocked.list ("IP YYYYMMDD", dated the day it was blocked, purged 5 days
// later by cron) and plain lists carry over; export writes both formats and reads back the same.
func TestImportExport(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		loc := useImportZone(t)
		e := newEnv(t, backend, options{config: map[string]any{"block.ttl": "5d"}})
		d := e.d
		day := func(daysAgo int) string { return time.Now().In(loc).AddDate(0, 0, -daysAgo).Format("20060102") }
		list := strings.Join([]string{
			"# blocked.list as portsentry's script wrote it",
			e.attacker4().String() + " " + day(0),
			"198.18.10.1 " + day(3),
			"198.18.10.2 " + day(10), // its 5 days are over: not imported
			"",
			"; plain lines, another comment style",
			"198.18.11.0/24",
			"2001:db8:11::/48",
			"198.18.12.7   # trailing comment",
		}, "\n") + "\n"
		file := filepath.Join(e.dir, "blocked.list")
		if err := os.WriteFile(file, []byte(list), 0o600); err != nil {
			t.Fatal(err)
		}
		out := d.mustCtl(t, "import", file)
		t.Logf("import: %s", strings.TrimSpace(out))

		entries := d.list(t)
		want := []string{"198.18.10.1/32", host32(e.attacker4()), "198.18.11.0/24", "198.18.12.7/32", "2001:db8:11::/48"}
		slices.Sort(want)
		if got := prefixes(entries); !slices.Equal(got, want) {
			t.Fatalf("after import: %v, want %v", got, want)
		}
		// An entry dated D expires at D + TTL: the start of day D in the daemon's local time,
		// plus 5 days (120 hours), to the millisecond.
		checkDay := func(prefix string, daysAgo int) {
			t.Helper()
			en := find(entries, prefix)
			want := blockedListDeadline(t, day(daysAgo), loc, 5*24*time.Hour)
			if en == nil || !en.Expires.Equal(want) {
				t.Errorf("%s dated %s: %+v, want it to expire at %s (date + 5d TTL)", prefix, day(daysAgo), en, want.Format(time.RFC3339Nano))
			}
		}
		checkDay(host32(e.attacker4()), 0)
		checkDay("198.18.10.1/32", 3)
		for _, en := range entries {
			if en.Origin != "import" {
				t.Errorf("%s: origin %q, want import", en.Prefix, en.Origin)
			}
		}
		e.dropped(t, e.attackerV4Peer())
		e.served(t, e.clientV4Peer())

		// Export in both formats.
		blocked := d.mustCtl(t, "export", "--format", "blocked-list")
		plain := d.mustCtl(t, "export", "--format", "plain")
		line := regexp.MustCompile(`^(\S+) (\d{8})$`)
		var got []string
		for _, l := range strings.Split(blocked, "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";") {
				continue
			}
			m := line.FindStringSubmatch(l)
			if m == nil {
				t.Errorf("blocked-list export line %q is not `IP YYYYMMDD`", l)
				continue
			}
			if _, err := time.Parse("20060102", m[2]); err != nil {
				t.Errorf("blocked-list export line %q: bad date: %v", l, err)
			}
			got = append(got, m[1])
		}
		for _, p := range want {
			bare := strings.TrimSuffix(p, "/32")
			if !slices.Contains(got, p) && !slices.Contains(got, bare) {
				t.Errorf("blocked-list export lacks %s:\n%s", p, blocked)
			}
		}
		for _, p := range want {
			if !strings.Contains(plain, strings.TrimSuffix(p, "/32")) {
				t.Errorf("plain export lacks %s:\n%s", p, plain)
			}
		}

		// Round trip: unblock everything, import each export, get the same list back.
		for _, tc := range []struct{ name, content string }{{"blocked-list", blocked}, {"plain", plain}} {
			d.mustCtl(t, append([]string{"unblock"}, want...)...)
			if l := d.list(t); len(l) != 0 {
				t.Fatalf("after unblocking all: %v", prefixes(l))
			}
			f := filepath.Join(e.dir, "export."+tc.name)
			if err := os.WriteFile(f, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			d.mustCtl(t, "import", f)
			again := d.list(t)
			if got := prefixes(again); !slices.Equal(got, want) {
				t.Errorf("%s round trip: %v, want %v", tc.name, got, want)
			}
			if tc.name == "blocked-list" {
				// The dates carried the expiries across.
				entries = again
				checkDay(host32(e.attacker4()), 0)
				checkDay("198.18.10.1/32", 3)
			}
		}
		e.dropped(t, e.attackerV4Peer())
	})
}

// A list big enough for the bulk path, in the order its blocks were made, into a daemon that
// holds nothing yet (the first import of an old blocked.list): the kernel takes it while the
// store is written. Every line is blocked, a repeated address keeps its latest date, the
// attacker's packets are dropped and the client's still served.
func TestImportBigList(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		loc := useImportZone(t)
		e := newEnv(t, backend, options{config: map[string]any{"block.ttl": "5d"}})
		d := e.d
		day := func(daysAgo int) string { return time.Now().In(loc).AddDate(0, 0, -daysAgo).Format("20060102") }
		const n = 60_000 // more than the daemon's bulk threshold (50,000)
		lines := make([]string, 0, n+2)
		for i := range n {
			lines = append(lines, fmt.Sprintf("198.19.%d.%d %s", i>>8, i&255, day(2)))
		}
		// The attacker twice: its later date (yesterday) wins, wherever the lines fall.
		lines = append(lines, e.attacker4().String()+" "+day(1), e.attacker4().String()+" "+day(3))
		rand.New(rand.NewPCG(7, 8)).Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
		file := filepath.Join(e.dir, "big.list")
		if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if st := d.status(t); st.Entries != 0 {
			t.Fatalf("daemon holds %d entries before the import, want none", st.Entries)
		}
		if out := d.mustCtl(t, "import", file); !strings.Contains(out, fmt.Sprintf("imported %d entries", n+1)) {
			t.Fatalf("import: %q, want %d entries", out, n+1)
		}
		if st := d.status(t); st.Entries != n+1 {
			t.Fatalf("status: %d entries, want %d", st.Entries, n+1)
		}
		entries := d.list(t)
		if len(entries) != n+1 {
			t.Fatalf("list: %d entries, want %d", len(entries), n+1)
		}
		en := find(entries, host32(e.attacker4()))
		want := blockedListDeadline(t, day(1), loc, 5*24*time.Hour)
		if en == nil || !en.Expires.Equal(want) {
			t.Fatalf("attacker %+v: want it to expire at %s (its later date + 5d)", en, want.Format(time.RFC3339Nano))
		}
		e.dropped(t, e.attackerV4Peer())
		e.served(t, e.clientV4Peer())
	})
}

// importZone is the daemon's time zone in the import tests. A blocked.list date is a day in the
// daemon's local time (control.ImportLine.Date); half a day and a half hour off UTC, a date
// taken in UTC, or a deadline off by any part of a day, cannot match.
const importZone = "Asia/Kolkata"

// useImportZone runs the test's snared and snarectl in importZone and returns it.
func useImportZone(t *testing.T) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(importZone)
	if err != nil {
		prerequisite(t, fmt.Sprintf("needs the time zone database (Debian package tzdata): %v", err))
	}
	t.Setenv("TZ", importZone) // inherited by every process the test starts (cleanEnv)
	return loc
}

// blockedListDeadline is when a blocked.list line dated date (YYYYMMDD) expires with ttl: the
// start of that day in loc, plus ttl.
func blockedListDeadline(t *testing.T, date string, loc *time.Location, ttl time.Duration) time.Time {
	t.Helper()
	d, err := time.ParseInLocation("20060102", date, loc)
	if err != nil {
		t.Fatal(err)
	}
	return d.Add(ttl)
}
