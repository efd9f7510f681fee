package main

import (
	"log/slog"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/backend"
	fallback "github.com/snare-dev/snare/iptables-fallback"
)

// fallbackPrefix names snare's iptables chains and ipset sets.
const fallbackPrefix = "snare"

// openFallback opens the ipset + iptables back-end (package fallback in iptables-fallback/).
func openFallback(cfg *config.Config, ifaces []string, log *slog.Logger) (backend.Enforcer, error) {
	return fallback.New(fallback.Options{
		Interfaces: ifaces,
		Capacity:   cfg.Block.Capacity,
		Prefix:     fallbackPrefix,
		Logger:     log,
	})
}

// removeFallback removes the fallback's chains, rules and sets.
func removeFallback() error { return fallback.Remove(fallbackPrefix) }
