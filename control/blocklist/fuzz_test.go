package blocklist

import (
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/internal/testutil"
)

func FuzzParseBlockList(f *testing.F) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.Local)
	f.Fuzz(func(t *testing.T, content string) {
		good, errs, bad := parseAll(content, defaultRules, now)
		lines := strings.Split(content, "\n")
		if strings.HasSuffix(content, "\n") {
			lines = lines[:len(lines)-1]
		}
		// Every line with something before its comment is good or bad, once.
		want := 0
		for _, l := range lines {
			if i := strings.IndexAny(l, "#;"); i >= 0 {
				l = l[:i]
			}
			if strings.Trim(l, " \t\r\v\f") != "" {
				want++
			}
		}
		if len(good)+bad != want || len(errs) != min(bad, MaxErrors) {
			t.Fatalf("%d good + %d bad lines (%d errors), want %d lines with content", len(good), bad, len(errs), want)
		}
		last := 0
		for _, g := range good {
			if g.Number <= last || g.Number > len(lines) {
				t.Fatalf("good line %d out of order or range (%d lines)", g.Number, len(lines))
			}
			last = g.Number
			testutil.CheckPrefix(t, g.Target, g.Prefix)
			if g.Single != g.Addr.IsValid() || !g.Date.IsZero() && g.Date.After(now) {
				t.Fatalf("line %d: %+v", g.Number, g)
			}
			if p, err := input.ParseTarget(g.Target, defaultRules); err != nil || p != g.Prefix {
				t.Fatalf("line %d: %q is %v, but ParseTarget says %v, %v", g.Number, g.Target, g.Prefix, p, err)
			}
		}
		for _, e := range errs {
			if e.Line < 1 || e.Line > len(lines) || e.Error == "" || len(e.Text) > MaxErrorText {
				t.Fatalf("bad line error %+v", e)
			}
		}
	})
}
