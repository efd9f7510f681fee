package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"

	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
)

// procMB reads a memory figure (VmRSS, VmHWM) of process pid, in MB.
func procMB(pid int, field string) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

// BenchmarkSnaredMillion runs the real snared with block.capacity 1,000,000: imports a million
// addresses through its socket (the streamed form snarectl uses), then restarts it so that it
// restores them. It reports the daemon's own memory: resident after each step and the peak
// (VmHWM) of each process. Target: at most 150 MB with a million entries.
func BenchmarkSnaredMillion(b *testing.B) {
	testutil.RequireRoot(b)
	lab := testutil.NewLab(b, "attacker")
	bin := filepath.Join(b.TempDir(), "snared")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	var list bytes.Buffer
	for i := range 1_000_000 {
		if i < 1<<16 {
			fmt.Fprintf(&list, "198.19.%d.%d\n", i>>8, i&255)
		} else {
			fmt.Fprintf(&list, "2001:db8:%x:%x::1\n", 0x100+i>>16, i&0xffff)
		}
	}
	for b.Loop() {
		state := b.TempDir()
		pins := filepath.Join(testutil.TempBPFFS(b), "pins")
		sock := filepath.Join(state, "snare.sock")
		cfgFile := filepath.Join(state, "snare.yaml")
		if err := os.WriteFile(cfgFile, []byte("block:\n  capacity: 1000000\nmetrics:\n  listen: \"\"\n"), 0o600); err != nil {
			b.Fatal(err)
		}
		args := []string{"--config", cfgFile, "--state-dir", state, "--socket", sock, "--bpffs", pins}
		for _, i := range lab.HostIfaceNames() {
			args = append(args, "--iface", i)
		}
		c := api.NewClient(sock)
		start := func() (*netlab.Proc, time.Duration) {
			t0 := time.Now()
			p, err := lab.StartShared(lab.Host.NS, bin, args...)
			if err != nil {
				b.Fatal(err)
			}
			for end := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if _, err := c.Status(context.Background()); err == nil {
					return p, time.Since(t0)
				}
				if exited, _ := p.Exited(); exited || time.Now().After(end) {
					b.Fatalf("snared did not answer:\n%s", p.Output())
				}
			}
		}
		p, _ := start()
		t0 := time.Now()
		resp, err := c.ImportStream(context.Background(), bytes.NewReader(list.Bytes()), int64(list.Len()), api.ImportRequest{Name: "bench"})
		if err != nil || resp.Imported != 1_000_000 {
			b.Fatalf("import: %+v %v", resp, err)
		}
		b.ReportMetric(time.Since(t0).Seconds(), "import-s")
		time.Sleep(2 * time.Second) // let the daemon hand its import buffers back
		b.ReportMetric(procMB(p.PID, "VmRSS"), "rss-import-MB")
		b.ReportMetric(procMB(p.PID, "VmHWM"), "peak-import-MB")
		if err := p.Signal(unix.SIGTERM); err != nil {
			b.Fatal(err)
		}
		if err := p.Wait(30 * time.Second); err != nil {
			b.Logf("snared exit: %v", err)
		}
		p, ready := start()
		b.ReportMetric(ready.Seconds(), "restart-ready-s")
		time.Sleep(2 * time.Second)
		b.ReportMetric(procMB(p.PID, "VmRSS"), "rss-restore-MB")
		b.ReportMetric(procMB(p.PID, "VmHWM"), "peak-restore-MB")
		if st, err := c.Status(context.Background()); err != nil || st.Entries != 1_000_000 {
			b.Fatalf("after restart: %d entries, %v", st.Entries, err)
		}
		if err := p.Stop(); err != nil {
			b.Logf("stop: %v", err)
		}
		// In the lab's namespace, with the lab's interfaces: never the host's.
		if out, err := lab.RunShared(lab.Host.NS, bin, append([]string{"uninstall"}, args...)...); err != nil {
			b.Logf("uninstall: %v %s", err, out)
		}
	}
}
