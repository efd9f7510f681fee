package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/internal/netlab"

	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/loader"
)

// daemon is a snared started by the benchmark in one of a lab's namespaces, protecting one of
// its interfaces.
type daemon struct {
	lab      *netlab.Lab
	ns       string // the namespace it runs in
	capacity int    // block.capacity
	dir      string
	bin      string // directory with snared and snarectl
	pin      string
	iface    string
	proc     *netlab.Proc
	socket   string
	client   *api.Client
	started  time.Time
}

// buildDaemon builds snared and snarectl from this module into a temporary directory.
func buildDaemon() (string, error) {
	root, err := cmdOut(time.Minute, "go", "env", "GOMOD")
	if err != nil {
		return "", err
	}
	root = filepath.Dir(strings.TrimSpace(root))
	if _, err := os.Stat(filepath.Join(root, "cmd", "snared")); err != nil {
		return "", fmt.Errorf("snared not built: %w", err)
	}
	dir, err := os.MkdirTemp("", "snarebench-bin-")
	if err != nil {
		return "", err
	}
	for _, c := range []string{"snared", "snarectl"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "./cmd/"+c)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("build %s: %w: %s", c, err, out)
		}
	}
	return dir, nil
}

// daemonCapacity is the daemon's block.capacity: room for the million entries the section
// imports and the blocks it makes besides (at capacity, a block is refused).
const daemonCapacity = 1_100_000

// start starts snared with config (YAML, may be empty) after the section's own settings.
func (d *daemon) start(config string) error {
	cfgFile := filepath.Join(d.dir, "snared.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf("block:\n  capacity: %d\n%s", d.capacity, config)), 0o600); err != nil {
		return err
	}
	args := []string{"--config", cfgFile, "--iface", d.iface, "--xdp-mode", "native",
		"--state-dir", filepath.Join(d.dir, "state"), "--socket", d.socket, "--bpffs", d.pin}
	p, err := d.lab.StartShared(d.ns, filepath.Join(d.bin, "snared"), args...)
	if err != nil {
		return err
	}
	d.proc, d.started = p, time.Now()
	d.client = api.NewClient(d.socket)
	return nil
}

// waitReady polls the API until it answers with at least want entries (bounded).
func (d *daemon) waitReady(want int, limit time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if exited, err := d.proc.Exited(); exited {
			return 0, fmt.Errorf("snared exited: %v: %s", err, tail(d.proc.Output()))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := d.client.Status(ctx)
		cancel()
		if err == nil && st.Entries >= want {
			return time.Since(d.started), nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("snared not ready with %d entries after %s: %s", want, limit, tail(d.proc.Output()))
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 400 {
		s = "..." + s[len(s)-400:]
	}
	return s
}

// memMB reads a memory figure of the daemon from /proc: VmRSS (resident now) or VmHWM (the
// resident peak of the process so far).
func (d *daemon) memMB(field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.proc.PID))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			f := strings.Fields(line)
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no %s for pid %d", field, d.proc.PID)
}

// sweepLine is the daemon's log line for a sweep that did something.
var sweepLine = regexp.MustCompile(`msg=sweep expired=(\d+) .*took=(\S+)`)

// waitSweep waits (bounded) for the daemon to log a sweep that expired at least n entries and
// returns how long that sweep took, by the daemon's own clock.
func (d *daemon) waitSweep(n int, limit time.Duration) (time.Duration, error) {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		for _, m := range sweepLine.FindAllStringSubmatch(d.proc.Output(), -1) {
			if k, _ := strconv.Atoi(m[1]); k >= n {
				return time.ParseDuration(m[2])
			}
		}
		if exited, err := d.proc.Exited(); exited {
			return 0, fmt.Errorf("snared exited: %v: %s", err, tail(d.proc.Output()))
		}
	}
	return 0, fmt.Errorf("no sweep of %d entries within %s: %s", n, limit, tail(d.proc.Output()))
}

func (d *daemon) stop() error {
	if d.proc == nil {
		return nil
	}
	_ = d.proc.Signal(unix.SIGTERM)
	err := d.proc.Wait(20 * time.Second)
	if err != nil {
		if exited, _ := d.proc.Exited(); !exited {
			return d.proc.Stop()
		}
	}
	return nil
}

