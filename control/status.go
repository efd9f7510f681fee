package control

import (
	"context"
	"fmt"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/control/store"
)

// EachEntry calls fn with every active block and its live counters, in prefix order, without
// holding them all: the list of a million entries is streamed. The entry passed to fn is reused.
func (d *Daemon) EachEntry(ctx context.Context, fn func(*api.Entry) error) error {
	states, err := d.enf.Rules(ctx)
	if err != nil {
		return fmt.Errorf("read enforced rules: %w", err)
	}
	// The kernel's rules sorted like the store's, so the counters are merged in one walk.
	sortStates(states)
	now := time.Now()
	i := 0
	var e api.Entry
	return d.store.View(func(tx *store.Tx) error {
		return tx.ForEachRule(func(r store.Rule) error {
			if r.Expired(now) {
				return nil
			}
			e = entryOf(r)
			for i < len(states) && states[i].Prefix.Compare(r.Prefix) < 0 {
				i++
			}
			if i < len(states) && states[i].Prefix == r.Prefix {
				e.Hits, e.LastHit = states[i].Hits, states[i].LastHit
			}
			return fn(&e)
		})
	})
}

func entryOf(r store.Rule) api.Entry {
	return api.Entry{Prefix: r.Prefix.String(), Reason: r.Reason, Origin: r.Origin, Node: r.Node, Created: r.Created,
		Expires: r.Deadline, Permanent: r.Permanent(), Offences: r.Offences}
}

// Status reports the back-end, its counters and the trap ports in force.
func (d *Daemon) Status(ctx context.Context) (api.StatusResponse, error) {
	// Entries come from the store: counting the kernel's (a walk of every map) is for metrics.
	st, err := d.enf.Status(backend.WithoutEntryCount(ctx))
	if err != nil {
		return api.StatusResponse{}, fmt.Errorf("enforcer status: %w", err)
	}
	d.mu.Lock()
	cfg, allow, tcp, udp := d.cfg, len(d.allow), d.trapTCP, d.trapUDP
	d.mu.Unlock()
	n := d.store.Count()
	c := st.Counters
	out := api.StatusResponse{
		Version: d.version, Backend: st.Backend, Fallback: d.fallback, DryRun: cfg.DryRun,
		Entries: n, Capacity: c.Capacity, Passed: c.Passed, Dropped: c.Dropped, ByReason: c.ByReason,
		Evictions: c.Evictions + d.evictions.Load(), Allowlist: allow, StartedAt: d.started,
		Trap: api.TrapStatus{
			TCPPorts: input.FormatPorts(tcp), UDPPorts: input.FormatPorts(udp), Threshold: cfg.Trap.Threshold,
			Window: input.FormatDuration(time.Duration(cfg.Trap.Window)), TCPMode: cfg.Trap.TCPMode, UDPMode: cfg.Trap.UDPMode,
			ScanEntries: c.ScanEntries, Hits: c.TrapHits, Blocks: c.TrapBlocks, Suppressed: c.Suppressed,
		},
	}
	if out.Capacity == 0 {
		out.Capacity = cfg.Block.Capacity
	}
	for _, i := range st.Interfaces {
		out.Interfaces = append(out.Interfaces, api.InterfaceStatus{Name: i.Name, Mode: i.Mode})
	}
	return out, nil
}

// EnforcerStatus is the enforcer's own status, what metrics read at scrape time. A back-end that
// does not know its capacity (ipset sizes come from the config) gets block.capacity.
func (d *Daemon) EnforcerStatus(ctx context.Context) (backend.Status, error) {
	st, err := d.enf.Status(ctx)
	if err == nil && st.Counters.Capacity == 0 {
		d.mu.Lock()
		st.Counters.Capacity = d.cfg.Block.Capacity
		d.mu.Unlock()
	}
	return st, err
}
