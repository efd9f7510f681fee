package control

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/config"
)

// Reload applies a new configuration without dropping enforcement: allowlist (rediscovering the
// implicit part), TTLs and escalation, trap ports and mode, dry-run, sweep interval; the event
// log is reopened (log rotation). Keys that need a restart (interfaces, backend, xdp_mode,
// state_dir, socket, bpffs, block.capacity, block.ipv6_prefix, events_file, metrics.listen, fleet) keep
// their old values, with a warning.
func (d *Daemon) Reload(ctx context.Context, next *config.Config) error {
	d.mu.Lock()
	cur := d.cfg
	merged := *next
	var kept []string
	keep := func(name string, same bool) {
		if !same {
			kept = append(kept, name)
		}
	}
	keep("interfaces", slices.Equal(cur.Interfaces, next.Interfaces))
	keep("backend", cur.Backend == next.Backend)
	keep("xdp_mode", cur.XDPMode == next.XDPMode)
	keep("state_dir", cur.StateDir == next.StateDir)
	keep("socket", cur.Socket == next.Socket)
	keep("bpffs", cur.BPFFS == next.BPFFS)
	keep("block.capacity", cur.Block.Capacity == next.Block.Capacity)
	keep("block.ipv6_prefix", cur.Block.IPv6Prefix == next.Block.IPv6Prefix)
	keep("events_file", cur.EventsPath() == next.EventsPath())
	keep("metrics.listen", cur.Metrics.Listen == next.Metrics.Listen)
	keep("fleet", reflect.DeepEqual(cur.Fleet, next.Fleet)) // the node connects once, at start
	merged.Interfaces, merged.Backend, merged.XDPMode = cur.Interfaces, cur.Backend, cur.XDPMode
	merged.StateDir, merged.Socket, merged.BPFFS = cur.StateDir, cur.Socket, cur.BPFFS
	merged.Block.Capacity, merged.Block.IPv6Prefix, merged.EventsFile = cur.Block.Capacity, cur.Block.IPv6Prefix, cur.EventsFile
	merged.Metrics.Listen = cur.Metrics.Listen
	merged.Fleet = cur.Fleet
	if len(kept) > 0 {
		d.log.Warn("reload: these keys only change on restart", "keys", kept)
	}
	d.cfg = &merged
	err := d.applyConfigLocked(ctx, &merged)
	if err != nil {
		// Go back to what was in force; the enforcer may hold parts of the new config.
		d.cfg = cur
		if rerr := d.applyConfigLocked(ctx, cur); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore previous config: %w", rerr))
		}
	}
	d.mu.Unlock()
	if rerr := d.events.Reopen(); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	d.startTrapWatcher()
	d.logEvents(api.Event{Time: time.Now(), Event: api.EventStart, Source: "daemon", Detail: "configuration reloaded"})
	return nil
}

func (d *Daemon) applyConfigLocked(ctx context.Context, cfg *config.Config) error {
	if err := d.enf.SetSettings(ctx, cfg.EnforcerSettings()); err != nil {
		return fmt.Errorf("enforcer settings: %w", err)
	}
	if err := d.refreshAllowLocked(ctx, true); err != nil {
		return err
	}
	tcp, udp, err := d.trapPorts(ctx, cfg)
	if err != nil {
		d.log.Warn("cannot list listening sockets; trap ports are the configured lists as they are", "err", err)
	}
	return d.applyTrapLocked(ctx, cfg, tcp, udp)
}
