package control

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/fleet"
	"github.com/snare-dev/snare/control/store"
)

// The daemon's side of the fleet (package fleet): local decisions are queued in the store's
// outbox in the transaction that makes them, and remote ones applied here. Without a fleet
// section d.fleet is nil and none of this runs.

// shareBlocks queues blocks for the fleet, in tx.
func (d *Daemon) shareBlocks(tx *store.Tx, rules []store.Rule) error {
	if d.fleet == nil || len(rules) == 0 {
		return nil
	}
	entries := make([]store.OutboxEntry, len(rules))
	for i, r := range rules {
		entries[i] = store.OutboxEntry{Rule: r}
	}
	return tx.AppendOutbox(entries...)
}

// shareUnblocks queues unblocks for the fleet, in tx.
func (d *Daemon) shareUnblocks(tx *store.Tx, prefixes []netip.Prefix, now time.Time) error {
	if d.fleet == nil || len(prefixes) == 0 {
		return nil
	}
	entries := make([]store.OutboxEntry, len(prefixes))
	for i, p := range prefixes {
		entries[i] = store.OutboxEntry{Unblock: true, Rule: store.Rule{Prefix: p, LastOffence: now}}
	}
	return tx.AppendOutbox(entries...)
}

// notifyFleet wakes the publisher after a commit that queued decisions.
func (d *Daemon) notifyFleet() {
	if d.fleet != nil {
		d.fleet.Notify()
	}
}

// FleetStatus is the fleet as GET /v1/fleet shows it.
func (d *Daemon) FleetStatus() api.FleetStatus {
	if d.fleet == nil {
		return api.FleetStatus{}
	}
	return d.fleet.Status()
}

// ApplyFleet applies blocks made elsewhere in the fleet (fleet.Local) and returns how many it
// applied. A block of an address this host allowlists is not enforced and is returned; one no
// newer than the fleet rule stored (a revision as low) is skipped. The rule keeps the absolute
// deadline it came with.
func (d *Daemon) ApplyFleet(ctx context.Context, rules []store.Rule) (int, []store.Rule, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.cfg
	now := time.Now()
	var kept []store.Rule
	fresh := make([]store.Rule, 0, len(rules))
	for _, r := range rules {
		if err := d.allow.Refuse(r.Prefix.String(), r.Prefix, netip.Addr{}, false); err != nil {
			kept = append(kept, r)
			continue
		}
		fresh = append(fresh, r)
	}
	// In prefix order, one rule per prefix (the newest revision), as MergeSorted takes them.
	slices.SortStableFunc(fresh, func(a, b store.Rule) int {
		return cmp.Or(a.Prefix.Compare(b.Prefix), -cmp.Compare(a.Revision, b.Revision))
	})
	fresh = slices.CompactFunc(fresh, func(a, b store.Rule) bool { return a.Prefix == b.Prefix })
	var applied []store.Rule
	var undo *kernelUndo
	err := d.store.Update(func(tx *store.Tx) error {
		var added [2]int
		var was kernelUndo
		err := tx.MergeSorted(fresh, func(r, old store.Rule, had bool) (store.Rule, bool, error) {
			if had && old.Origin == api.OriginFleet && old.Revision >= r.Revision {
				return store.Rule{}, false, nil // a newer fleet decision is here already
			}
			if had {
				r.Offences = max(old.Offences, 1)
			} else {
				added[store.FamilyIndex(r.Prefix.Addr().Is6())]++
			}
			if had && !old.Expired(now) {
				was.restore = append(was.restore, old.Enforced())
			} else {
				was.remove = append(was.remove, r.Prefix)
			}
			applied = append(applied, r)
			return r, true, nil
		})
		if err != nil {
			return err
		}
		if err := d.checkCapacity(cfg, added); err != nil {
			return err
		}
		undo = &was
		return d.enf.Block(ctx, toBackend(applied))
	})
	if err != nil {
		d.undoKernel("fleet block", undo)
		return 0, nil, fmt.Errorf("fleet block: %w", err)
	}
	d.logEvents(fleetBlockEvents(applied, now)...)
	if len(applied) > 0 {
		d.rec.Blocked(api.OriginFleet, len(applied))
	}
	return len(applied), kept, nil
}

