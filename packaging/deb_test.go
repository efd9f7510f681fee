package packaging

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/snare-dev/snare/internal/testutil"
)

// buildDeb runs `make deb` into a temporary directory and returns the package's path.
func buildDeb(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds snared, snarectl and nfpm: not in -short")
	}
	for _, tool := range []string{"make", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			testutil.Prerequisite(t, fmt.Sprintf("%s is not installed; the Debian package was not built", tool))
		}
	}
	out := t.TempDir()
	cmd := exec.Command("make", "-C", "..", "deb", "DEB_OUT="+out, "DEB_VERSION=0.0.1~test")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb produced %v, want one package", debs)
	}
	return debs[0]
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDebPackage builds the package and checks its contents and control data, then installs,
// removes and purges it with the real dpkg into a scratch root (dpkg --root): the host's own
// package database and files are not touched, and the maintainer scripts see DPKG_ROOT and
// leave the host's systemd and kernel alone.
func TestDebPackage(t *testing.T) {
	deb := buildDeb(t)

	contents := run(t, "dpkg-deb", "-c", deb)
	for _, want := range []string{
		"./usr/sbin/snared", "./usr/bin/snarectl", "./usr/lib/systemd/system/snared.service",
		"./etc/snare/snare.yaml", "./etc/snare/conf.d/", "./usr/share/man/man1/snarectl.1.gz",
		"./usr/share/bash-completion/completions/snarectl", "./usr/share/zsh/vendor-completions/_snarectl",
		"./usr/share/fish/vendor_completions.d/snarectl.fish", "./usr/share/doc/snare/operations.md",
	} {
		if !containsPath(contents, want) {
			t.Errorf("package lacks %s; contents:\n%s", want, contents)
		}
	}
	if f := run(t, "dpkg-deb", "-f", deb, "Package", "Version", "Depends"); !strings.Contains(f, "Package: snare") ||
		!strings.Contains(f, "Version: 0.0.1~test") || !strings.Contains(f, "Depends: procps") {
		t.Errorf("control fields:\n%s", f)
	}
	ctrl := t.TempDir()
	run(t, "dpkg-deb", "-e", deb, ctrl)
	conffiles, err := os.ReadFile(filepath.Join(ctrl, "conffiles"))
	if err != nil || strings.TrimSpace(string(conffiles)) != "/etc/snare/snare.yaml" {
		t.Errorf("conffiles = %q (%v), want /etc/snare/snare.yaml", conffiles, err)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		if fi, err := os.Stat(filepath.Join(ctrl, s)); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("maintainer script %s missing or not executable (%v)", s, err)
		}
	}

	testutil.RequireRoot(t) // dpkg --root still wants root to set owners
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available"} {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// chrootless: the scratch root has no shell; the scripts honour DPKG_ROOT instead.
	dpkg := func(args ...string) string {
		t.Helper()
		return run(t, "dpkg", append([]string{"--root=" + root, "--log=/dev/null", "--force-script-chrootless", "--force-depends"}, args...)...)
	}
	exists := func(p string) bool { _, err := os.Lstat(filepath.Join(root, p)); return err == nil }

	dpkg("-i", deb)
	for _, p := range []string{"usr/sbin/snared", "usr/bin/snarectl", "usr/lib/systemd/system/snared.service", "etc/snare/snare.yaml", "etc/snare/conf.d"} {
		if !exists(p) {
			t.Errorf("after install: %s missing", p)
		}
	}
	if out := run(t, filepath.Join(root, "usr/sbin/snared"), "--version"); !strings.HasPrefix(out, "snared ") {
		t.Errorf("installed snared --version: %q", out)
	}
	// The installed config is the example, and snared accepts it.
	if out := run(t, filepath.Join(root, "usr/sbin/snared"), "--check-config", "--config", filepath.Join(root, "etc/snare/snare.yaml")); !strings.Contains(out, "ttl: 5d") {
		t.Errorf("snared --check-config on the installed config:\n%s", out)
	}
	// An operator's edit of the conffile survives a reinstall (noreplace).
	conf := filepath.Join(root, "etc/snare/snare.yaml")
	edited := []byte("block:\n  ttl: 12h\n")
	if err := os.WriteFile(conf, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	dpkg("--force-confold", "-i", deb)
	if b, _ := os.ReadFile(conf); string(b) != string(edited) {
		t.Errorf("reinstall replaced the edited config: %q", b)
	}

	if err := os.MkdirAll(filepath.Join(root, "var/lib/snare"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "var/lib/snare/snare.db"), []byte("store"), 0o600); err != nil {
		t.Fatal(err)
	}
	dpkg("-r", "snare")
	for _, p := range []string{"usr/sbin/snared", "usr/bin/snarectl", "usr/lib/systemd/system/snared.service", "usr/share/man/man1/snarectl.1.gz"} {
		if exists(p) {
			t.Errorf("after remove: %s still there", p)
		}
	}
	if !exists("etc/snare/snare.yaml") || !exists("var/lib/snare/snare.db") {
		t.Error("remove (not purge) deleted the config or the store")
	}
	dpkg("-P", "snare")
	for _, p := range []string{"etc/snare", "var/lib/snare"} {
		if exists(p) {
			t.Errorf("after purge: %s still there", p)
		}
	}
	if out, _ := exec.Command("dpkg", "--root="+root, "-s", "snare").CombinedOutput(); !strings.Contains(string(out), "not installed") {
		t.Errorf("dpkg -s after purge: %s", out)
	}
}

