package control

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/control/store"
)

// trapSpec is the trap-port policy of cfg.
func trapSpec(cfg *config.Config) TrapPortSpec {
	t := cfg.EnforcerTrap()
	ex, _ := input.ParsePorts(cfg.Trap.Exclude)
	return TrapPortSpec{TCP: t.TCPPorts, UDP: t.UDPPorts, AdvancedBelow: cfg.Trap.AdvancedBelow, Exclude: ex}
}

// trapPorts computes the trap ports in force once (the watcher keeps them current later). When
// the listening sockets cannot be read, the configured lists are used as they are.
func (d *Daemon) trapPorts(ctx context.Context, cfg *config.Config) (tcp, udp []uint16, err error) {
	spec := trapSpec(cfg)
	e, err := ReadEphemeralPorts()
	if err != nil {
		d.log.Warn("cannot read the ephemeral port range; assuming Linux's default", "range", linuxEphemeral.String(), "err", err)
		e = linuxEphemeral
	}
	spec.Ephemeral = e
	for _, l := range []struct {
		key   string
		ports []uint16
	}{{"trap.tcp_ports", spec.TCP}, {"trap.udp_ports", spec.UDP}} {
		if in := e.Ephemeral(l.ports); len(in) > 0 {
			d.log.Warn("trap ports inside the ephemeral port range are not trapped: replies to the host's own connections arrive there; narrow net.ipv4.ip_local_port_range or list them in net.ipv4.ip_local_reserved_ports to trap them",
				"key", l.key, "ports", input.FormatPorts(in), "range", e.String())
		}
	}
	tl, ul, err := d.opts.Listening(ctx)
	if err != nil {
		spec.AdvancedBelow = 0
		tcp, udp = TrapPorts(spec, nil, nil)
		return tcp, udp, err
	}
	tcp, udp = TrapPorts(spec, tl, ul)
	return tcp, udp, nil
}

func (d *Daemon) applyTrapLocked(ctx context.Context, cfg *config.Config, tcp, udp []uint16) error {
	tc := cfg.EnforcerTrap()
	tc.TCPPorts, tc.UDPPorts = tcp, udp
	if err := d.enf.SetTrap(ctx, tc); err != nil {
		return fmt.Errorf("configure trap ports: %w", err)
	}
	d.trapTCP, d.trapUDP = tcp, udp
	return nil
}

// HandleTrapEvents records trap events until ch closes: each scan goes to the event log, and a
// block the kernel made goes to the store (escalated, written back to the kernel). Events that
// arrive together are stored in one transaction. It reads ch to its end, also once ctx is done
// (the back-end closes ch then): events the back-end took from the kernel during a shutdown are
// still recorded, with a context that is not cancelled.
func (d *Daemon) HandleTrapEvents(ctx context.Context, ch <-chan backend.TrapEvent) {
	ctx = context.WithoutCancel(ctx)
	for ev := range ch {
		batch := []backend.TrapEvent{ev}
	drain:
		for len(batch) < 512 {
			select {
			case ev, ok := <-ch:
				if !ok {
					break drain
				}
				batch = append(batch, ev)
			default:
				break drain
			}
		}
		for _, ev := range batch {
			d.rec.TrapEvent(ev)
		}
		if err := d.handleTraps(ctx, batch); err != nil {
			d.log.Error("record trap events", "err", err, "events", len(batch))
		}
	}
}

func trapReason(ev backend.TrapEvent) string {
	ports := make([]string, len(ev.Ports))
	for i, p := range ev.Ports {
		ports[i] = strconv.Itoa(int(p))
	}
	s := "trap: " + ev.Proto + "/" + strings.Join(ports, ",")
	if ev.TCPFlags != "" {
		s += " " + ev.TCPFlags
	}
	return s
}

