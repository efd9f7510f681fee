package input

import (
	"strings"
	"testing"
	"time"
)

func TestParseTTL(t *testing.T) {
	good := map[string]time.Duration{
		"5d":        5 * 24 * time.Hour,
		"12h":       12 * time.Hour,
		"90m":       90 * time.Minute,
		"1d12h":     36 * time.Hour,
		"1.5d":      36 * time.Hour,
		"30s":       30 * time.Second,
		"permanent": 0,
		"Permanent": 0,
		" 2h ":      2 * time.Hour,
	}
	for in, want := range good {
		got, err := ParseTTL(in)
		if err != nil || got != want {
			t.Errorf("ParseTTL(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "0s", "0d", "-5d", "-1h", "5", "five days", "5dd", "d", "5y", "permanently", "999999999d", "1e3h"} {
		if d, err := ParseTTL(in); err == nil {
			t.Errorf("ParseTTL(%q) = %v, want an error", in, d)
		} else if !strings.Contains(err.Error(), "bad TTL") {
			t.Errorf("ParseTTL(%q) error %q does not say bad TTL", in, err)
		}
	}
	for d, want := range map[time.Duration]string{0: "permanent", 5 * 24 * time.Hour: "5d", 36 * time.Hour: "1d12h", 90 * time.Minute: "1h30m", 45 * time.Second: "45s"} {
		if got := FormatTTL(d); got != want {
			t.Errorf("FormatTTL(%v) = %q, want %q", d, got, want)
		}
	}
}
