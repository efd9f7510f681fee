package packaging

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/internal/testutil"
)

// nsInit runs as PID 1 of fresh pid, mount, network, UTS, IPC and cgroup namespaces and becomes
// a private systemd there. Everything it changes is private to those namespaces: a cgroup2
// mount rooted at the test's own cgroup, a new bpffs instance, overlays on /etc, /usr/sbin and
// /var/lib (their writes land in the test's temporary directory), a tmpfs on /run and /tmp, and
// a veth pair in the new network namespace. systemd sees only the units of /run/snare-units.
const nsInit = `#!/bin/sh
set -e
W=$1
mount -t cgroup2 none /sys/fs/cgroup
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
for d in etc usr/sbin var/lib; do
	n=$(echo $d | tr / _)
	mkdir -p $W/$n-up $W/$n-work
	mount -t overlay overlay -o lowerdir=/$d,upperdir=$W/$n-up,workdir=$W/$n-work /$d
done
mount -t tmpfs none /run
cp $W/snared $W/snarectl /usr/sbin/
mkdir -p /etc/snare /run/snare-units/snared.service.d
printf 'interfaces: [vt0]\n' > /etc/snare/snare.yaml
cp $W/snared.service /run/snare-units/snared.service
for t in sysinit basic shutdown network-pre multi-user local-fs snare-test; do
	printf '[Unit]\nDescription=stub %s\n' $t > /run/snare-units/$t.target
done
# The one change to the shipped unit: no journald runs here, so its output goes to a file.
printf '[Service]\nStandardOutput=append:/run/snared.log\nStandardError=append:/run/snared.log\n' \
	> /run/snare-units/snared.service.d/log.conf
ip link set lo up
ip link add vt0 type veth peer name vt1
ip link set vt0 up
ip link set vt1 up
mount -t tmpfs none /tmp
export SYSTEMD_UNIT_PATH=/run/snare-units container=snare-test
exec /lib/systemd/systemd --system --unit=snare-test.target --log-target=console --show-status=no
`

// cgroup2Dir is the directory of this process's cgroup in the cgroup2 hierarchy.
func cgroup2Dir(t *testing.T) string {
	t.Helper()
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	var mount string
	sc := bufio.NewScanner(mi)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		for i, x := range f {
			if x == "-" && i+1 < len(f) && f[i+1] == "cgroup2" {
				mount = f[4]
			}
		}
	}
	if mount == "" {
		testutil.Prerequisite(t, "no cgroup2 mount; the unit was not started under systemd")
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(mount, p)
		}
	}
	testutil.Prerequisite(t, "this process has no cgroup2 path; the unit was not started under systemd")
	return ""
}

