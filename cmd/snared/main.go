// Command snared is snare's daemon: it attaches the XDP blocker (or the iptables fallback),
// restores the blocks from its durable store, catches scanners on trap ports, expires blocks on
// time and serves snarectl on a Unix socket.
//
//	snared [--config FILE] [--conf-dir DIR] [--iface NAME]... [--backend auto|xdp|iptables] [--xdp-mode auto|native|generic]
//	       [--state-dir DIR] [--socket PATH] [--bpffs DIR] [--dry-run]
//	snared --check-config [...]   validate and print the merged configuration (exit 0 or 1)
//	snared --print-config [...]   print the merged configuration
//	snared --recover-store [...]  salvage a damaged store into a fresh one (see recoverStore)
//	snared uninstall [...]        remove snare from the host (see uninstall.go)
//
// Signals: SIGTERM/SIGINT stop the daemon and leave enforcement in place (pinned XDP program and
// maps, or the ipset sets and iptables rules), so a restart or upgrade leaves no gap. SIGHUP
// reloads the configuration and reopens the event log.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/metrics"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control/store"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/snare-dev/snare/control"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

type options struct {
	config       string
	confDir      string
	checkConfig  bool
	printConfig  bool
	recoverStore bool
	uninstall    bool
	version      bool
}

// newFlagSet defines snared's flags: one definition for parsing, --help and the generated docs.
func newFlagSet(o *options, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("snared", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVarP(&o.config, "config", "c", "", "YAML config file (default: none, the embedded defaults)")
	fs.StringVar(&o.confDir, "conf-dir", "/etc/snare/conf.d", "directory of drop-in YAML files merged after --config in name order (missing: none)")
	fs.BoolVar(&o.checkConfig, "check-config", false, "validate the configuration, print it merged, and exit (0 valid, 1 not)")
	fs.BoolVar(&o.printConfig, "print-config", false, "print the merged configuration and exit")
	fs.BoolVar(&o.recoverStore, "recover-store", false, "when snared refuses to start on a damaged store: copy every readable entry into a fresh store, keep the damaged file as snare.db.corrupt-TIME, print what was saved and lost, and exit (snared must not be running)")
	fs.BoolVar(&o.uninstall, "uninstall", false, "same as the uninstall command")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	config.AddFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: snared [flags]\n       snared uninstall [flags]\n\nFlags:\n%s", fs.FlagUsages())
	}
	return fs
}

func run(args, environ []string, stdout, stderr io.Writer) int {
	var o options
	fs := newFlagSet(&o, stderr)
	if len(args) == 2 && args[0] == "gen-docs" { // hidden: writes docs/snared.md and docs/man/snared.8
		if err := genDocs(args[1]); err != nil {
			fmt.Fprintf(stderr, "Error: %v\n", err)
			return exitError
		}
		return exitOK
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return exitUsage
	}
	rest := fs.Args()
	if len(rest) > 0 {
		if rest[0] != "uninstall" || len(rest) > 1 {
			fmt.Fprintf(stderr, "Error: unexpected argument %q (the only command is uninstall)\n", rest[0])
			return exitUsage
		}
		o.uninstall = true
	}
	if o.version {
		fmt.Fprintf(stdout, "snared %s\n", version)
		return exitOK
	}

	load := config.LoadOptions{File: o.config, DropInDir: o.confDir, Env: environ, Flags: fs}
	cfg, err := config.Load(load)
	if err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return exitError
	}
	if o.checkConfig || o.printConfig {
		out, err := cfg.YAML()
		if err != nil {
			fmt.Fprintf(stderr, "Error: %v\n", err)
			return exitError
		}
		stdout.Write(out)
		if o.checkConfig {
			fmt.Fprintln(stderr, "configuration is valid")
		}
		return exitOK
	}

	if o.recoverStore {
		return recoverStore(cfg.DBPath(), stdout, stderr)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if o.uninstall {
		if err := uninstall(cfg, log); err != nil {
			fmt.Fprintf(stderr, "Error: %v\n", err)
			return exitError
		}
		fmt.Fprintln(stdout, "snare removed from this host (its store in", cfg.StateDir, "is kept; delete it to forget every block)")
		return exitOK
	}
	if err := serve(cfg, load, log); err != nil {
		if errors.Is(err, store.ErrStoreCorrupt) {
			path := cfg.DBPath()
			fmt.Fprintf(stderr, "Error: %v. snared did not start; the blocks already in the kernel stay enforced. "+
				"To recover, run \"snared --recover-store\" with the same flags (it salvages every readable entry into a fresh store "+
				"and keeps the damaged file as %s.corrupt-TIME), or move %s aside and put back a backup of it, "+
				"or move it aside, start, and \"snarectl import\" a list saved by \"snarectl export\".\n", err, path, path)
			return exitError
		}
		log.Error("snared failed", "err", err)
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return exitError
	}
	return exitOK
}

