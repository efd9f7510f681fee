package input

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// MaxDuration bounds durations and TTLs so deadlines stay far from overflow; longer is "permanent".
const MaxDuration = 100 * 365 * 24 * time.Hour

// ParseDuration parses a positive duration: Go syntax ("90m", "1h30m") plus days ("5d", "1.5d").
func ParseDuration(s string) (time.Duration, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("empty duration")
	}
	d, err := time.ParseDuration(expandDays(in))
	if err != nil {
		return 0, fmt.Errorf("invalid duration %s (use e.g. 90s, 90m, 12h, 5d)", QuoteInput(s))
	}
	switch {
	case d < 0:
		return 0, fmt.Errorf("invalid duration %s: negative", QuoteInput(s))
	case d == 0:
		return 0, fmt.Errorf("invalid duration %s: zero", QuoteInput(s))
	case d > MaxDuration:
		return 0, fmt.Errorf("invalid duration %s: longer than 100 years", QuoteInput(s))
	}
	return d, nil
}

// dayNumber matches "<number>d" inside a duration; Go's time.ParseDuration has no day unit.
var dayNumber = regexp.MustCompile(`(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)d`)

// expandDays rewrites each "<number>d" as hours for time.ParseDuration.
func expandDays(s string) string {
	return dayNumber.ReplaceAllStringFunc(s, func(m string) string {
		days, err := strconv.ParseFloat(m[:len(m)-1], 64)
		if err != nil {
			return m // leave it to ParseDuration to reject
		}
		return strconv.FormatFloat(days*24, 'f', -1, 64) + "h"
	})
}

// ParseTTL parses a block TTL: "permanent" (returned as 0) or a positive duration such as "5d",
// "12h", "90m". Negative, zero and malformed TTLs are errors.
func ParseTTL(s string) (time.Duration, error) {
	if strings.EqualFold(strings.TrimSpace(s), "permanent") {
		return 0, nil
	}
	d, err := ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad TTL %s: want a duration such as 5d, 12h, 90m, or permanent", QuoteInput(s))
	}
	return d, nil
}

// FormatTTL is the inverse of ParseTTL: 0 is "permanent".
func FormatTTL(d time.Duration) string {
	if d == 0 {
		return "permanent"
	}
	return FormatDuration(d)
}

// FormatDuration writes d compactly with days: "5d", "1d12h", "90m" → "1h30m", "45s".
func FormatDuration(d time.Duration) string {
	if d <= 0 || d%time.Second != 0 {
		return d.String()
	}
	var b strings.Builder
	for _, u := range []struct {
		unit time.Duration
		name string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if n := d / u.unit; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.name)
			d -= n * u.unit
		}
	}
	return b.String()
}
