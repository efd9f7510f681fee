package main

import (
	"log/slog"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control"
)

// openFallback opens the ipset + iptables back-end (package fallback in iptables-fallback/).
// TODO(fallback): fallback.New is not in main yet; until it is, the fallback path reports that
// it is not available. Wire it as:
//
//	return fallback.New(fallback.Options{Interfaces: ifaces, Capacity: cfg.Block.Capacity, Logger: log})
var openFallback func(cfg *control.Config, ifaces []string, log *slog.Logger) (backend.Enforcer, error)

// removeFallback removes the fallback's chains, rules and sets (fallback.Remove("snare")); nil
// until the package lands.
var removeFallback func() error
