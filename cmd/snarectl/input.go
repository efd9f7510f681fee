package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"
	"unsafe"

	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control/api"

	"github.com/snare-dev/snare/control"
)

// Client-side checks of user input. They catch what is wrong whatever the daemon's
// configuration (a malformed address, a prefix out of range, the whole address space, a bad
// TTL) so that a typo never reaches the daemon; whether a well-formed target may be blocked
// (allowlist, configured minimum prefix) stays the daemon's call.

// anyPrefix checks syntax and the whole-address-space rule only; the daemon applies the
// configured bounds (block.min_prefix_v4/v6, block.ipv6_prefix).
var anyPrefix = input.TargetRules{}

// checkBlockTargets validates block targets and names every bad one.
func checkBlockTargets(targets []string) error {
	return checkEach(targets, func(t string) error {
		_, err := input.ParseTarget(t, anyPrefix)
		return err
	})
}

// checkUnblockTargets validates unblock targets: syntax only, but /0 can never be blocked, so
// asking to unblock it is a mistake worth naming.
func checkUnblockTargets(targets []string) error {
	return checkEach(targets, func(t string) error {
		if p, err := netip.ParsePrefix(strings.TrimSpace(t)); err == nil && p.Bits() == 0 {
			return fmt.Errorf("%q is the whole address space, which is never blocked: nothing to unblock", t)
		}
		_, err := input.ParseAllowPrefix(t)
		return err
	})
}

// checkAllowTargets validates allowlist entries.
func checkAllowTargets(targets []string) error {
	return checkEach(targets, func(t string) error {
		_, err := input.ParseAllowPrefix(t)
		return err
	})
}

func checkEach(targets []string, check func(string) error) error {
	var msgs []string
	for _, t := range targets {
		if err := check(t); err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return inputf("bad target: %s", strings.Join(msgs, "; "))
}

// checkTTL validates a --ttl value with the daemon's own parser, and says what is wrong with it.
func checkTTL(s string) error {
	if _, err := input.ParseTTL(s); err == nil {
		return nil
	}
	why := "not a duration"
	_, derr := input.ParseDuration(s)
	switch t := strings.TrimSpace(s); {
	case t == "":
		why = "empty"
	case strings.HasPrefix(t, "-"):
		why = "negative"
	case derr != nil && strings.HasSuffix(derr.Error(), ": zero"):
		why = "zero"
	case derr != nil && strings.Contains(derr.Error(), "100 years"):
		why = "longer than 100 years (use permanent)"
	}
	return inputf("bad --ttl %q: %s; want a positive duration such as 5d, 12h, 90m or 1d12h, or permanent", s, why)
}

// checkBlockList reads a block list as the daemon will (blocked.list "IP YYYYMMDD" lines or plain
// IP/CIDR lines, '#' and ';' comments, blank lines) and returns its bad lines, numbered from 1.
// It runs on every import while the file is sent, so it avoids allocating per line (a
// million-line list takes under a tenth of a second; see BenchmarkCheckBlockList).
func checkBlockList(r io.Reader, now time.Time) ([]api.LineError, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var bad []api.LineError
	dates := map[string]string{} // date field → problem ("" if fine); lists hold few distinct dates
	today := now.Format("20060102")
	n := 0
	for sc.Scan() {
		n++
		raw := sc.Bytes()
		text := raw
		for _, c := range []byte{'#', ';'} { // two byte scans cost less than one IndexAny
			if i := bytes.IndexByte(text, c); i >= 0 {
				text = text[:i]
			}
		}
		var fields [3][]byte
		nf := 0
		for i := 0; i < len(text); {
			if isSpace(text[i]) {
				i++
				continue
			}
			j := i
			for j < len(text) && !isSpace(text[j]) {
				j++
			}
			if nf < len(fields) {
				fields[nf] = text[i:j]
			}
			nf++
			i = j
		}
		if nf == 0 {
			continue
		}
		fail := func(msg string) {
			bad = append(bad, api.LineError{Line: n, Text: string(raw[:min(len(raw), control.MaxLineErrorText)]), Error: msg})
		}
		if nf > 2 {
			fail(fmt.Sprintf("%d fields: want \"ADDRESS\" or \"ADDRESS YYYYMMDD\"", nf))
			continue
		}
		// The address is parsed in place, without a string of its own per line: nothing
		// keeps it past this line (the message is formatted here, before the next Scan).
		if _, err := input.ParseTarget(unsafe.String(&fields[0][0], len(fields[0])), anyPrefix); err != nil {
			fail(err.Error())
			continue
		}
		if nf == 2 {
			problem, seen := dates[string(fields[1])]
			if !seen {
				problem = checkDate(string(fields[1]), today, now.Location())
				dates[string(fields[1])] = problem
			}
			if problem != "" {
				fail(problem)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read line %d: %w", n+1, err)
	}
	return bad, nil
}

func isSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\r' || b == '\v' || b == '\f' }

// checkDate checks a blocked.list date: YYYYMMDD, a real day, not after today.
func checkDate(s, today string, loc *time.Location) string {
	if _, err := time.ParseInLocation("20060102", s, loc); err != nil || len(s) != 8 {
		return fmt.Sprintf("%s is not a date in YYYYMMDD form", input.QuoteInput(s))
	}
	if s > today { // YYYYMMDD strings sort as the days they name
		return fmt.Sprintf("date %s is in the future", s)
	}
	return ""
}

// maxShownLineErrors bounds how many bad lines are printed; the count stays exact.
const maxShownLineErrors = 20

// printLineErrors writes bad lines compiler-style: "blocked.list:4: <problem> (line text)".
func printLineErrors(w io.Writer, name string, errs []api.LineError) {
	for i, e := range errs {
		if i == maxShownLineErrors {
			fmt.Fprintf(w, "%s: ... and %d more bad lines\n", name, len(errs)-i)
			return
		}
		fmt.Fprintf(w, "%s:%d: %s (line: %q)\n", printable(name), e.Line, printable(e.Error), strings.TrimSpace(e.Text))
	}
}