// TestUnitUnderSystemd starts the shipped unit under a real systemd: a private one, PID 1 of its
// own namespaces, so nothing on the host is started, attached or mounted. snared must become
// active (READY after attach and restore), attach XDP natively to the namespace's veth with
// exactly the unit's capabilities, answer snarectl, survive a reload, leave enforcement in place
// when stopped, and find its blocks again when started.
func TestUnitUnderSystemd(t *testing.T) {
	testutil.RequireRoot(t)
	if testing.Short() {
		t.Skip("builds snared and boots a private systemd: not in -short")
	}
	for _, tool := range []string{"/lib/systemd/systemd", "unshare", "nsenter", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			testutil.Prerequisite(t, fmt.Sprintf("%s missing (Debian packages systemd, util-linux, iproute2); the unit was not started under systemd", tool))
		}
	}
	if fs, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(fs), "overlay") {
		testutil.Prerequisite(t, "no overlayfs; the unit was not started under systemd")
	}
	work := t.TempDir()
	for _, bin := range []string{"snared", "snarectl"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(work, bin), "../cmd/"+bin)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", bin, err, out)
		}
	}
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"snared.service": unit, "init.sh": []byte(nsInit)} {
		if err := os.WriteFile(filepath.Join(work, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// A cgroup of our own below ours: the private systemd's cgroup namespace is rooted there, so
	// the cgroups it creates are ours to remove.
	sfx := make([]byte, 4)
	_, _ = rand.Read(sfx)
	cg := filepath.Join(cgroup2Dir(t), "snare-systemd-test-"+hex.EncodeToString(sfx))
	if err := os.Mkdir(cg, 0o755); err != nil {
		testutil.Prerequisite(t, fmt.Sprintf("cannot create a cgroup for the private systemd (%v); the unit was not started under systemd", err))
	}
	console := filepath.Join(work, "systemd-console.log")
	logf, err := os.Create(console)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	boot := exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec unshare --pid --fork --mount --net --uts --ipc --cgroup --propagation private --mount-proc sh "$2/init.sh" "$2"`,
		"sh", cg, work)
	boot.Stdout, boot.Stderr = logf, logf
	if err := boot.Start(); err != nil {
		t.Fatal(err)
	}
	var init int // host PID of the private systemd
	t.Cleanup(func() {
		// Killing PID 1 of a pid namespace kills everything in it; the mount and network
		// namespaces (veths, bpffs, XDP program) go with their last process.
		if init > 0 {
			_ = syscallKill(init)
		}
		_ = boot.Process.Kill()
		_ = boot.Wait()
		removeCgroup(t, cg)
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("private systemd console:\n%s", b)
		}
	})
	for i := 0; i < 100 && init == 0; i++ {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", boot.Process.Pid, boot.Process.Pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			pid, _ := strconv.Atoi(f[0])
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "systemd" {
				init = pid
			}
		}
		if init == 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if init == 0 {
		t.Fatal("the private systemd did not start within 10s")
	}

	in := func(timeout time.Duration, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(init), "-m", "-p", "-n", "-u", "-i"}, args...)...)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := in(90*time.Second, args...)
		if err != nil {
			log, _ := in(5*time.Second, "cat", "/run/snared.log")
			t.Fatalf("%s: %v\n%s\nsnared log:\n%s", strings.Join(args, " "), err, out, log)
		}
		return out
	}
	var state string
	for i := 0; i < 100; i++ {
		state, _ = in(5*time.Second, "systemctl", "is-system-running")
		if state == "running" || state == "degraded" {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if state != "running" && state != "degraded" {
		t.Fatalf("private systemd state %q", state)
	}

	// start returns once snared said READY=1 (Type=notify).
	must("systemctl", "start", "snared.service")
	if s, _ := in(10*time.Second, "systemctl", "is-active", "snared.service"); s != "active" {
		t.Fatalf("snared.service is %q after start", s)
	}
	if link := must("ip", "link", "show", "vt0"); !strings.Contains(link, "prog/xdp") || !strings.Contains(link, "snare_xdp") {
		t.Errorf("no snare XDP program on vt0 after start:\n%s", link)
	}
	var st struct {
		Backend    string `json:"backend"`
		Interfaces []struct{ Name, Mode string }
	}
	if err := json.Unmarshal([]byte(must("snarectl", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Backend != "xdp" || len(st.Interfaces) != 1 || st.Interfaces[0].Name != "vt0" || st.Interfaces[0].Mode != "native" {
		t.Errorf("status under systemd: %+v, want xdp on vt0 (native)", st)
	}
	// Exactly the unit's capabilities, nothing more (CAP_SYS_ADMIN in particular).
	pid := must("systemctl", "show", "-p", "MainPID", "--value", "snared.service")
	status := must("cat", "/proc/"+pid+"/status")
	// BPF, PERFMON, SYS_RESOURCE, NET_RAW, NET_ADMIN, as far as this test's own bounding set
	// allows (a container may lack some, e.g. CAP_SYS_RESOURCE).
	want := uint64(1<<39|1<<38|1<<24|1<<13|1<<12) & ownCapBnd(t)
	for _, line := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && (k == "CapEff" || k == "CapBnd") {
			got, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil || got != want {
				t.Errorf("%s = %s, want %x", k, strings.TrimSpace(v), want)
			}
		}
		if k, v, ok := strings.Cut(line, ":"); ok && k == "NoNewPrivs" && strings.TrimSpace(v) != "1" {
			t.Errorf("NoNewPrivs = %s", strings.TrimSpace(v))
		}
	}

	must("snarectl", "block", "198.18.5.5", "--ttl", "1h")
	must("systemctl", "reload", "snared.service")
	// systemctl reload returns once ExecReload has sent SIGHUP; snared says RELOADING=1, reloads
	// and says READY=1 on its own time, so the unit is "reloading" for a moment.
	var unitState, log string
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		unitState, _ = in(5*time.Second, "systemctl", "is-active", "snared.service")
		log = must("cat", "/run/snared.log")
		if unitState == "active" && strings.Contains(log, "configuration reloaded") {
			break
		}
	}
	if unitState != "active" {
		t.Errorf("snared.service is %q 10 s after reload", unitState)
	}
	if !strings.Contains(log, "configuration reloaded") {
		t.Errorf("reload not in the log:\n%s", log)
	}

	// Stopped: the pinned program keeps enforcing.
	must("systemctl", "stop", "snared.service")
	if s, _ := in(10*time.Second, "systemctl", "is-active", "snared.service"); s != "inactive" {
		t.Errorf("snared.service is %q after stop", s)
	}
	if link := must("ip", "link", "show", "vt0"); !strings.Contains(link, "snare_xdp") {
		t.Errorf("stopping the service detached XDP:\n%s", link)
	}
	must("systemctl", "start", "snared.service")
	if list := must("snarectl", "list"); !strings.Contains(list, "198.18.5.5") {
		t.Errorf("block lost across a service restart:\n%s", list)
	}
	must("systemctl", "stop", "snared.service")
}

func syscallKill(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

// removeCgroup removes the test's cgroup and everything the private systemd created in it,
// waiting (bounded) for the killed processes to leave.
func removeCgroup(t *testing.T, dir string) {
	for i := 0; i < 50; i++ {
		var dirs []string
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for j := len(dirs) - 1; j >= 0; j-- {
			_ = os.Remove(dirs[j])
		}
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("could not remove cgroup %s", dir)
}

// ownCapBnd is this process's capability bounding set.
func ownCapBnd(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no CapBnd in /proc/self/status")
	return 0
}
