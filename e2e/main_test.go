// Package e2e runs snare end to end: the real snared and snarectl binaries, the real kernel
// (XDP or ipset+iptables), real traffic and real scanners (nmap, hping3), all inside a lab of
// network namespaces built by internal/testutil. Nothing here touches the machine's own network:
// addresses come from 198.18.0.0/15 and 2001:db8::/32 only, every name carries a random suffix,
// and every namespace, process and pin is removed when a test ends, failed or not.
//
// Run as root: go test ./e2e -run TestBlock (or `make test`). Without root, or without a tool the
// suite needs, tests skip and say why; with CI set they fail instead.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// binaries are built once per test run by TestMain.
type binaries struct {
	dir      string
	snared   string
	snarectl string
	err      map[string]error // per binary: why it could not be built
}

// bins is filled by TestMain before any test runs and only read afterwards.
var bins binaries

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		return m.Run() // every test skips itself; no need to build anything
	}
	dir, err := os.MkdirTemp("", "snare-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins = binaries{dir: dir, err: map[string]error{}}
	bins.snared, bins.err["snared"] = build(dir, "snared")
	bins.snarectl, bins.err["snarectl"] = build(dir, "snarectl")
	return m.Run()
}

// build compiles ./cmd/NAME of this module into dir.
func build(dir, name string) (string, error) {
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, "./cmd/"+name)
	cmd.Dir = ".." // the module root; go test runs in the package directory
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/%s: %w: %s", name, err, strings.TrimSpace(string(b)))
	}
	return out, nil
}

// prerequisite skips the test with msg, or fails it when CI is set: a CI run must never pass
// by skipping what it was meant to test.
func prerequisite(tb testing.TB, msg string) {
	tb.Helper()
	if os.Getenv("CI") != "" {
		tb.Fatal(msg + " (CI is set: a missing prerequisite is a failure, not a skip)")
	}
	tb.Skip(msg)
}

// requireBinaries checks that snared and snarectl were built.
func requireBinaries(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("end-to-end test (real binaries): skipped with -short")
	}
	for _, name := range []string{"snared", "snarectl"} {
		if err := bins.err[name]; err != nil {
			prerequisite(tb, fmt.Sprintf("needs %s: %v", name, err))
		}
	}
}

// requireTools checks that external programs the test drives are installed.
func requireTools(tb testing.TB, tools ...string) {
	tb.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			prerequisite(tb, fmt.Sprintf("needs %s on PATH (Debian package %s)", tool, tool))
		}
	}
}
