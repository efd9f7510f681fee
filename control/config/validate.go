package config

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/input"
)

// keyError is a validation error of one config key.
type keyError struct {
	key string
	msg string
}

func (e *keyError) Error() string { return e.key + ": " + e.msg }

func bad(key, format string, args ...any) error {
	return &keyError{key: key, msg: fmt.Sprintf(format, args...)}
}

// Validate checks every value and returns the first problem, naming the key.
func (c *Config) Validate() error {
	oneOf := func(key, v string, allowed ...string) error {
		if !slices.Contains(allowed, v) {
			return bad(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
		}
		return nil
	}
	inRange := func(key string, v, lo, hi int) error {
		if v < lo || v > hi {
			return bad(key, "%d is outside %d..%d", v, lo, hi)
		}
		return nil
	}
	nonEmpty := func(key, v string) error {
		if strings.TrimSpace(v) == "" {
			return bad(key, "must not be empty")
		}
		return nil
	}
	ports := func(key, v string, empty bool) error {
		ps, err := input.ParsePorts(v)
		if err != nil {
			return bad(key, "%v", err)
		}
		if len(ps) == 0 && !empty {
			return bad(key, "empty port list")
		}
		return nil
	}
	positive := func(key string, d Duration) error {
		if d <= 0 {
			return bad(key, "must be a positive duration such as 10s or 5d")
		}
		return nil
	}
	for _, err := range []error{
		oneOf("backend", c.Backend, "auto", "xdp", "iptables"),
		oneOf("xdp_mode", c.XDPMode, "auto", "native", "generic"),
		nonEmpty("state_dir", c.StateDir),
		nonEmpty("socket", c.Socket),
		nonEmpty("bpffs", c.BPFFS),
		checkInterfaces(c.Interfaces),
		inRange("block.capacity", c.Block.Capacity, 1, 100_000_000),
		inRange("block.min_prefix_v4", c.Block.MinPrefixV4, 1, 32),
		inRange("block.min_prefix_v6", c.Block.MinPrefixV6, 1, 128),
		inRange("block.ipv6_prefix", c.Block.IPv6Prefix, max(c.Block.MinPrefixV6, 1), 128),
		positive("block.escalation.lookback", c.Block.Escalation.Lookback),
		checkFactor(c.Block.Escalation.Factor),
		checkAllow(c.Allow),
		ports("trap.tcp_ports", c.Trap.TCPPorts, true),
		ports("trap.udp_ports", c.Trap.UDPPorts, true),
		ports("trap.exclude", c.Trap.Exclude, true),
		inRange("trap.threshold", c.Trap.Threshold, 1, backend.MaxTrapThreshold),
		positive("trap.window", c.Trap.Window),
		oneOf("trap.tcp_mode", c.Trap.TCPMode, "block", "log"),
		oneOf("trap.udp_mode", c.Trap.UDPMode, "block", "log"),
		inRange("trap.advanced_below", c.Trap.AdvancedBelow, 0, 65535),
		inRange("trap.events_per_second", c.Trap.EventsPerSecond, 1, 1_000_000),
		inRange("trap.event_burst", c.Trap.EventBurst, 1, 1_000_000),
		positive("sweep.interval", c.Sweep.Interval),
		checkListen(c.Metrics.Listen),
		c.validateFleet(),
	} {
		if err != nil {
			return err
		}
	}
	if c.Block.TTL != 0 && c.Block.Escalation.MaxTTL != 0 && c.Block.Escalation.MaxTTL < c.Block.TTL {
		return bad("block.escalation.max_ttl", "%s is shorter than block.ttl %s",
			input.FormatTTL(time.Duration(c.Block.Escalation.MaxTTL)), input.FormatTTL(time.Duration(c.Block.TTL)))
	}
	return nil
}

func checkInterfaces(names []string) error {
	for _, n := range names {
		if n == "" || len(n) > 15 || strings.ContainsAny(n, "/ \t\n:") {
			return bad("interfaces", "%q is not a valid interface name", n)
		}
	}
	return nil
}

func checkFactor(f float64) error {
	if f < 1 || f > 1000 {
		return bad("block.escalation.factor", "%g is outside 1..1000", f)
	}
	return nil
}

func checkAllow(entries []string) error {
	for _, e := range entries {
		if _, err := input.ParseAllowPrefix(e); err != nil {
			return bad("allow", "%v", err)
		}
	}
	return nil
}

func checkListen(addr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return bad("metrics.listen", "%q: %v (want host:port, or empty to disable)", addr, err)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			return bad("metrics.listen", "%q: host %q is not an IP address", addr, host)
		}
	}
	if _, err := input.ParsePort(port); err != nil {
		return bad("metrics.listen", "%q: %v", addr, err)
	}
	return nil
}
