package control_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control/api"

	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/control"
	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
	"github.com/snare-dev/snare/loader"
)

// millionLines is a 1,000,000-line plain block list: 65,536 IPv4 addresses of 198.19.0.0/16,
// then IPv6 addresses, each its own /64 of 2001:db8::/32 (clear of the lab's 2001:db8:N::/64
// links). Only ever written to maps, never used as packet addresses.
func millionLines() string {
	var b bytes.Buffer
	for i := range 1_000_000 {
		if i < 1<<16 {
			fmt.Fprintf(&b, "198.19.%d.%d\n", i>>8, i&255)
		} else {
			fmt.Fprintf(&b, "2001:db8:%x:%x::1\n", 0x100+i>>16, i&0xffff)
		}
	}
	return b.String()
}

// millionConfig is a daemon configuration on the lab host sized for a million entries.
func millionConfig(tb testing.TB, lab *netlab.Lab) *config.Config {
	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Interfaces = lab.HostIfaceNames()
	cfg.BPFFS = filepath.Join(testutil.TempBPFFS(tb), "pins")
	cfg.StateDir = tb.TempDir()
	cfg.Socket = filepath.Join(cfg.StateDir, "snare.sock")
	cfg.Block.Capacity = 1_000_000
	cfg.Sweep.Interval = config.Duration(time.Hour)
	cfg.Metrics.Listen = ""
	cfg.Backend = "xdp" // no fallback: these measure the XDP back-end
	return cfg
}

