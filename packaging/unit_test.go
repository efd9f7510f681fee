package packaging

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/internal/testutil"
)

const unitFile = "snared.service"

// unitKeys parses a unit file into section.key → values (keys may repeat).
func unitKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not a key=value line: %q", path, line)
			}
			keys[section+"."+k] = append(keys[section+"."+k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestUnitContract checks the settings operators and the daemon rely on, so that an edit that
// drops one is caught even where systemd-analyze is missing.
func TestUnitContract(t *testing.T) {
	keys := unitKeys(t, unitFile)
	for key, want := range map[string]string{
		"Service.Type":                  "notify",
		"Service.ExecStart":             "/usr/sbin/snared --config /etc/snare/snare.yaml",
		"Service.ExecReload":            "/bin/kill -HUP $MAINPID",
		"Service.Restart":               "always",
		"Service.RuntimeDirectory":      "snare",
		"Service.StateDirectory":        "snare",
		"Service.NoNewPrivileges":       "yes",
		"Service.ProtectSystem":         "strict",
		"Service.ProtectHome":           "yes",
		"Service.PrivateTmp":            "yes",
		"Service.ReadWritePaths":        "/sys/fs/bpf /var/lib/snare /run/snare",
		"Service.CapabilityBoundingSet": "CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_RESOURCE CAP_NET_RAW",
		"Service.AmbientCapabilities":   "CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_RESOURCE CAP_NET_RAW",
		"Install.WantedBy":              "multi-user.target",
	} {
		if got := keys[key]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want exactly %q", key, got, want)
		}
	}
	if !slices.Contains(keys["Service.ExecStartPre"], "/usr/sbin/snared --config /etc/snare/snare.yaml --check-config") {
		t.Errorf("ExecStartPre = %q, want the config checked before start", keys["Service.ExecStartPre"])
	}
	for _, c := range strings.Fields(keys["Service.CapabilityBoundingSet"][0]) {
		if c == "CAP_SYS_ADMIN" {
			t.Error("CAP_SYS_ADMIN granted; the unit comments say why it is not needed")
		}
	}
}

// TestUnitWritePathsCoverDefaults: with ProtectSystem=strict, every place the default config
// writes to must be listed in ReadWritePaths, or the daemon fails with EROFS under systemd only.
func TestUnitWritePathsCoverDefaults(t *testing.T) {
	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rw := strings.Fields(unitKeys(t, unitFile)["Service.ReadWritePaths"][0])
	covered := func(p string) bool {
		for _, dir := range rw {
			if p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/") {
				return true
			}
		}
		return false
	}
	for _, p := range []string{cfg.StateDir, cfg.Socket, cfg.BPFFS, cfg.EventsPath(), cfg.DBPath()} {
		if !covered(p) {
			t.Errorf("default path %s is not under ReadWritePaths %v", p, rw)
		}
	}
}

// verifyRoot builds a root directory for `systemd-analyze verify --root`: the host's own units
// (for sysinit.target and friends), the commands the unit runs (a stub snared: the unit is
// checked, not the daemon), and the unit itself under name.
func verifyRoot(t *testing.T, unit []byte, name string) string {
	t.Helper()
	root := t.TempDir()
	var sysUnits string
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			sysUnits = d
			break
		}
	}
	if sysUnits == "" {
		testutil.Prerequisite(t, "no systemd unit directory on this machine (Debian package systemd); the unit was not verified")
	}
	for _, d := range []string{"usr/sbin", "bin", "etc/systemd/system", "usr/lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", sysUnits, filepath.Join(root, "usr/lib/systemd/system")).CombinedOutput(); err != nil {
		t.Fatalf("copy units: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/sbin/snared"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"kill", "sh"} {
		src, err := exec.LookPath(cmd)
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		src, err = filepath.EvalSymlinks(src)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cp", src, filepath.Join(root, "bin", cmd)).CombinedOutput(); err != nil {
			t.Fatalf("copy %s: %v\n%s", cmd, err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/systemd/system", name), unit, 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func systemdVerify(t *testing.T, unit []byte) (string, error) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testutil.Prerequisite(t, "systemd-analyze is not installed (Debian package systemd); the unit was not verified")
	}
	root := verifyRoot(t, unit, unitFile)
	out, err := exec.Command(sa, "verify", "--man=no", "--root="+root, unitFile).CombinedOutput()
	return string(out), err
}

// TestUnitSystemdVerify runs `systemd-analyze verify` on the shipped unit: it must pass without a
// single warning (unknown keys and bad values are only warnings to systemd, errors here).
func TestUnitSystemdVerify(t *testing.T) {
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	out, err := systemdVerify(t, unit)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", unitFile, err, out)
	}
}

// TestUnitSystemdVerifyCatchesMistakes shows the check above can fail: a misspelt key, a bad
// value and a missing command are all reported.
func TestUnitSystemdVerifyCatchesMistakes(t *testing.T) {
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{"ProtectHome=yes", "ProtectHomee=yes", "Unknown key"},
		{"Type=notify", "Type=notfy", "notfy"},
		{"ExecStart=/usr/sbin/snared ", "ExecStart=/usr/sbin/snared-missing ", "snared-missing"},
	} {
		bad := strings.Replace(string(unit), tc.from, tc.to, 1)
		if bad == string(unit) {
			t.Fatalf("%q not found in the unit", tc.from)
		}
		out, _ := systemdVerify(t, []byte(bad))
		if !strings.Contains(out, tc.want) {
			t.Errorf("%s → %s: systemd-analyze said %q, want a complaint naming %q", tc.from, tc.to, out, tc.want)
		}
	}
}