// daemonBench measures the real daemon: import through the API, memory, block round trips and
// restore on start.
func (e *env) daemonBench() (*table, error) {
	t := newTable("Daemon (snared + snarectl)", "operation", "entries", "measured", "target", "result")
	bin, err := buildDaemon()
	if err != nil {
		t.add("snared", "", "n/a: "+oneLine(err), "", "")
		return t, nil
	}
	defer os.RemoveAll(bin)
	dir, err := os.MkdirTemp("", "snarebench-daemon-")
	if err != nil {
		return t, err
	}
	defer os.RemoveAll(dir)
	d := &daemon{lab: e.lab, ns: e.lab.Host.NS, capacity: daemonCapacity, dir: dir, bin: bin, pin: e.pinDir + "-d", iface: e.lab.HostIface("client").Name, socket: filepath.Join(dir, "snare.sock")}
	defer func() {
		d.stop()
		e.lab.Do(e.lab.Host.NS, func() error { return loader.Remove(d.pin, []string{d.iface}) })
	}()
	if err := d.start(""); err != nil {
		return t, err
	}
	if _, err := d.waitReady(0, time.Minute); err != nil {
		return t, err
	}
	n := e.ctlEntries()
	n0 := 0
	if st, err := d.client.Status(context.Background()); err == nil {
		n0 = st.Entries
	}

	// Import 1,000,000 through the API (what `snarectl import FILE` sends), in random order: a
	// blocked.list holds its addresses in the order they were blocked, and the daemon sorts.
	list := blockList(n)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })
	var sb strings.Builder
	for _, a := range list {
		sb.WriteString(a.String())
		sb.WriteByte('\n')
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t0 := time.Now()
	body := sb.String()
	_, err = d.client.ImportStream(ctx, strings.NewReader(body), int64(len(body)), api.ImportRequest{Name: "bench.list", Reason: "bench"})
	took := time.Since(t0)
	cancel()
	if err != nil {
		t.add("import through the API (the Go client)", num(float64(n)), "n/a: "+oneLine(err), "≤ 1 s", "")
	} else {
		t.add("import through the API (the Go client) of a list in random order, durable before the answer", num(float64(n)), secs(took), "≤ 1 s", passMiss(took <= time.Second))
	}
	st, err := d.client.Status(context.Background())
	if err == nil {
		e.log.Info("daemon after import", "entries", st.Entries)
	}
	// The daemon hands an import's buffers back to the OS in the background; what it holds
	// with the entries is read once that is done, the peak of the import beside it.
	time.Sleep(2 * time.Second)
	if mb, err := d.memMB("VmRSS"); err == nil {
		t.add("snared resident memory holding the entries (2 s after the import)", num(float64(st.Entries)), fmt.Sprintf("%.0f MB", mb), "≤ 150 MB", passMiss(mb <= 150))
	}
	if mb, err := d.memMB("VmHWM"); err == nil {
		t.add("snared resident peak while importing them (VmHWM)", num(float64(st.Entries)), fmt.Sprintf("%.0f MB", mb), "≤ 150 MB", passMiss(mb <= 150))
	}

	// Block round trips: the API (Go client), and the snarectl process as an operator runs it.
	calls := 200
	if e.quick {
		calls = 50
	}
	var rt []time.Duration
	for i := 0; i < calls; i++ {
		a := fmt.Sprintf("198.18.%d.%d", 100+i/250, 1+i%250)
		t0 := time.Now()
		_, err := d.client.Block(context.Background(), api.BlockRequest{Targets: []string{a}, TTL: "5d", Reason: "bench"})
		if err != nil {
			return t, fmt.Errorf("block %s: %w", a, err)
		}
		rt = append(rt, time.Since(t0))
	}
	med, p99 := percentiles(rt)
	t.add(fmt.Sprintf("block one address, API round trip (median of %d)", calls), num(float64(st.Entries)), ms(med)+" ms", "≤ 2 ms", passMiss(med <= 2*time.Millisecond))
	t.add(fmt.Sprintf("block one address, API round trip (p99 of %d)", calls), num(float64(st.Entries)), ms(p99)+" ms", "", "")
	var pt []time.Duration
	for i := 0; i < calls/5; i++ {
		a := fmt.Sprintf("198.18.%d.%d", 110+i/250, 1+i%250)
		t0 := time.Now()
		if out, err := exec.Command(filepath.Join(bin, "snarectl"), "--socket", d.socket, "block", a, "--ttl", "5d").CombinedOutput(); err != nil {
			return t, fmt.Errorf("snarectl block: %w: %s", err, out)
		}
		pt = append(pt, time.Since(t0))
	}
	med, p99 = percentiles(pt)
	t.add(fmt.Sprintf("`snarectl block ADDR`, whole process (median of %d)", len(pt)), num(float64(st.Entries)), ms(med)+" ms", "", "")

	// Restart with the maps pinned (an upgrade), and after a reboot (pins gone: restore from
	// the store).
	want := st.Entries
	if want < n0 {
		want = n0
	}
	for _, reboot := range []bool{false, true} {
		if err := d.stop(); err != nil {
			return t, err
		}
		name := "restart with maps pinned: start until the API answers with every entry"
		if reboot {
			name = "start after a reboot (pins removed): restore from the store until the API answers"
			if err := e.lab.Do(e.lab.Host.NS, func() error { return loader.Remove(d.pin, []string{d.iface}) }); err != nil {
				return t, err
			}
		}
		if err := d.start(""); err != nil {
			return t, err
		}
		took, err := d.waitReady(want, 3*time.Minute)
		if err != nil {
			t.add(name, num(float64(want)), "n/a: "+oneLine(err), "", "")
			continue
		}
		target, res := "", ""
		if reboot {
			target, res = "≤ 1 s", passMiss(took <= time.Second)
		}
		t.add(name, num(float64(want)), secs(took), target, res)
		if mb, err := d.memMB("VmHWM"); err == nil {
			t.add("snared resident peak during that start (VmHWM)", num(float64(want)), fmt.Sprintf("%.0f MB", mb), "≤ 150 MB", passMiss(mb <= 150))
		}
	}

	// The daemon's own sweep: a fresh daemon sweeping every second imports the list with a
	// TTL of 3 s; the first sweep after the deadline finds every entry expired and deletes it
	// from store and kernel.
	if err := d.stop(); err != nil {
		return t, err
	}
	if err := e.lab.Do(e.lab.Host.NS, func() error { return loader.Remove(d.pin, []string{d.iface}) }); err != nil {
		return t, err
	}
	if err := os.RemoveAll(filepath.Join(dir, "state")); err != nil {
		return t, err
	}
	name := "sweep of expired entries by the daemon (store and kernel, one sweep)"
	if err := d.start("sweep:\n  interval: 1s\n"); err != nil {
		return t, err
	}
	if _, err := d.waitReady(0, time.Minute); err != nil {
		return t, err
	}
	// This daemon's import is the operator's: the snarectl process with the list as a file
	// (it checks the file while it sends it).
	listFile := filepath.Join(dir, "bench.list")
	if err := os.WriteFile(listFile, []byte(body), 0o600); err != nil {
		return t, err
	}
	cliName := "`snarectl import FILE` of the same list into an empty daemon, whole process"
	t0 = time.Now()
	out, err := exec.Command(filepath.Join(bin, "snarectl"), "--socket", d.socket, "import", listFile, "--ttl", "3s", "--reason", "bench").CombinedOutput()
	took = time.Since(t0)
	if err != nil {
		t.add(cliName, num(float64(n)), "n/a: "+oneLine(fmt.Errorf("%w: %s", err, out)), "≤ 1 s", "")
		return t, nil
	}
	t.add(cliName, num(float64(n)), secs(took), "≤ 1 s", passMiss(took <= time.Second))
	if took, err := d.waitSweep(n, time.Minute); err != nil {
		t.add(name, num(float64(n)), "n/a: "+oneLine(err), "≤ 1 s", "")
	} else {
		t.add(name, num(float64(n)), secs(took), "≤ 1 s", passMiss(took <= time.Second))
		if mb, err := d.memMB("VmHWM"); err == nil {
			t.add("snared resident peak of that daemon: the import, then the sweep (VmHWM)", num(float64(n)), fmt.Sprintf("%.0f MB", mb), "≤ 150 MB", passMiss(mb <= 150))
		}
	}
	return t, nil
}
