package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/config"

	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/control"
	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
	"github.com/snare-dev/snare/loader"
)

// millionList is a 1,000,000-line blocked.list dated today: 65,536 IPv4 addresses of
// 198.19.0.0/16, then IPv6 addresses, each its own /64 of 2001:db8::/32 (clear of the lab's
// 2001:db8:N::/64 links). Only ever written to maps, never used as packet addresses.
func millionList(tb testing.TB) string {
	var b bytes.Buffer
	date := time.Now().UTC().Format("20060102")
	for i := range 1_000_000 {
		if i < 1<<16 {
			fmt.Fprintf(&b, "198.19.%d.%d %s\n", i>>8, i&255, date)
		} else {
			fmt.Fprintf(&b, "2001:db8:%x:%x::1 %s\n", 0x100+i>>16, i&0xffff, date)
		}
	}
	p := filepath.Join(tb.TempDir(), "blocked.list")
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// xdpDaemon runs the real control.Daemon with the real XDP loader attached to the lab host's
// interfaces, sized for a million entries, serving on a Unix socket. stop leaves nothing behind.
func xdpDaemon(tb testing.TB, lab *netlab.Lab) (socket string, stop func()) {
	tb.Helper()
	state, err := os.MkdirTemp("", "snarectl-bench")
	if err != nil {
		tb.Fatal(err)
	}
	pins := filepath.Join(testutil.TempBPFFS(tb), "pins")
	socket = filepath.Join(state, "snare.sock")
	cfg, err := config.Load(config.LoadOptions{Env: []string{"SNARE_STATE_DIR=" + state, "SNARE_SOCKET=" + socket}})
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Interfaces, cfg.BPFFS, cfg.Block.Capacity = lab.HostIfaceNames(), pins, 1_000_000
	cfg.Sweep.Interval = config.Duration(time.Hour)
	var x *loader.XDP
	err = lab.Do(lab.Host.NS, func() error {
		var err error
		x, err = loader.Open(loader.Options{Interfaces: cfg.Interfaces, Mode: "auto", PinDir: pins, Capacity: cfg.Block.Capacity})
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := control.Open(ctx, control.Options{Config: cfg,
		OpenEnforcer:  func() (backend.Enforcer, string, error) { return x, "", nil },
		ImplicitAllow: func() (control.Allowlist, error) { return nil, nil },
		Listening:     func(context.Context) (tcp, udp map[uint16]bool, err error) { return nil, nil, nil },
	})
	if err != nil {
		cancel()
		x.Close()
		tb.Fatal(err)
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); d.ServeListener(ctx, l, func() {}) }()
	return socket, func() {
		cancel()
		<-done
		d.Close()
		if err := loader.Remove(pins, cfg.Interfaces); err != nil {
			tb.Errorf("remove xdp: %v", err)
		}
		os.RemoveAll(state)
	}
}

// BenchmarkImportMillion is `snarectl import` of a 1,000,000-line blocked.list into an empty
// daemon with the real XDP back-end: CLI check, API, parse, store (fsynced) and kernel maps.
// Target: at most 1 s.
func BenchmarkImportMillion(b *testing.B) {
	testutil.RequireRoot(b)
	lab := testutil.NewLab(b, "attacker")
	list := millionList(b)
	for b.Loop() {
		b.StopTimer()
		socket, stop := xdpDaemon(b, lab)
		b.StartTimer()
		t0, c0 := time.Now(), cpuTime()
		var out bytes.Buffer
		r := runCLIAt(context.Background(), time.Now().UTC(), &out, socket, "", "import", list)
		el, cpu := time.Since(t0), cpuTime()-c0
		b.StopTimer()
		if r.code != exitOK || !bytes.Contains(out.Bytes(), []byte("imported 1000000 entries")) {
			b.Fatalf("import: code %d %q %q", r.code, out.String(), r.stderr)
		}
		b.ReportMetric(el.Seconds(), "s/1M")
		// Client and daemon share this process: an upper bound of the daemon's memory.
		runtime.GC()
		b.ReportMetric(statusMB("VmRSS"), "rss-MB")
		b.ReportMetric(statusMB("VmHWM"), "peak-rss-MB")
		// CPU seconds of client and daemon together: steadier than wall time on a shared machine.
		b.ReportMetric(cpu.Seconds(), "cpu-s/1M")
		stop()
		b.StartTimer()
	}
}

// BenchmarkListMillion is `snarectl list` (table) and `snarectl list -o json` with 1,000,000
// entries in the daemon. No target: the times are reported.
func BenchmarkListMillion(b *testing.B) {
	testutil.RequireRoot(b)
	lab := testutil.NewLab(b, "attacker")
	list := millionList(b)
	socket, stop := xdpDaemon(b, lab)
	defer stop()
	if r := runCLIAt(context.Background(), time.Now().UTC(), io.Discard, socket, "", "import", list); r.code != exitOK {
		b.Fatalf("import: %q", r.stderr)
	}
	for b.Loop() {
		for _, args := range [][]string{{"list"}, {"list", "-o", "json"}} {
			t0, c0 := time.Now(), cpuTime()
			var n countWriter
			if r := runCLIAt(context.Background(), time.Now().UTC(), &n, socket, "", args...); r.code != exitOK {
				b.Fatalf("%v: %q", args, r.stderr)
			}
			// The table has a header line; indented JSON has a line per field.
			if len(args) == 1 && n.lines != 1_000_001 || len(args) > 1 && n.lines < 10_000_000 {
				b.Fatalf("%v: %d lines", args, n.lines)
			}
			b.ReportMetric(time.Since(t0).Seconds(), "s/1M-"+args[len(args)-1])
			b.ReportMetric((cpuTime() - c0).Seconds(), "cpu-s/1M-"+args[len(args)-1])
		}
	}
}

type countWriter struct{ lines int }

func (w *countWriter) Write(p []byte) (int, error) {
	w.lines += bytes.Count(p, []byte{'\n'})
	return len(p), nil
}

// cpuTime is the CPU time (user and system, kernel work for BPF syscalls included) this process
// has used.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// statusMB is a memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MB.
func statusMB(field string) float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	return 0
}
