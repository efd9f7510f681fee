package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	fallback "github.com/snare-dev/snare/iptables-fallback"
)

const fallbackPrefix = "snb"

// openFallback starts snare's iptables fallback in the lab's host namespace, filtering the DUT
// interface, and blocks n addresses through it; it returns the time the Block took.
func (e *env) openFallback(n int) (*fallback.Enforcer, time.Duration, error) {
	fb, err := fallback.New(fallback.Options{Interfaces: []string{e.dut.Name}, Capacity: n + n/4, Prefix: fallbackPrefix,
		NetNS: filepath.Join("/run/netns", e.lab.Host.NS), Variant: "legacy", CheckInterval: -1})
	if err != nil {
		return nil, 0, fmt.Errorf("start the iptables fallback: %w", err)
	}
	t0 := time.Now()
	err = fb.Block(context.Background(), rules(blockList(n), time.Now().Add(5*24*time.Hour)))
	took := time.Since(t0)
	if err != nil {
		e.closeFallback(fb)
		return nil, 0, fmt.Errorf("fallback block %d: %w", n, err)
	}
	return fb, took, nil
}

// closeFallback closes the enforcer and removes its chains and sets from the lab's namespace.
func (e *env) closeFallback(fb *fallback.Enforcer) {
	fb.Close()
	if err := e.lab.Do(e.lab.Host.NS, func() error { return fallback.Remove(fallbackPrefix) }); err != nil {
		e.log.Warn("remove the iptables fallback", "err", err)
	}
}
