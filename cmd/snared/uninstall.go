package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control"
	"github.com/snare-dev/snare/loader"
)

// uninstall removes snare's enforcement from the host: the XDP program from every interface it
// is attached to (pinned links under --bpffs, and the configured or default-route interfaces),
// every pin under --bpffs (loader.Remove), and the iptables fallback's chains, rules and ipset
// sets (fallback.Remove). The durable store in --state-dir is kept. A running daemon is refused:
// stop it first.
func uninstall(cfg *config.Config, log *slog.Logger) error {
	if c, err := net.DialTimeout("unix", cfg.Socket, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("snared is running (it answers on %s): stop it first", cfg.Socket)
	}
	ifaces := cfg.Interfaces
	if len(ifaces) == 0 {
		ifaces, _ = control.DefaultRouteInterfaces()
	}
	var errs []error
	// Say what was there: an operator checking that snare is gone reads this.
	removed, err := loader.Uninstall(cfg.BPFFS, ifaces)
	if err != nil {
		errs = append(errs, fmt.Errorf("remove xdp program and pins: %w", err))
	}
	switch {
	case len(removed.Detached) > 0:
		log.Info("detached the XDP program", "interfaces", removed.Detached)
	case err == nil:
		log.Info("XDP program: nothing attached", "checked", ifaces, "bpffs", cfg.BPFFS)
	}
	switch {
	case removed.Pins > 0:
		log.Info("removed pins", "bpffs", cfg.BPFFS, "pins", removed.Pins)
	case err == nil:
		log.Info("no pins to remove", "bpffs", cfg.BPFFS)
	}
	if err := removeFallback(); err != nil {
		errs = append(errs, fmt.Errorf("remove iptables fallback: %w", err))
	} else {
		log.Info("removed iptables fallback chains and sets")
	}
	return errors.Join(errs...)
}
