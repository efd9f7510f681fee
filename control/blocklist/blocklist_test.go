package blocklist

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/input"
)

// defaultRules are the target rules of the default configuration (block.* in defaults.yaml).
var defaultRules = input.TargetRules{IPv6Prefix: 64, MinPrefixV4: 8, MinPrefixV6: 32}

func TestParseBlockListGood(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.Local)
	in := strings.Join([]string{
		"# the seed's blocked.list",
		"198.18.0.7 20261120",
		"198.18.0.8\t20261124   ; trailing comment",
		"",
		"   ",
		"198.18.1.0/24",
		"2001:db8:1::5",
		"::ffff:198.18.0.9 # v4-mapped is the v4 address",
		"198.18.2.0/24 20261101\r",
		"; only a comment",
		"198.18.3.3", // no trailing newline
	}, "\n")
	good, errs, bad := parseAll(in, defaultRules, now)
	if bad != 0 || len(errs) != 0 {
		t.Fatalf("bad lines in a good list: %d %v", bad, errs)
	}
	want := []struct {
		line   int
		prefix string
		date   string
		single bool
	}{
		{2, "198.18.0.7/32", "20261120", true},
		{3, "198.18.0.8/32", "20261124", true},
		{6, "198.18.1.0/24", "", false},
		{7, "2001:db8:1::/64", "", true},
		{8, "198.18.0.9/32", "", true},
		{9, "198.18.2.0/24", "20261101", false},
		{11, "198.18.3.3/32", "", true},
	}
	if len(good) != len(want) {
		t.Fatalf("got %d lines, want %d: %+v", len(good), len(want), good)
	}
	for i, w := range want {
		g := good[i]
		if g.Number != w.line || g.Prefix != netip.MustParsePrefix(w.prefix) || g.Single != w.single {
			t.Errorf("line %d: got %+v, want %+v", w.line, g, w)
		}
		date := ""
		if !g.Date.IsZero() {
			date = g.Date.Format("20060102")
		}
		if date != w.date {
			t.Errorf("line %d: date %q, want %q", w.line, date, w.date)
		}
	}
}

// Every kind of bad line is reported with its number and text, and counted.
func TestParseBlockListBadLines(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.Local)
	for _, tc := range []struct {
		name, line, wantErr string
	}{
		{"not an address", "scanner.example.com", "not an IP address"},
		{"garbage", "198.18.0", "not an IP address"},
		{"v4 prefix out of range", "198.18.0.0/33", "out of range"},
		{"v6 prefix out of range", "2001:db8::/129", "out of range"},
		{"prefix not a number", "198.18.0.0/x", "not a number"},
		{"everything v4", "0.0.0.0/0", "every IPv4 address"},
		{"everything v6", "::/0", "every IPv6 address"},
		{"too wide v4", "198.0.0.0/7", "wider than the configured minimum /8"},
		{"too wide v6", "2001::/16", "wider than the configured minimum /32"},
		{"unspecified", "0.0.0.0", "unspecified"},
		{"zone", "fe80::1%eth0", "zone"},
		{"bad date", "198.18.0.7 2026-11-20", "not a date"},
		{"impossible date", "198.18.0.7 20261345", "not a date"},
		{"short date", "198.18.0.7 2026112", "not a date"},
		{"future date", "198.18.0.7 20261126", "in the future"},
		{"three fields", "198.18.0.7 20261120 extra", "3 fields"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := "198.18.0.1\n# comment\n" + tc.line + "\n198.18.0.2\n"
			good, errs, bad := parseAll(in, defaultRules, now)
			if bad != 1 || len(errs) != 1 {
				t.Fatalf("bad=%d errs=%v, want exactly one bad line", bad, errs)
			}
			e := errs[0]
			if e.Line != 3 || e.Text != tc.line || !strings.Contains(e.Error, tc.wantErr) {
				t.Errorf("got %+v, want line 3 %q with error containing %q", e, tc.line, tc.wantErr)
			}
			if len(good) != 2 {
				t.Errorf("the good lines around it: got %d, want 2", len(good))
			}
		})
	}
}

func TestParseBlockListCapsErrors(t *testing.T) {
	var b strings.Builder
	for i := 0; i < MaxErrors+50; i++ {
		b.WriteString("nonsense\n")
	}
	_, errs, bad := parseAll(b.String(), defaultRules, time.Now())
	if bad != MaxErrors+50 || len(errs) != MaxErrors {
		t.Errorf("bad=%d errors=%d, want the exact count and %d reported", bad, len(errs), MaxErrors)
	}
}

