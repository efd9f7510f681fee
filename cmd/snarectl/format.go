package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/snare-dev/snare/control/api"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// choice is a flag whose value must be one of a fixed set; pflag reports anything else while
// parsing, so a bad value is a usage error caught before the daemon is asked anything.
type choice struct {
	value   string
	allowed []string
}

var _ pflag.Value = (*choice)(nil)

func newChoice(def string, allowed ...string) *choice {
	return &choice{value: def, allowed: allowed}
}

func (c *choice) String() string { return c.value }
func (c *choice) Type() string   { return strings.Join(c.allowed, "|") }
func (c *choice) Set(s string) error {
	for _, a := range c.allowed {
		if s == a {
			c.value = s
			return nil
		}
	}
	return fmt.Errorf("must be one of %s", strings.Join(c.allowed, ", "))
}

// choiceFlag adds a flag with a fixed set of values to cmd, with shell completion of the values.
func choiceFlag(cmd *cobra.Command, name, short, usage, def string, allowed ...string) *choice {
	c := newChoice(def, allowed...)
	cmd.Flags().VarP(c, name, short, usage)
	_ = cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(allowed, cobra.ShellCompDirectiveNoFileComp))
	return c
}

// outputFlag adds the -o table|json flag every read verb has.
func outputFlag(cmd *cobra.Command) *choice {
	return choiceFlag(cmd, "output", "o", "output format: table or json", "table", "table", "json")
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// humanDuration renders d with its two largest units: "4d23h", "2h5m", "3m20s", "45s".
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	const day = 24 * time.Hour
	two := func(big, small int64, bu, su string) string {
		if small == 0 {
			return fmt.Sprintf("%d%s", big, bu)
		}
		return fmt.Sprintf("%d%s%d%s", big, bu, small, su)
	}
	switch {
	case d >= day:
		return two(int64(d/day), int64(d%day/time.Hour), "d", "h")
	case d >= time.Hour:
		return two(int64(d/time.Hour), int64(d%time.Hour/time.Minute), "h", "m")
	case d >= time.Minute:
		return two(int64(d/time.Minute), int64(d%time.Minute/time.Second), "m", "s")
	}
	return fmt.Sprintf("%ds", int64(d/time.Second))
}

// relative renders t against now: "in 2h", "3m ago", "now"; "-" for the zero time.
func relative(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now)
	switch {
	case d >= time.Second:
		return "in " + humanDuration(d)
	case d <= -time.Second:
		return humanDuration(d) + " ago"
	}
	return "now"
}

// portsText renders a port list compactly, ranges joined: "1,11,32770-32774".
func portsText(ports []uint16) string {
	var b strings.Builder
	for i := 0; i < len(ports); {
		j := i
		for j+1 < len(ports) && ports[j+1] == ports[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j > i {
			fmt.Fprintf(&b, "%d-%d", ports[i], ports[j])
		} else {
			fmt.Fprintf(&b, "%d", ports[i])
		}
		i = j + 1
	}
	return b.String()
}

// printable returns s with what a terminal would not show as text escaped: control characters
// (a newline would forge a table row, ESC starts an escape sequence), bidirectional overrides
// (they reorder the text around them) and bytes that are not UTF-8, written as Go escapes
// (\n, \x1b, \u202e, \xff). Every string the daemon sends goes through it on its way to a
// table: an old store may hold reasons from before the daemon refused such text.
func printable(s string) string {
	clean := true
	for i, r := range s {
		if unprintable(s[i:], r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case unprintable(s[i:], r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// unprintable tells whether r, the rune at the start of rest, is one printable escapes.
func unprintable(rest string, r rune) bool {
	if r < utf8.RuneSelf {
		return r < 0x20 || r == 0x7f
	}
	return (r == utf8.RuneError && !strings.HasPrefix(rest, "\uFFFD")) || unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shortPrefix writes a single-address prefix as the bare address ("198.18.0.7/32" →
// "198.18.0.7"); anything else is returned as is.
func shortPrefix(s string) string {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.IsSingleIP() {
		return s
	}
	return p.Addr().String()
}

// timeText renders t in loc for tables: "2026-11-30 09:30:00 UTC".
func timeText(t time.Time, loc *time.Location) string {
	if t.IsZero() {
		return "-"
	}
	return t.In(loc).Format("2006-01-02 15:04:05 MST")
}

// blockedUntil describes an entry's expiry for humans:
// "until 2026-11-30 09:30:00 UTC (in 5d), offence 2".
func blockedUntil(e api.Entry, now time.Time, loc *time.Location) string {
	s := "permanently"
	if !e.Permanent {
		s = fmt.Sprintf("until %s (%s)", timeText(e.Expires, loc), relative(now, e.Expires))
	}
	if e.Offences > 1 {
		s += fmt.Sprintf(", offence %d", e.Offences)
	}
	return s
}

// expiresText is an entry's expiry relative to now: "in 4d23h", "never".
func expiresText(e api.Entry, now time.Time) string {
	if e.Permanent {
		return "never"
	}
	return relative(now, e.Expires)
}