// openMillion opens the daemon on the lab host as snared does: control.Open loads and attaches
// the XDP back-end while it reads the store (restoring what the store and pins hold).
func openMillion(tb testing.TB, lab *netlab.Lab, cfg *config.Config) *control.Daemon {
	tb.Helper()
	var d *control.Daemon
	err := lab.Do(lab.Host.NS, func() error {
		var err error
		d, err = control.Open(context.Background(), control.Options{Config: cfg,
			OpenEnforcer: func() (backend.Enforcer, string, error) {
				x, err := loader.Open(loader.Options{Interfaces: cfg.Interfaces, Mode: cfg.XDPMode, PinDir: cfg.BPFFS, Capacity: cfg.Block.Capacity})
				return x, "", err
			},
			ImplicitAllow: func() (control.Allowlist, error) { return nil, nil },
			Listening:     func(context.Context) (tcp, udp map[uint16]bool, err error) { return nil, nil, nil },
		})
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	if name, _ := d.Backend(); name != "xdp" {
		tb.Fatalf("back-end %s, want xdp", name)
	}
	return d
}

// cpuTime is the CPU time (user and system, BPF syscalls included) this process has used.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rssMB is this process's resident set size in MB (VmRSS).
func rssMB() float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

// BenchmarkRestoreMillion opens the daemon over a store of 1,000,000 blocks: after a restart
// (the pinned maps still hold them: "restart-s") and after a reboot (empty maps: "reboot-s").
// rss-MB is the process's resident memory a second after the reboot restore (nothing else of
// size lives in this process then). Target: at most 1 s, 150 MB.
func BenchmarkRestoreMillion(b *testing.B) {
	testutil.RequireRoot(b)
	lab := testutil.NewLab(b, "attacker")
	cfg := millionConfig(b, lab)
	d := openMillion(b, lab, cfg)
	resp, err := d.Import(context.Background(), api.ImportRequest{Content: millionLines()})
	if err != nil || resp.Imported != 1_000_000 {
		b.Fatalf("import: %+v %v", resp, err)
	}
	d.Close()
	defer loader.Remove(cfg.BPFFS, cfg.Interfaces)
	for b.Loop() {
		for _, reboot := range []bool{false, true} {
			b.StopTimer()
			if reboot {
				if err := loader.Remove(cfg.BPFFS, cfg.Interfaces); err != nil {
					b.Fatal(err)
				}
			}
			runtime.GC()
			debug.FreeOSMemory()
			b.StartTimer()
			t0, c0 := time.Now(), cpuTime()
			d := openMillion(b, lab, cfg)
			el, cpu := time.Since(t0), cpuTime()-c0
			b.StopTimer()
			name := "restart"
			if reboot {
				name = "reboot"
				time.Sleep(time.Second) // the daemon hands a big restore's memory back in the background
				b.ReportMetric(rssMB(), "rss-MB")
			}
			st, err := d.Status(context.Background())
			if err != nil || st.Entries != 1_000_000 {
				b.Fatalf("%s: %d entries, %v", name, st.Entries, err)
			}
			b.ReportMetric(el.Seconds(), name+"-s")
			b.ReportMetric(cpu.Seconds(), name+"-cpu-s")
			d.Close()
			b.StartTimer()
		}
	}
}

// onFreshMillion times op once per loop on a daemon of its own, after prepare (not timed), and
// reports its wall and CPU time; the daemon and its pins are removed afterwards.
func onFreshMillion(b *testing.B, prepare func(*control.Daemon), op func(*control.Daemon) error) {
	testutil.RequireRoot(b)
	lab := testutil.NewLab(b, "attacker")
	for b.Loop() {
		b.StopTimer()
		cfg := millionConfig(b, lab)
		d := openMillion(b, lab, cfg)
		prepare(d)
		runtime.GC()
		b.StartTimer()
		t0, c0 := time.Now(), cpuTime()
		err := op(d)
		el, cpu := time.Since(t0), cpuTime()-c0
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(el.Seconds(), "s/1M")
		b.ReportMetric(cpu.Seconds(), "cpu-s/1M")
		d.Close()
		if err := loader.Remove(cfg.BPFFS, cfg.Interfaces); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkSweepMillion is one sweep that finds 1,000,000 blocks expired: store and kernel.
// Target: at most 1 s.
func BenchmarkSweepMillion(b *testing.B) {
	benchSweep(b, millionLines())
}

// BenchmarkSweepMillionUnsorted is BenchmarkSweepMillion after an import of a list in random
// order. The kernel's LRU list is laid out in the order entries went in, and the sweep removes
// them in store order: an import that writes the kernel in the list's order makes this sweep 40%
// slower.
func BenchmarkSweepMillionUnsorted(b *testing.B) {
	benchSweep(b, shuffledMillion())
}

func benchSweep(b *testing.B, list string) {
	onFreshMillion(b, func(d *control.Daemon) {
		resp, err := d.Import(context.Background(), api.ImportRequest{Content: list, TTL: "2s"})
		if err != nil || resp.Imported != 1_000_000 {
			b.Fatalf("import: %+v %v", resp, err)
		}
		time.Sleep(2100 * time.Millisecond)
	}, func(d *control.Daemon) error {
		res, err := d.Sweep(context.Background())
		if err == nil && res.Expired != 1_000_000 {
			err = fmt.Errorf("sweep expired %d, want 1,000,000", res.Expired)
		}
		return err
	})
}

// BenchmarkImportMillion is one import of a 1,000,000-line list into an empty daemon, as the
// API runs it (ImportStream), durable in the store before it returns. Target: at most 1 s.
func BenchmarkImportMillion(b *testing.B) {
	benchImport(b, millionLines())
}

// BenchmarkImportMillionUnsorted imports 1,000,000 IPv4 addresses in random order, as a
// blocked.list holds them (in the order the blocks were made): the import sorts them.
func BenchmarkImportMillionUnsorted(b *testing.B) {
	benchImport(b, shuffledMillion())
}

// shuffledMillion is 1,000,000 IPv4 addresses in random order, one per line. The addresses are
// from 240.0.0.0/4 (reserved; they only ever go into maps and the store).
func shuffledMillion() string {
	lines := make([]string, 1_000_000)
	for i := range lines {
		lines[i] = fmt.Sprintf("240.%d.%d.%d\n", i>>16, i>>8&255, i&255)
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
	return strings.Join(lines, "")
}

func benchImport(b *testing.B, list string) {
	onFreshMillion(b, func(*control.Daemon) {}, func(d *control.Daemon) error {
		resp, err := d.ImportStream(context.Background(), strings.NewReader(list), api.ImportRequest{Name: "bench.list"})
		if err == nil && resp.Imported != 1_000_000 {
			err = fmt.Errorf("imported %d, want 1,000,000", resp.Imported)
		}
		return err
	})
}