func (d *Daemon) handleTraps(ctx context.Context, batch []backend.TrapEvent) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.cfg
	now := time.Now()
	var evs []api.Event
	var blocked []store.Rule
	var release []netip.Prefix
	full := 0
	err := d.store.Update(func(tx *store.Tx) error {
		for _, ev := range batch {
			scan := api.Event{Time: ev.Time, Event: api.EventScan, Address: ev.Source.String(), Proto: ev.Proto,
				Ports: ev.Ports, TCPFlags: ev.TCPFlags, Source: api.OriginTrap}
			if scan.Time.IsZero() {
				scan.Time = now
			}
			p, perr := input.ParseTarget(ev.Source.String(), cfg.TargetRules())
			item, allowed := d.allow.Contains(ev.Source)
			switch {
			case ev.Allowlisted || allowed:
				scan.Action = "allowlisted"
				if allowed {
					scan.Detail = fmt.Sprintf("%s %s: not blocked", item.Source, item.Prefix)
				} else {
					scan.Detail = "allowlisted: not blocked"
				}
				if ev.Blocked && perr == nil {
					release = append(release, p) // the kernel's allowlist was behind ours
				}
				evs = append(evs, scan)
				continue
			case ev.Full:
				scan.Action = "not blocked"
				scan.Detail = fmt.Sprintf("block map full: block.capacity %d reached", cfg.Block.Capacity)
				evs = append(evs, scan)
				full++
				continue
			case !ev.Blocked:
				scan.Action = "logged"
				evs = append(evs, scan)
				continue
			case perr != nil:
				scan.Action = "blocked"
				scan.Detail = perr.Error()
				evs = append(evs, scan)
				continue
			}
			scan.Action = "blocked"
			if old, ok, err := tx.Rule(p); err == nil && ok && !old.Expired(now) && old.Origin == api.OriginTrap &&
				!old.LastOffence.Before(scan.Time.Add(-time.Second)) {
				// Already recorded since this event happened: adopted from the kernel by a sweep or
				// at start before its event was read. The same offence, not a repeat; it only
				// gets its real reason.
				old.Reason = trapReason(ev)
				if err := tx.PutRule(old); err != nil {
					return err
				}
				evs = append(evs, scan)
				continue
			}
			r, err := d.offendLocked(tx, cfg, p, api.OriginTrap, trapReason(ev), time.Duration(cfg.Block.TTL), false, now)
			if err != nil {
				return err
			}
			blocked = append(blocked, r)
			evs = append(evs, scan, blockEvent(r, api.OriginTrap, now))
		}
		if err := d.shareBlocks(tx, blocked); err != nil {
			return err
		}
		if len(blocked) > 0 {
			// The kernel inserted the base TTL; write the escalated deadline back.
			if err := d.enf.Block(ctx, toBackend(blocked)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	d.notifyFleet()
	if len(release) > 0 {
		if err := d.enf.Unblock(ctx, release); err != nil {
			d.log.Error("release allowlisted trap block", "err", err)
		}
	}
	d.logEvents(evs...)
	if len(blocked) > 0 {
		d.rec.Blocked(api.OriginTrap, len(blocked))
	}
	if full > 0 {
		d.log.Warn("trap blocks refused: the block map is full; raise block.capacity or unblock",
			"capacity", cfg.Block.Capacity, "sources", full)
	}
	return nil
}

// startTrapWatcher (re)starts the watcher that keeps trap ports current as services start and
// stop, with the configuration in force.
func (d *Daemon) startTrapWatcher() {
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	if d.serveCtx == nil {
		return
	}
	if d.watchCancel != nil {
		d.watchCancel()
	}
	cfg := d.Config()
	spec := trapSpec(cfg)
	if len(spec.TCP)+len(spec.UDP) == 0 && spec.AdvancedBelow == 0 {
		d.watchCancel = nil
		return
	}
	ctx, cancel := context.WithCancel(d.serveCtx)
	d.watchCancel = cancel
	w := TrapPortWatcher{
		Spec:      spec,
		Listening: d.opts.Listening,
		Update: func(tcp, udp []uint16) {
			d.mu.Lock()
			defer d.mu.Unlock()
			if ctx.Err() != nil || d.cfg != cfg {
				return // superseded by a reload
			}
			if slices.Equal(tcp, d.trapTCP) && slices.Equal(udp, d.trapUDP) {
				return
			}
			if err := d.applyTrapLocked(ctx, cfg, tcp, udp); err != nil {
				d.log.Error("update trap ports", "err", err)
				return
			}
			d.log.Info("trap ports changed", "tcp", len(tcp), "udp", len(udp))
		},
		OnError: func(err error) { d.log.Warn("trap port watcher", "err", err) },
	}
	go func() {
		if err := w.Run(ctx); err != nil {
			d.log.Warn("trap port watcher stopped; trap ports stay as they are", "err", err)
		}
	}()
}

func (d *Daemon) stopTrapWatcher() {
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	if d.watchCancel != nil {
		d.watchCancel()
		d.watchCancel = nil
	}
	d.serveCtx = nil
}
