package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/blocklist"
	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control/api"
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

// checkBlockList reads a block list with the daemon's own parser and returns its first bad lines
// (numbered from 1) and how many there are. The whole-address-space rule applies; the daemon
// applies its configured bounds and the allowlist again.
func checkBlockList(r io.Reader, now time.Time) (errs []api.LineError, bad int, err error) {
	p := blocklist.NewParser(anyPrefix, now, 1)
	if _, err := blocklist.Read(r, 1, nil, func(text string, _ int) { p.Parse(text, func(blocklist.Line) {}) }); err != nil {
		return nil, 0, err
	}
	return p.Errors(), p.Bad(), nil
}

// maxShownLineErrors bounds how many bad lines are printed; the count stays exact.
const maxShownLineErrors = 20

// printLineErrors writes bad lines compiler-style: "blocked.list:4: <problem> (line text)", the
// first few of bad.
func printLineErrors(w io.Writer, name string, errs []api.LineError, bad int) {
	for i, e := range errs {
		if i == maxShownLineErrors {
			fmt.Fprintf(w, "%s: ... and %d more bad lines\n", name, bad-i)
			return
		}
		fmt.Fprintf(w, "%s:%d: %s (line: %q)\n", printable(name), e.Line, printable(e.Error), strings.TrimSpace(e.Text))
	}
}