// recoverStore replaces a damaged store with a fresh one holding what is readable of it
// (store.RecoverStore) and says what was saved and what was lost. A sound store is left alone.
func recoverStore(path string, stdout, stderr io.Writer) int {
	rec, err := store.RecoverStore(path, time.Now())
	if errors.Is(err, store.ErrNothingToRecover) {
		fmt.Fprintf(stdout, "%v: nothing changed\n", err)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "Error: %v; nothing changed\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "store %s was damaged: %s\n", path, rec.Damage)
	fmt.Fprintf(stdout, "salvaged into a fresh store: %d rules, %d allowlist entries, %d offence histories\n", rec.Rules, rec.Allow, rec.Offences)
	if len(rec.Lost) == 0 {
		fmt.Fprintln(stdout, "lost: nothing")
	}
	for _, l := range rec.Lost {
		fmt.Fprintf(stdout, "lost: %s\n", l)
	}
	fmt.Fprintf(stdout, "the damaged file is kept as %s\n", rec.Kept)
	fmt.Fprintln(stdout, "snared can start now: it restores the salvaged rules into the kernel and removes the blocks the store lost "+
		"(but trap blocks, which it adopts); \"snarectl import\" a list saved by \"snarectl export\" to bring those back")
	return exitOK
}

func serve(cfg *config.Config, load config.LoadOptions, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	m := metrics.New(metrics.Options{Version: version})
	d, err := control.Open(ctx, control.Options{
		Config: cfg, Logger: log, Version: version, Recorder: m,
		OpenEnforcer: func() (backend.Enforcer, string, error) { return openBackend(cfg, log, openFallback(cfg, log)) },
	})
	if err != nil {
		return err
	}
	defer d.Close()
	if cfg.Metrics.Listen != "" {
		// Metrics that cannot be served (the port is taken) are no reason to stop enforcing.
		var extra []prometheus.Collector
		if cfg.FleetEnabled() {
			extra = append(extra, metrics.NewFleetCollector(d.FleetStatus))
		}
		srv, err := metrics.Start(ctx, m, metrics.StatusFunc(d.EnforcerStatus), cfg.Metrics.Listen, log, extra...)
		if err != nil {
			log.Error("metrics disabled", "err", err)
		} else {
			defer srv.Close()
		}
	}
	name, reason := d.Backend()
	st, _ := d.Status(ctx)
	log.Info("snared running", "version", version, "backend", name, "fallback_reason", reason,
		"interfaces", st.Interfaces, "entries", st.Entries, "socket", cfg.Socket, "dry_run", cfg.DryRun)

	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			_, _ = daemon.SdNotify(false, daemon.SdNotifyReloading)
			next, err := config.Load(load)
			if err == nil {
				err = d.Reload(ctx, next)
			}
			if err != nil {
				// Log rotation must work even when the new config is broken.
				if rerr := d.Events().Reopen(); rerr != nil {
					log.Error("reopen event log", "err", rerr)
				}
				log.Error("reload failed; the previous configuration stays in force", "err", err)
			} else {
				log.Info("configuration reloaded")
			}
			_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
		}
	}()

	err = d.Serve(ctx, func() {
		// READY only now: the program is attached, the blocks are restored, the socket answers.
		if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
			log.Warn("sd_notify", "err", err)
		}
	})
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	if err != nil {
		return err
	}
	log.Info("snared stopped; enforcement stays in place")
	return nil
}
