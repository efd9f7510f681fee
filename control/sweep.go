package control

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control/store"

	"github.com/snare-dev/snare/control/api"

	"github.com/snare-dev/snare/backend"
)

// offencePruneInterval is how often the sweeper forgets offence histories older than the lookback.
const offencePruneInterval = time.Hour

// SweepResult says what one sweep did.
type SweepResult struct {
	Expired  int // blocks removed at their deadline
	Evicted  int // blocks missing from the kernel, re-inserted
	Adopted  int // trap blocks found in the kernel that the store lacked
	Stale    int // kernel entries the store does not know (removed)
	Duration time.Duration
}

// fullReconcileEvery is how many sweeps may pass between full reconciliations when the kernel's
// entry count matches the store's (an eviction and an unreported trap block in the same interval
// would cancel out in the counts).
const fullReconcileEvery = 30

// Sweep removes expired blocks from store and kernel (the data path already ignores them; this
// reclaims memory and logs each expiry) and reconciles the kernel with the store: blocks the
// kernel lost (LRU eviction, a flushed firewall) are re-inserted and counted, trap blocks the
// kernel made without an event reaching us are adopted, and entries nobody knows are removed.
//
// It is cheap when nothing happened: the store is walked only when a deadline is due, and the
// kernel's rules are read in full only when its entry count differs from the store's (and every
// fullReconcileEvery sweeps).
func (d *Daemon) Sweep(ctx context.Context) (SweepResult, error) {
	start := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.cfg
	now := time.Now()
	var res SweepResult

	var expired []netip.Prefix
	var shown []store.Rule // the first maxExpireEvents of them, for the event log
	// The kernel drops expired entries while the store deletes them: the data path already
	// ignores an entry past its deadline, so neither order can open a gap.
	var kernelDone chan error
	if d.store.Due(now) || now.Sub(d.lastPrune) >= offencePruneInterval {
		err := d.store.Update(func(tx *store.Tx) error {
			var err error
			if expired, shown, err = tx.ExpiredPrefixes(now, maxExpireEvents); err != nil {
				return err
			}
			if len(expired) > 0 {
				kernelDone = make(chan error, 1)
				go func() { kernelDone <- d.enf.Unblock(ctx, expired) }()
				if err := tx.DeleteExpired(now); err != nil {
					return err
				}
			}
			if now.Sub(d.lastPrune) >= offencePruneInterval {
				if _, err := tx.PruneOffences(now.Add(-time.Duration(cfg.Block.Escalation.Lookback))); err != nil {
					return err
				}
			}
			return nil
		})
		var kerr error
		if kernelDone != nil {
			kerr = <-kernelDone
		}
		if err != nil {
			return res, fmt.Errorf("sweep: expire: %w", err)
		}
		if kerr != nil {
			return res, fmt.Errorf("sweep: remove %d expired entries from the kernel: %w", len(expired), kerr)
		}
		if now.Sub(d.lastPrune) >= offencePruneInterval {
			d.lastPrune = now
		}
	}
	if len(expired) > 0 {
		res.Expired = len(expired)
		evs := expireEvents(shown, now)
		if more := len(expired) - len(shown); more > 0 {
			evs = append(evs, api.Event{Time: now, Event: api.EventExpire, Source: "sweep",
				Detail: fmt.Sprintf("and %d more entries expired", more)})
		}
		d.logEvents(evs...)
		d.rec.Expired(res.Expired)
	}

	d.sweeps++
	full := d.sweeps%fullReconcileEvery == 0
	if !full {
		st, err := d.enf.Status(ctx)
		if err != nil {
			return res, fmt.Errorf("sweep: enforcer status: %w", err)
		}
		full = st.Counters.Entries != d.store.Count()
	}
	if full {
		if err := d.reconcileLocked(ctx, cfg, now, &res); err != nil {
			return res, err
		}
	}
	res.Duration = time.Since(start)
	d.rec.SweepDuration(res.Duration)
	d.rec.StoreSize(d.store.Size())
	return res, nil
}

