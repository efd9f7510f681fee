package main

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control"
)

// FuzzBlockListLine: snarectl's check of an import file and the daemon's parser
// (control.ParseBlockList) agree on every line, on whether it is bad and on what is wrong
// with it, wherever the daemon's configuration plays no part. Its seeds run with every
// `go test`; `make fuzz` explores beyond them.
func FuzzBlockListLine(f *testing.F) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.Local)
	f.Fuzz(func(t *testing.T, line string) {
		if strings.Contains(line, "\n") {
			return // one line; lists of them are FuzzParseBlockList's (control)
		}
		good, want, bad := control.ParseBlockList(line, input.TargetRules{}, now)
		got, err := checkBlockList(strings.NewReader(line), now)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: snarectl says %+v, the daemon's parser %+v", line, got, want)
		}
		if len(good)+bad > 1 {
			t.Fatalf("%q: %d good and %d bad lines in one line", line, len(good), bad)
		}
	})
}
