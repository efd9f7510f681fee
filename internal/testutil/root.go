// Package testutil holds the helpers snare's privileged tests share: a root check that never lets
// CI skip silently, a scratch directory on bpffs, a netlab lab torn down when the test ends, and
// ways to damage a store file. It imports package testing: only tests may import it (the bench
// uses netlab directly).
package testutil

import (
	"os"
	"testing"
)

// RequireRoot skips the test when it does not run as root, saying why, and fails it instead when
// the environment variable CI is set: a CI run must never pass by skipping the privileged tests.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const msg = "needs root: network namespaces, BPF and XDP (run the tests with sudo)"
	if os.Getenv("CI") != "" {
		tb.Fatal(msg + "; CI is set, so this is a failure, not a skip")
	}
	tb.Skip(msg)
}

// Prerequisite skips the test with msg (say what is missing and what was not tested), or fails it
// when CI is set: a CI run must never pass by skipping what it was meant to test.
func Prerequisite(tb testing.TB, msg string) {
	tb.Helper()
	if os.Getenv("CI") != "" {
		tb.Fatal(msg + " (CI is set: a missing prerequisite is a failure, not a skip)")
	}
	tb.Skip(msg)
}
