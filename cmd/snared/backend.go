package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control"
	"github.com/snare-dev/snare/control/config"
	fallback "github.com/snare-dev/snare/iptables-fallback"
	"github.com/snare-dev/snare/loader"
)

// fallbackPrefix names snare's iptables chains and ipset sets.
const fallbackPrefix = "snare"

// openBackend is the one place that picks the enforcement back-end: XDP, the iptables fallback
// (openFallback, given the interfaces), or with backend auto XDP and the fallback when XDP cannot
// load or attach, returning why. A pin directory held by another daemon, or pinned by a newer
// snare, is an error either way: the other program keeps enforcing there, which is no reason to
// fall back.
func openBackend(cfg *config.Config, log *slog.Logger, openFallback func(ifaces []string) (backend.Enforcer, error)) (backend.Enforcer, string, error) {
	ifaces := cfg.Interfaces
	if len(ifaces) == 0 {
		var err error
		if ifaces, err = control.DefaultRouteInterfaces(); err != nil {
			return nil, "", err
		}
	}
	useFallback := func(reason string) (backend.Enforcer, string, error) {
		enf, err := openFallback(ifaces)
		if err != nil {
			return nil, "", fmt.Errorf("iptables fallback: %w", err)
		}
		return enf, reason, nil
	}
	if cfg.Backend == "iptables" {
		return useFallback("")
	}
	x, err := loader.Open(loader.Options{
		Interfaces: ifaces, Mode: cfg.XDPMode, PinDir: cfg.BPFFS, Capacity: cfg.Block.Capacity, Logger: log,
	})
	if err == nil {
		return x, "", nil
	}
	if cfg.Backend == "xdp" || errors.Is(err, loader.ErrLocked) || errors.Is(err, loader.ErrNewerABI) {
		return nil, "", fmt.Errorf("xdp back-end: %w", err)
	}
	log.Warn("XDP back-end unavailable, using the iptables fallback", "reason", err)
	return useFallback(fmt.Sprintf("xdp unavailable: %v", err))
}

// openFallback opens the ipset + iptables back-end (package fallback in iptables-fallback/).
func openFallback(cfg *config.Config, log *slog.Logger) func(ifaces []string) (backend.Enforcer, error) {
	return func(ifaces []string) (backend.Enforcer, error) {
		return fallback.New(fallback.Options{
			Interfaces: ifaces,
			Capacity:   cfg.Block.Capacity,
			Prefix:     fallbackPrefix,
			Logger:     log,
		})
	}
}

// removeFallback removes the fallback's chains, rules and sets.
func removeFallback() error { return fallback.Remove(fallbackPrefix) }