func TestWriteLines(t *testing.T) {
	created := time.Date(2026, 11, 20, 15, 4, 0, 0, time.Local)
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	for _, p := range []string{"198.18.0.7/32", "198.18.1.0/24", "2001:db8:1::/64"} {
		WriteLine(w, FormatBlockedList, netip.MustParsePrefix(p), created)
		WriteLine(w, FormatPlain, netip.MustParsePrefix(p), created)
	}
	w.Flush()
	want := "198.18.0.7 20261120\n198.18.0.7\n198.18.1.0/24 20261120\n198.18.1.0/24\n2001:db8:1::/64 20261120\n2001:db8:1::/64\n"
	if buf.String() != want {
		t.Errorf("export:\n%s\nwant:\n%s", buf.String(), want)
	}
	// What export writes, import reads back to the same prefixes and dates.
	good, errs, _ := parseAll(buf.String(), defaultRules, created.Add(time.Hour))
	if len(errs) != 0 || len(good) != 6 {
		t.Fatalf("re-import: %d good, errors %v", len(good), errs)
	}
	if good[0].Date.Format("20060102") != "20261120" || good[4].Prefix != netip.MustParsePrefix("2001:db8:1::/64") {
		t.Errorf("re-import changed entries: %+v", good)
	}
}

// Read on two workers: every line reaches parse exactly once, whole, with its number,
// across pieces, reads of any size, a line longer than a piece and a last line without its
// newline; reserve is called in order over all the lines before their piece is parsed.
func TestReadPieces(t *testing.T) {
	var b strings.Builder
	n := 0
	for i := range 40000 {
		n++
		if i == 20000 {
			b.WriteString(strings.Repeat("x", 3*pieceSize/2) + "\n") // longer than a piece
			continue
		}
		fmt.Fprintf(&b, "198.18.%d.%d\n", i>>8&255, i&255)
	}
	b.WriteString("198.19.0.1") // no newline
	n++
	list := b.String()
	want := strings.Split(list, "\n")
	for _, workers := range []int{1, 2} {
		var mu sync.Mutex
		got := make([]string, n+1) // by line number
		reserved := 0
		lines, err := Read(iotest.HalfReader(strings.NewReader(list)), workers, func(first, k int) error {
			if first != reserved+1 {
				return fmt.Errorf("reserve from line %d after %d", first, reserved)
			}
			reserved += k
			return nil
		}, func(text string, first int) {
			mu.Lock()
			defer mu.Unlock()
			for i, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
				if got[first+i] != "" {
					t.Errorf("line %d parsed twice", first+i)
				}
				got[first+i] = strings.Clone(l)
			}
		})
		if err != nil || lines != n || reserved != n {
			t.Fatalf("workers %d: %d lines, reserved %d, %v; want %d", workers, lines, reserved, err, n)
		}
		for i, w := range want {
			if got[i+1] != w {
				t.Fatalf("workers %d: line %d is %.20q, want %.20q", workers, i+1, got[i+1], w)
			}
		}
	}
	// A read that fails names the line it stopped at; a reserve that fails stops the read.
	_, err := Read(io.MultiReader(strings.NewReader("198.18.0.1\n198.18.0.2\n"), iotest.ErrReader(io.ErrUnexpectedEOF)), 2, nil, func(string, int) {})
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("failed read: %v", err)
	}
	// A line longer than maxListLine is refused, by number, before the rest is read.
	long := "198.18.0.1\n" + strings.Repeat("x", maxListLine+1) + "\n198.18.0.2\n"
	if _, err := Read(strings.NewReader(long), 2, nil, func(string, int) {}); !errors.Is(err, ErrNotList) || !strings.Contains(err.Error(), "line 2 is longer than") {
		t.Fatalf("endless line: %v", err)
	}
	full := errors.New("full")
	if _, err := Read(strings.NewReader(list), 2, func(int, int) error { return full }, func(string, int) { t.Error("parsed after reserve failed") }); !errors.Is(err, full) {
		t.Fatalf("failed reserve: %v", err)
	}
}

// parseAll parses a whole list with one Parser.
func parseAll(content string, rules input.TargetRules, now time.Time) (good []Line, errs []api.LineError, bad int) {
	p := NewParser(rules, now, 1)
	p.Parse(content, func(l Line) { good = append(good, l) })
	return good, p.Errors(), p.Bad()
}
