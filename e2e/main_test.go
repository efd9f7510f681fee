// Package e2e runs snare end to end: the real snared and snarectl binaries, the real kernel
// (XDP or ipset+iptables), real traffic and real scanners (nmap, hping3), all inside a lab of
// network namespaces built by internal/testutil. Nothing here touches the machine's own network:
// addresses come from 198.18.0.0/15 and 2001:db8::/32 only, every name carries a random suffix,
// and every namespace, process and pin is removed when a test ends, failed or not.
//
// Every test runs once per enforcement back-end (subtests xdp and iptables) unless its name says
// otherwise. What is covered:
//
//   - core (core_test.go, core2_test.go, importexport_test.go): block/unblock of addresses, IPv6
//     /64s, CIDRs and IPv4-mapped IPv6; hit counters; exact expiry with no sweep (XDP within 100 ms); stop (still
//     dropped), restart (list intact), kill -9 (nothing lost), no connection through across
//     restarts; import/export of blocked.list ("IP YYYYMMDD") and plain lists; the allowlist
//     winning over blocks; dry run; repeat offences and escalation; events -f; status per
//     interface.
//   - bad input (badinput_test.go): every refusal names the problem, exits non-zero and changes
//     neither the block list nor the allowlist nor enforcement; broken configs; a missing
//     socket; a second daemon on the same pins or store.
//   - traps (trap_test.go, trap2_test.go): nmap -sT -sS -sF -sN -sX -sU and -6 -sS; a spoofed
//     hping3 flood from random 198.19.x.y sources; spoofed scans from the gateway and resolver;
//     threshold; log mode per protocol; advanced mode following listeners; trap blocks adopted
//     after the daemon was down or killed (XDP).
//   - lifecycle (lifecycle_test.go): a failed reload keeps the old config and enforcement;
//     SIGHUP reopens a rotated event log; READY=1 only once a non-empty store is restored into
//     the kernel; trap blocks allowlisted since are lifted at start; the resolvers of
//     /etc/resolv.conf are allowlisted end to end.
//   - back-ends and config (backend_test.go, config_test.go): uninstall (store kept, reboot-like
//     restore), automatic fallback to iptables, a flushed firewall repaired, --xdp-mode generic,
//     SNARE_* environment.
//   - the fleet (fleet_test.go, XDP): three snared processes in their own namespaces sharing
//     through the JetStream server embedded in one of them, an attacker reaching all three: a
//     block, a trap hit, an unblock, a short TTL and the allowlist seen in real packets on every
//     host; a host down catching up; the engine down (local blocks at once, the outbox drained on
//     its return).
//
// Run as root: go test ./e2e -run TestBlock (or `make test`). Without root, or without a tool the
// suite needs, tests skip and say why; with CI set they fail instead. -short skips the suite.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snare-dev/snare/internal/testutil"
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

// prerequisite skips the test with msg, or fails it when CI is set (testutil.Prerequisite).
func prerequisite(tb testing.TB, msg string) {
	tb.Helper()
	testutil.Prerequisite(tb, msg)
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