// reconcileLocked walks the kernel's rules and the store's in the same (prefix) order and
// repairs the differences.
func (d *Daemon) reconcileLocked(ctx context.Context, cfg *config.Config, now time.Time, res *SweepResult) error {
	kernel, err := d.enf.Rules(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: read enforced rules: %w", err)
	}
	sortStates(kernel)
	var missing []store.Rule
	var unknown []backend.RuleState
	i := 0
	err = d.store.View(func(tx *store.Tx) error {
		return tx.ForEachRule(func(r store.Rule) error {
			for i < len(kernel) && kernel[i].Prefix.Compare(r.Prefix) < 0 {
				unknown = append(unknown, kernel[i])
				i++
			}
			if i < len(kernel) && kernel[i].Prefix == r.Prefix {
				i++
				return nil
			}
			if !r.Expired(now) {
				missing = append(missing, r)
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("reconcile: read store: %w", err)
	}
	unknown = append(unknown, kernel[i:]...)
	kernel = nil

	var adopt []backend.RuleState
	var stale []netip.Prefix
	for _, k := range unknown {
		if k.FromTrap && (k.Deadline.IsZero() || k.Deadline.After(now)) {
			adopt = append(adopt, k)
		} else {
			stale = append(stale, k.Prefix)
		}
	}
	if len(stale) > 0 {
		if err := d.enf.Unblock(ctx, stale); err != nil {
			return fmt.Errorf("reconcile: remove %d unknown entries: %w", len(stale), err)
		}
		res.Stale = len(stale)
	}
	if len(missing) > 0 {
		if err := d.enf.Block(ctx, toBackend(missing)); err != nil {
			return fmt.Errorf("reconcile: re-insert %d evicted blocks: %w", len(missing), err)
		}
		res.Evicted = len(missing)
		d.evictions.Add(uint64(len(missing)))
		d.rec.Evicted(len(missing))
		d.log.Warn("blocks were missing from the kernel (evicted or flushed); re-inserted", "count", len(missing))
		var evs []api.Event
		for j, r := range missing {
			if j == maxExpireEvents {
				evs = append(evs, api.Event{Time: now, Event: api.EventEvict, Source: "sweep",
					Detail: fmt.Sprintf("and %d more re-inserted", len(missing)-j)})
				break
			}
			evs = append(evs, api.Event{Time: now, Event: api.EventEvict, Address: r.Prefix.String(), Reason: r.Reason,
				Expires: r.Deadline, Source: "sweep", Detail: "missing from the kernel, re-inserted"})
		}
		d.logEvents(evs...)
	}
	rules, err := d.adoptLocked(ctx, cfg, adopt, now)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	res.Adopted = len(rules)
	d.logEvents(adoptEvents(rules, now)...)
	return nil
}

// adoptLocked records trap blocks the kernel made without their event reaching the daemon (it
// was down, or the event was suppressed) like any trap block, writes their escalated deadlines
// back to the kernel and counts them. A trap block the allowlist now covers (it changed while
// the daemon was down) is removed from the kernel instead: the allowlist always wins.
func (d *Daemon) adoptLocked(ctx context.Context, cfg *config.Config, trapped []backend.RuleState, now time.Time) ([]store.Rule, error) {
	var adopt []backend.RuleState
	var allowed []netip.Prefix
	var evs []api.Event
	for _, k := range trapped {
		if it, ok := d.allow.Covers(k.Prefix); ok {
			allowed = append(allowed, k.Prefix)
			evs = append(evs, api.Event{Time: now, Event: api.EventUnblock, Address: k.Prefix.String(), Source: "daemon",
				Detail: fmt.Sprintf("trap block found in the kernel, but %s is allowlisted now (%s)", it.Prefix, it.Source)})
			continue
		}
		adopt = append(adopt, k)
	}
	if len(allowed) > 0 {
		if err := d.enf.Unblock(ctx, allowed); err != nil {
			return nil, fmt.Errorf("remove %d allowlisted trap blocks: %w", len(allowed), err)
		}
		d.logEvents(evs...)
		d.rec.Unblocked(len(allowed))
	}
	if len(adopt) == 0 {
		return nil, nil
	}
	var rules []store.Rule
	err := d.store.Update(func(tx *store.Tx) error {
		for _, k := range adopt {
			r, err := d.offendLocked(tx, cfg, k.Prefix, api.OriginTrap, adoptReason, time.Duration(cfg.Block.TTL), false, now)
			if err != nil {
				return err
			}
			rules = append(rules, r)
		}
		if err := d.shareBlocks(tx, rules); err != nil {
			return err
		}
		// The escalated deadline goes back to the kernel.
		return d.enf.Block(ctx, toBackend(rules))
	})
	if err != nil {
		return nil, fmt.Errorf("adopt %d trap blocks: %w", len(adopt), err)
	}
	d.notifyFleet()
	d.rec.Blocked(api.OriginTrap, len(rules))
	return rules, nil
}

// adoptEvents are the event log's lines for adopted trap blocks (the first maxExpireEvents).
func adoptEvents(rules []store.Rule, now time.Time) []api.Event {
	var evs []api.Event
	for j, r := range rules {
		if j == maxExpireEvents {
			evs = append(evs, api.Event{Time: now, Event: api.EventBlock, Source: api.OriginTrap,
				Detail: fmt.Sprintf("and %d more trap blocks adopted from the kernel", len(rules)-j)})
			break
		}
		evs = append(evs, blockEvent(r, api.OriginTrap, now))
	}
	return evs
}

// adoptReason is the reason of a trap block found in the kernel without its event.
const adoptReason = "trap (blocked by the kernel, event not received)"

// maxExpireEvents bounds the per-entry expire events of one sweep; the rest are summarised.
const maxExpireEvents = 10000

func expireEvents(rules []store.Rule, now time.Time) []api.Event {
	var evs []api.Event
	for i, r := range rules {
		if i == maxExpireEvents {
			evs = append(evs, api.Event{Time: now, Event: api.EventExpire, Source: "sweep",
				Detail: fmt.Sprintf("and %d more entries expired", len(rules)-maxExpireEvents)})
			break
		}
		evs = append(evs, api.Event{Time: now, Event: api.EventExpire, Address: r.Prefix.String(), Reason: r.Reason,
			Expires: r.Deadline, Source: "sweep"})
	}
	return evs
}

func (d *Daemon) sweepLoop(ctx context.Context) {
	for {
		interval := time.Duration(d.Config().Sweep.Interval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		if err := d.RefreshImplicitAllow(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("rediscover implicit allowlist", "err", err)
		}
		res, err := d.Sweep(ctx)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("sweep", "err", err)
			}
			continue
		}
		if res.Expired+res.Evicted+res.Adopted+res.Stale > 0 {
			d.log.Info("sweep", "expired", res.Expired, "evicted", res.Evicted, "adopted", res.Adopted, "stale", res.Stale, "took", res.Duration)
		}
	}
}
