package control

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"time"

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

	var expired []Rule
	if d.store.Due(now) || now.Sub(d.lastPrune) >= offencePruneInterval {
		var next time.Time
		err := d.store.Update(func(tx *Tx) error {
			var err error
			expired, next, err = tx.DeleteExpired(now)
			if err != nil {
				return err
			}
			if now.Sub(d.lastPrune) >= offencePruneInterval {
				if _, err := tx.PruneOffences(now.Add(-time.Duration(cfg.Block.Escalation.Lookback))); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("sweep: expire: %w", err)
		}
		d.store.setEarliest(next)
		if now.Sub(d.lastPrune) >= offencePruneInterval {
			d.lastPrune = now
		}
	}
	if len(expired) > 0 {
		ps := make([]netip.Prefix, len(expired))
		for i, r := range expired {
			ps[i] = r.Prefix
		}
		if err := d.enf.Unblock(ctx, ps); err != nil {
			return res, fmt.Errorf("sweep: remove %d expired entries from the kernel: %w", len(ps), err)
		}
		res.Expired = len(expired)
		d.logEvents(expireEvents(expired, now)...)
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
func (d *Daemon) reconcileLocked(ctx context.Context, cfg *Config, now time.Time, res *SweepResult) error {
	kernel, err := d.enf.Rules(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: read enforced rules: %w", err)
	}
	slices.SortFunc(kernel, func(a, b backend.RuleState) int { return a.Prefix.Compare(b.Prefix) })
	var missing []Rule
	var unknown []backend.RuleState
	i := 0
	err = d.store.View(func(tx *Tx) error {
		return tx.ForEachRule(func(r Rule) error {
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
		var evs []Event
		for j, r := range missing {
			if j == maxExpireEvents {
				evs = append(evs, Event{Time: now, Event: EventEvict, Source: "sweep",
					Detail: fmt.Sprintf("and %d more re-inserted", len(missing)-j)})
				break
			}
			evs = append(evs, Event{Time: now, Event: EventEvict, Address: r.Prefix.String(), Reason: r.Reason,
				Expires: r.Deadline, Source: "sweep", Detail: "missing from the kernel, re-inserted"})
		}
		d.logEvents(evs...)
	}
	if len(adopt) > 0 {
		var rules []Rule
		err := d.store.Update(func(tx *Tx) error {
			for _, k := range adopt {
				r, err := d.offendLocked(tx, cfg, k.Prefix, OriginTrap, adoptReason, time.Duration(cfg.Block.TTL), false, now)
				if err != nil {
					return err
				}
				rules = append(rules, r)
			}
			// The escalated deadline goes back to the kernel.
			return d.enf.Block(ctx, toBackend(rules))
		})
		if err != nil {
			return fmt.Errorf("reconcile: adopt %d trap blocks: %w", len(adopt), err)
		}
		res.Adopted = len(rules)
		var evs []Event
		for j, r := range rules {
			if j == maxExpireEvents {
				evs = append(evs, Event{Time: now, Event: EventBlock, Source: OriginTrap,
					Detail: fmt.Sprintf("and %d more trap blocks adopted from the kernel", len(rules)-j)})
				break
			}
			evs = append(evs, blockEvent(r, OriginTrap, now))
		}
		d.logEvents(evs...)
		d.rec.Blocked(OriginTrap, len(rules))
	}
	return nil
}

// adoptReason is the reason of a trap block found in the kernel without its event.
const adoptReason = "trap (blocked by the kernel, event not received)"

// Import blocks every entry of a block list. Dated lines (blocked.list) keep their dates: a line
// dated D expires at D + TTL, and lines already past that are skipped and counted as Expired.
// Any bad line rejects the whole import unless SkipBad. Everything is written in one store
// transaction and one enforcer batch.
func (d *Daemon) Import(ctx context.Context, req ImportRequest) (ImportResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.cfg
	now := time.Now()
	name := req.Name
	if name == "" {
		name = "import"
	}
	ttl := time.Duration(cfg.Block.TTL)
	if strings.TrimSpace(req.TTL) != "" {
		var err error
		if ttl, err = ParseTTL(req.TTL); err != nil {
			return ImportResponse{}, &UserError{Err: err}
		}
	}
	reason := req.Reason
	if reason == "" {
		reason = "import " + name
	}
	good, errs, bad := ParseBlockList(req.Content, cfg.TargetRules(), now)
	// Allowlisted targets are bad lines too.
	kept := good[:0]
	for _, l := range good {
		if err := d.allow.Refuse(l.Target, l.Prefix, l.Addr, l.Single); err != nil {
			bad++
			if len(errs) < maxImportLineErrors {
				errs = append(errs, LineError{Line: l.Line, Text: l.Target, Error: err.Error()})
			}
			continue
		}
		kept = append(kept, l)
	}
	good = kept
	slices.SortFunc(errs, func(a, b LineError) int { return a.Line - b.Line })
	if bad > 0 && !req.SkipBad {
		return ImportResponse{Errors: errs, Skipped: bad}, &UserError{Err: importError(name, errs, bad)}
	}
	resp := ImportResponse{Skipped: bad, Errors: errs}

	rules := make([]Rule, 0, len(good))
	for _, l := range good {
		r := Rule{Prefix: l.Prefix, Reason: reason, Origin: OriginImport, Created: now}
		if !l.Date.IsZero() {
			r.Created = l.Date
		}
		if ttl != 0 {
			r.Deadline = r.Created.Add(ttl)
			if !r.Deadline.After(now) {
				resp.Expired++
				continue
			}
		}
		rules = append(rules, r)
	}
	// One rule per prefix: the latest deadline wins.
	slices.SortFunc(rules, func(a, b Rule) int { return a.Prefix.Compare(b.Prefix) })
	if len(rules) > 1 {
		w := 0
		for _, r := range rules[1:] {
			if r.Prefix == rules[w].Prefix {
				if laterDeadline(r.Deadline, rules[w].Deadline) {
					rules[w].Deadline = r.Deadline
				}
				continue
			}
			w++
			rules[w] = r
		}
		rules = rules[:w+1]
	}
	good = nil // the parsed lines are not needed any more: let a big import's memory go
	err := d.store.Update(func(tx *Tx) error {
		for i := range rules {
			if i == 0 && tx.Empty() {
				break // nothing to merge with (the common first import)
			}
			old, ok, err := tx.Rule(rules[i].Prefix)
			if err != nil {
				return err
			}
			if ok && !old.Expired(now) {
				// Already blocked: keep what it is, extended to the later deadline.
				if laterDeadline(rules[i].Deadline, old.Deadline) {
					old.Deadline = rules[i].Deadline
				}
				rules[i] = old
			}
		}
		if err := tx.PutRulesSorted(rules); err != nil {
			return err
		}
		return d.enf.Block(ctx, toBackend(rules))
	})
	if err != nil {
		return ImportResponse{}, fmt.Errorf("import %s: %w", name, err)
	}
	resp.Imported = len(rules)
	if len(rules) >= bigBatch {
		go debug.FreeOSMemory() // an import's buffers are garbage now: give the memory back
	}
	d.logEvents(Event{Time: now, Event: EventBlock, Source: OriginImport, Reason: reason, TTL: FormatTTL(ttl),
		Detail: fmt.Sprintf("imported %d entries from %s (%d already expired, %d bad lines skipped)", resp.Imported, name, resp.Expired, resp.Skipped)})
	d.rec.Blocked(OriginImport, resp.Imported)
	return resp, nil
}

// bigBatch is the size from which an import or restore hands its buffers back to the OS at once.
const bigBatch = 100_000

// laterDeadline reports whether deadline a is later than b (zero is permanent, the latest).
func laterDeadline(a, b time.Time) bool {
	if b.IsZero() {
		return false
	}
	return a.IsZero() || a.After(b)
}

func importError(name string, errs []LineError, bad int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d bad line", name, bad)
	if bad != 1 {
		b.WriteString("s")
	}
	b.WriteString(", nothing imported (--skip-bad imports the good lines):")
	for i, e := range errs {
		if i == 20 {
			fmt.Fprintf(&b, "\n  ... and %d more", bad-i)
			break
		}
		fmt.Fprintf(&b, "\n  line %d: %s", e.Line, e.Error)
	}
	return fmt.Errorf("%s", b.String())
}

// Export writes every active block in format (FormatBlockedList or FormatPlain).
func (d *Daemon) Export(w io.Writer, format string) error {
	switch format {
	case "", FormatBlockedList:
		format = FormatBlockedList
	case FormatPlain:
	default:
		return userErrorf("unknown export format %q (want %s or %s)", format, FormatBlockedList, FormatPlain)
	}
	bw := bufio.NewWriterSize(w, 256<<10)
	now := time.Now()
	err := d.store.View(func(tx *Tx) error {
		return tx.ForEachRule(func(r Rule) error {
			if r.Expired(now) {
				return nil
			}
			return exportLine(bw, format, r)
		})
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}
