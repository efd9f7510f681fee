// Command snarebench measures snare against the bare XDP floor and the blockers users would run
// instead, in one run on one machine, and writes a markdown report. Run as root:
//
//	go run ./bench/cmd/snarebench            # full, < 10 minutes (make bench)
//	go run ./bench/cmd/snarebench --quick    # < 2 minutes (make bench-quick)
//
// Everything happens in network namespaces it creates (addresses 198.18.0.0/15 and
// 2001:db8::/32 only, no route out) and is removed on exit. See bench/README.md.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const runTimeout = 2 * time.Minute

type section struct {
	name string
	run  func(*env) ([]*table, error)
}

func main() {
	quick := flag.Bool("quick", false, "short run for development (< 2 minutes)")
	only := flag.String("sections", "testrun,control,live,detect,web,fleet", "comma-separated sections to run")
	outDir := flag.String("out", "bench/results", "directory for the markdown report (empty: none)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the harness itself to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "snarebench:", err)
			os.Exit(2)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "snarebench:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "snarebench needs root (network namespaces, BPF, XDP, iptables): run it with sudo")
		os.Exit(2)
	}
	if err := run(*quick, *only, *outDir, log); err != nil {
		fmt.Fprintln(os.Stderr, "snarebench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(quick bool, only, outDir string, log *slog.Logger) error {
	all := []section{
		{"testrun", (*env).sectionTestRun},
		{"control", (*env).sectionControl},
		{"live", (*env).sectionLive},
		{"detect", (*env).sectionDetect},
		{"web", (*env).sectionWeb},
		{"fleet", (*env).sectionFleet},
	}
	want := map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		want[strings.TrimSpace(s)] = true
	}
	for s := range want {
		found := false
		for _, a := range all {
			found = found || a.name == s
		}
		if !found {
			return fmt.Errorf("unknown section %q (have testrun, control, live, detect, web, fleet)", s)
		}
	}

	start := time.Now()
	loadStart := loadAvg()
	e, err := setup(quick, log)
	// Tear down on every way out, including Ctrl-C.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		log.Warn("interrupted: tearing down the lab")
		if e != nil {
			e.close()
		}
		os.Exit(130)
	}()
	if err != nil {
		if e != nil {
			e.close()
		}
		return fmt.Errorf("set up: %w", err)
	}
	defer func() {
		if err := e.close(); err != nil {
			log.Error("tear down", "err", err)
		}
	}()

	var tables []*table
	for _, s := range all {
		if !want[s.name] {
			continue
		}
		t0 := time.Now()
		log.Info("section start", "section", s.name)
		ts, err := s.run(e)
		tables = append(tables, ts...)
		if err != nil {
			log.Error("section failed", "section", s.name, "err", err)
			f := newTable("Section "+s.name+" failed", "error")
			f.add(err.Error())
			tables = append(tables, f)
		}
		log.Info("section done", "section", s.name, "took", time.Since(t0).Round(time.Millisecond))
	}
	report := header(e, quick, time.Since(start), loadStart, loadAvg())
	for _, t := range tables {
		report += t.markdown()
	}
	fmt.Println(report)
	if outDir == "" {
		return nil
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(outDir, reportName(time.Now(), kernel(), quick, all, want))
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		return err
	}
	log.Info("report written", "path", path)
	return nil
}

// reportName names the report file: date and kernel, "-quick" for a quick run, and the sections
// when only some ran, so that a run of one section does not overwrite the day's full report.
func reportName(now time.Time, kernel string, quick bool, all []section, want map[string]bool) string {
	name := now.UTC().Format("2006-01-02") + "-" + kernel
	if quick {
		name += "-quick"
	}
	var ran []string
	for _, s := range all {
		if want[s.name] {
			ran = append(ran, s.name)
		}
	}
	if len(ran) < len(all) {
		name += "-" + strings.Join(ran, "-")
	}
	return name + ".md"
}

func kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// loadAvg is the 1-minute load average: how busy the machine's other users kept it.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func header(e *env, quick bool, took time.Duration, loadStart, loadEnd string) string {
	mode := "full"
	if quick {
		mode = "quick"
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "# snare benchmark, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&sb, "- kernel: %s\n- CPU: %s, %d online CPUs (shared with other users of the machine)\n", kernel(), cpuModel(), runtime.NumCPU())
	fmt.Fprintf(&sb, "- mode: %s (`go run ./bench/cmd/snarebench%s`), took %s\n", mode, map[bool]string{true: " --quick"}[quick], took.Round(time.Second))
	fmt.Fprintf(&sb, "- lab: veth %s (generator, netns %s) -> %s (device under test, netns %s); XDP modes used: native (veth driver mode) and generic (skb), as named per row\n",
		e.gen.Name, e.lab.Peer("gen").NS, e.dut.Name, e.lab.Host.NS)
	fmt.Fprintf(&sb, "- 1-minute load average at start / end: %s / %s (2 CPUs; anything near or above 2 means other users competed for the cores)\n", loadStart, loadEnd)
	sb.WriteString("- ratios within this run are what to compare; absolute numbers move between runs on this shared VM\n\n")
	return sb.String()
}