// fleetEventsEach is the most fleet blocks applied at once that get an event each; more (a
// shared import) get one event per node that made them, as the import did where it was made.
const fleetEventsEach = 100

func fleetBlockEvents(applied []store.Rule, now time.Time) []api.Event {
	var evs []api.Event
	if len(applied) <= fleetEventsEach {
		for _, r := range applied {
			ev := blockEvent(r, api.OriginFleet, now)
			ev.Detail = "from " + r.Node
			evs = append(evs, ev)
		}
		return evs
	}
	perNode := map[string]int{}
	for _, r := range applied {
		perNode[r.Node]++
	}
	for _, node := range slices.Sorted(maps.Keys(perNode)) {
		evs = append(evs, api.Event{Time: now, Event: api.EventBlock, Source: api.OriginFleet,
			Detail: fmt.Sprintf("%d blocks from %s applied at once", perNode[node], node)})
	}
	return evs
}

// RemoveFleet applies unblocks made elsewhere in the fleet (fleet.Local): a fleet rule goes if
// the removal's revision is newer than its own; a rule made here goes if it was made before
// the removal (a later local decision stands).
func (d *Daemon) RemoveFleet(ctx context.Context, gone []fleet.Removal) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	var removed []store.Rule
	var undo *kernelUndo
	err := d.store.Update(func(tx *store.Tx) error {
		var prefixes []netip.Prefix
		for _, g := range gone {
			r, ok, err := tx.Rule(g.Prefix)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if r.Origin == api.OriginFleet && r.Revision >= g.Revision {
				continue
			}
			if r.Origin != api.OriginFleet && !r.LastOffence.Before(g.At) {
				continue
			}
			if _, err := tx.DeleteRule(g.Prefix); err != nil {
				return err
			}
			removed = append(removed, r)
			prefixes = append(prefixes, g.Prefix)
		}
		undo = &kernelUndo{}
		for _, r := range removed {
			if !r.Expired(now) {
				undo.restore = append(undo.restore, r.Enforced())
			}
		}
		return d.enf.Unblock(ctx, prefixes)
	})
	if err != nil {
		d.undoKernel("fleet unblock", undo)
		return 0, fmt.Errorf("fleet unblock: %w", err)
	}
	evs := make([]api.Event, 0, len(removed))
	for _, r := range removed {
		evs = append(evs, api.Event{Time: now, Event: api.EventUnblock, Address: r.Prefix.String(), Reason: r.Reason, Source: api.OriginFleet})
	}
	d.logEvents(evs...)
	if len(removed) > 0 {
		d.rec.Unblocked(len(removed))
	}
	return len(removed), nil
}

// FleetRulesNotFrom lists the stored fleet rules whose revision live refuses (fleet.Local).
func (d *Daemon) FleetRulesNotFrom(live func(revision uint64) bool) ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := d.store.View(func(tx *store.Tx) error {
		return tx.ForEachRule(func(r store.Rule) error {
			if r.Origin == api.OriginFleet && !live(r.Revision) {
				out = append(out, r.Prefix)
			}
			return nil
		})
	})
	return out, err
}

// shareImport queues the rules at(0..n-1) of an import for the fleet (read in turn), in tx,
// packed into bulk values (fleet.EncodeBulk): an import is shared in a few messages whatever its
// size, where a key per entry costs the engine a message and a subject each.
func (d *Daemon) shareImport(tx *store.Tx, n int, at func(int) store.Rule) error {
	if d.fleet == nil {
		return nil
	}
	node := d.cfg.FleetNode()
	for i := 0; i < n; {
		var value []byte
		value, i = fleet.EncodeBulk(node, i, n, at)
		if err := tx.AppendOutbox(store.OutboxEntry{Bulk: value}); err != nil {
			return err
		}
	}
	return nil
}