func containsPath(listing, path string) bool {
	for _, line := range strings.Split(listing, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[len(f)-1] == path {
			return true
		}
	}
	return false
}

// TestMaintainerScripts runs the scripts as dpkg would on a systemd host, in a private mount
// namespace where /run/systemd/system exists and systemctl and /usr/sbin/snared are fakes that
// record their arguments: what the scripts do to a real host, without doing it.
func TestMaintainerScripts(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		testutil.Prerequisite(t, "unshare (util-linux) is not installed; the maintainer scripts were not run")
	}
	scripts, err := filepath.Abs("scripts")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, script string
		args         []string
		uninstallRC  int
		wantRC       int
		want         []string
	}{
		{"fresh install", "postinst", []string{"configure", ""}, 0, 0,
			[]string{"systemctl daemon-reload", "systemctl is-enabled snared.service", "systemctl enable snared.service", "systemctl start snared.service"}},
		{"fresh install, masked", "postinst", []string{"configure", ""}, 0, 0,
			[]string{"systemctl daemon-reload", "systemctl is-enabled snared.service"}},
		{"upgrade", "postinst", []string{"configure", "0.0.1"}, 0, 0,
			[]string{"systemctl daemon-reload", "systemctl try-restart snared.service"}},
		{"remove", "prerm", []string{"remove"}, 0, 0,
			[]string{"systemctl disable --now snared.service", "snared uninstall"}},
		{"remove with a config", "prerm", []string{"remove"}, 0, 0,
			[]string{"systemctl disable --now snared.service", "snared uninstall --config /etc/snare/snare.yaml"}},
		{"remove, uninstall fails", "prerm", []string{"remove"}, 1, 1,
			[]string{"systemctl disable --now snared.service", "snared uninstall"}},
		{"upgrade keeps it running", "prerm", []string{"upgrade", "0.0.2"}, 0, 0, nil},
		{"purge", "postrm", []string{"purge"}, 0, 0, []string{"systemctl daemon-reload"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			log := filepath.Join(dir, "calls")
			fakeBin := filepath.Join(dir, "bin")
			if err := os.MkdirAll(fakeBin, 0o755); err != nil {
				t.Fatal(err)
			}
			fake := func(name, body string) {
				if err := os.WriteFile(filepath.Join(fakeBin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			masked := map[bool]string{true: "masked", false: "disabled"}[strings.Contains(tc.name, "masked")]
			fake("systemctl", `echo "systemctl $*" >>`+log+`; if [ "$1" = is-enabled ]; then echo `+masked+`; fi`)
			fake("snared", `echo "snared $*" >>`+log+`; exit `+string(rune('0'+tc.uninstallRC)))
			// In the namespace: a tmpfs on /run with /run/systemd/system (a "systemd host"), the
			// fake snared bound over /usr/sbin/snared, a /var/lib holding a fake store and an /etc
			// holding the config only where the case says so.
			setup := strings.Join([]string{
				"set -e",
				"mount -t tmpfs none /run", "mkdir -p /run/systemd/system",
				// a tmpfs first, so that nothing is created in the host's /usr/sbin
				"mount -t tmpfs none /usr/sbin",
				"touch /usr/sbin/snared", "mount --bind " + fakeBin + "/snared /usr/sbin/snared",
				"mount -t tmpfs none /var/lib", "mkdir -p /var/lib/snare", "touch /var/lib/snare/snare.db",
				// last, since mount may read it: an /etc with or without /etc/snare/snare.yaml
				"mount -t tmpfs none /etc", "mkdir /etc/snare",
				map[bool]string{true: "touch /etc/snare/snare.yaml", false: ":"}[strings.Contains(tc.name, "config")],
				"set +e",
				"PATH=" + fakeBin + ":$PATH DPKG_ROOT= sh " + filepath.Join(scripts, tc.script) + ` "$@"`,
				"rc=$?",
				"[ -e /var/lib/snare ] && echo store-kept >>" + log + " || echo store-gone >>" + log,
				"exit $rc",
			}, "\n")
			cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", setup, "sh"}, tc.args...)...)
			out, err := cmd.CombinedOutput()
			rc := 0
			if ee, ok := err.(*exec.ExitError); ok {
				rc = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if rc != tc.wantRC {
				t.Fatalf("%s %v: exit %d, want %d\n%s", tc.script, tc.args, rc, tc.wantRC, out)
			}
			b, _ := os.ReadFile(log)
			calls := strings.Split(strings.TrimSpace(string(b)), "\n")
			store := calls[len(calls)-1]
			calls = calls[:len(calls)-1]
			if !slices.Equal(calls, tc.want) && !(len(calls) == 0 && len(tc.want) == 0) {
				t.Errorf("%s %v called %q, want %q\noutput: %s", tc.script, tc.args, calls, tc.want, out)
			}
			wantStore := "store-kept"
			if tc.name == "purge" {
				wantStore = "store-gone"
			}
			if store != wantStore {
				t.Errorf("%s %v: %s, want %s", tc.script, tc.args, store, wantStore)
			}
		})
	}
	// With DPKG_ROOT set (installing into another root) the scripts touch nothing of this host.
	for _, s := range []string{"postinst", "prerm"} {
		dir := t.TempDir()
		log := filepath.Join(dir, "calls")
		if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte("#!/bin/sh\necho called >>"+log+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", filepath.Join(scripts, s), "configure")
		if s == "prerm" {
			cmd.Args[len(cmd.Args)-1] = "remove"
		}
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "DPKG_ROOT="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s with DPKG_ROOT: %v\n%s", s, err, out)
		}
		if _, err := os.Stat(log); err == nil {
			t.Errorf("%s with DPKG_ROOT called systemctl", s)
		}
	}
}

// TestMakeInstall stages `make install` and `make uninstall` into a DESTDIR: the files land where
// the unit expects them (with PREFIX substituted into the unit), an existing config is kept, and
// uninstall removes what install put there but the config. Nothing on the host is touched:
// with DESTDIR set, neither target calls systemctl or snared uninstall.
func TestMakeInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds snared and snarectl: not in -short")
	}
	if _, err := exec.LookPath("make"); err != nil {
		testutil.Prerequisite(t, "make is not installed; make install was not tested")
	}
	dest := t.TempDir()
	mk := func(args ...string) string {
		t.Helper()
		return run(t, "make", append([]string{"-C", "..", "DESTDIR=" + dest, "PREFIX=/opt/snare"}, args...)...)
	}
	mk("install")
	exists := func(p string) bool { _, err := os.Stat(filepath.Join(dest, p)); return err == nil }
	for _, p := range []string{"opt/snare/sbin/snared", "opt/snare/bin/snarectl", "opt/snare/lib/systemd/system/snared.service",
		"etc/snare/snare.yaml", "etc/snare/conf.d", "opt/snare/share/man/man1/snarectl.1"} {
		if !exists(p) {
			t.Errorf("after make install: %s missing", p)
		}
	}
	unit, err := os.ReadFile(filepath.Join(dest, "opt/snare/lib/systemd/system/snared.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/opt/snare/sbin/snared --config /etc/snare/snare.yaml\n") ||
		strings.Contains(string(unit), "/usr/sbin/snared") {
		t.Errorf("installed unit does not run the installed snared:\n%s", unit)
	}
	// A second install keeps the operator's config.
	conf := filepath.Join(dest, "etc/snare/snare.yaml")
	if err := os.WriteFile(conf, []byte("dry_run: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := mk("install"); !strings.Contains(out, "keeping existing") {
		t.Errorf("second install did not say it kept the config:\n%s", out)
	}
	if b, _ := os.ReadFile(conf); string(b) != "dry_run: true\n" {
		t.Errorf("second install replaced the config: %q", b)
	}
	mk("uninstall")
	for _, p := range []string{"opt/snare/sbin/snared", "opt/snare/bin/snarectl", "opt/snare/lib/systemd/system/snared.service", "opt/snare/share/man/man1/snarectl.1"} {
		if exists(p) {
			t.Errorf("after make uninstall: %s still there", p)
		}
	}
	if !exists("etc/snare/snare.yaml") {
		t.Error("make uninstall deleted the config")
	}
}
