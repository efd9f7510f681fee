package control

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/control/store"
)

// target is one parsed block target.
type target struct {
	text   string
	prefix netip.Prefix
	addr   netip.Addr
	single bool
}

func (d *Daemon) parseTargets(texts []string, cfg *config.Config, checkAllow bool) ([]target, error) {
	if len(texts) == 0 {
		return nil, userErrorf("no address given")
	}
	var out []target
	var errs []string
	for _, s := range texts {
		p, err := input.ParseTarget(s, cfg.TargetRules())
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		t := target{text: s, prefix: p, single: !strings.Contains(s, "/")}
		if t.single {
			t.addr = netip.MustParseAddr(strings.TrimSpace(s)).Unmap()
		}
		if checkAllow {
			if err := d.allow.Refuse(s, p, t.addr, t.single); err != nil {
				errs = append(errs, err.Error())
				continue
			}
		}
		out = append(out, t)
	}
	if len(errs) > 0 {
		return nil, userErrorf("%s; nothing changed", strings.Join(errs, "; "))
	}
	return out, nil
}

// Block blocks targets (addresses or CIDRs) with ttl ("" for the configured default, "5d",
// "permanent", ...). A source blocked before within the escalation lookback gets a longer TTL
// when no TTL is given; an explicit TTL is taken as it is. Blocking an already blocked entry
// extends it (never shortens it: unblock first for that) and counts a repeat offence.
func (d *Daemon) Block(ctx context.Context, targets []string, ttl, reason string) ([]store.Rule, error) {
	if err := input.CheckReason(reason); err != nil {
		return nil, &UserError{Err: fmt.Errorf("%w; nothing changed", err)}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.cfg
	ts, err := d.parseTargets(targets, cfg, true)
	if err != nil {
		return nil, err
	}
	base, explicit := time.Duration(cfg.Block.TTL), false
	if strings.TrimSpace(ttl) != "" {
		if base, err = input.ParseTTL(ttl); err != nil {
			return nil, &UserError{Err: err}
		}
		explicit = true
	}
	if reason == "" {
		reason = "manual"
	}
	now := time.Now()
	var out []store.Rule
	var undo *kernelUndo
	err = d.store.Update(func(tx *store.Tx) error {
		var fresh [2]int // prefixes not stored yet, per family
		for _, t := range ts {
			if _, ok, err := tx.Rule(t.prefix); err != nil {
				return err
			} else if !ok {
				fresh[store.FamilyIndex(t.prefix.Addr().Is6())]++
			}
		}
		if err := d.checkCapacity(cfg, fresh); err != nil {
			return err
		}
		seen := map[netip.Prefix]bool{}
		var was kernelUndo
		for _, t := range ts {
			if seen[t.prefix] {
				continue
			}
			seen[t.prefix] = true
			if err := was.note(tx, t.prefix, now); err != nil {
				return err
			}
			r, err := d.offendLocked(tx, cfg, t.prefix, api.OriginManual, reason, base, explicit, now)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		undo = &was
		if err := d.shareBlocks(tx, out); err != nil {
			return err
		}
		return d.enf.Block(ctx, toBackend(out))
	})
	if err != nil {
		d.undoKernel("block", undo)
		return nil, fmt.Errorf("block: %w", err)
	}
	d.notifyFleet()
	evs := make([]api.Event, 0, len(out))
	for _, r := range out {
		evs = append(evs, blockEvent(r, api.OriginManual, now))
	}
	d.logEvents(evs...)
	d.rec.Blocked(api.OriginManual, len(out))
	return out, nil
}

// checkCapacity refuses adding fresh rules (per family) beyond block.capacity. The kernel's maps
// have room above it (loader.Spec), so within capacity no block is ever evicted, and trap blocks
// stop at capacity in the kernel itself. Trap blocks count once recorded.
func (d *Daemon) checkCapacity(cfg *config.Config, fresh [2]int) error {
	for i, name := range [2]string{"IPv4", "IPv6"} {
		have := d.store.CountFamily(i == 1)
		if fresh[i] > 0 && have+fresh[i] > cfg.Block.Capacity {
			return userErrorf("block list full: %d %s entries stored, %d more would exceed block.capacity %d; unblock some or raise block.capacity (nothing was changed)",
				have, name, fresh[i], cfg.Block.Capacity)
		}
	}
	return nil
}

// offendLocked records one offence of prefix and returns the rule as stored: escalated TTL
// (unless explicit), deadline extended, offence counted.
func (d *Daemon) offendLocked(tx *store.Tx, cfg *config.Config, p netip.Prefix, origin, reason string, base time.Duration, explicit bool, now time.Time) (store.Rule, error) {
	old, exists, err := tx.Rule(p)
	if err != nil {
		return store.Rule{}, err
	}
	hist := tx.Offence(p)
	prior := priorOffences(hist, now, cfg.Block.Escalation)
	ttl := base
	if !explicit {
		ttl = EscalatedTTL(base, prior, cfg.Block.Escalation)
	}
	r := store.Rule{Prefix: p, Reason: reason, Origin: origin, Created: now, Offences: prior + 1, LastOffence: now}
	if ttl != 0 {
		r.Deadline = now.Add(ttl)
	}
	if exists && !old.Expired(now) {
		r.Created = old.Created
		if laterDeadline(old.Deadline, r.Deadline) {
			r.Deadline = old.Deadline // blocking again extends, never shortens (unblock first for that)
		}
	}
	if err := tx.PutOffence(p, store.Offence{Count: prior + 1, Last: now}); err != nil {
		return store.Rule{}, err
	}
	if err := tx.PutRule(r); err != nil {
		return store.Rule{}, err
	}
	return r, nil
}

// kernelUndo puts the kernel back after a change the store refused once the kernel had it (the
// commit failed: a full disk): what was not blocked before is removed, what was gets its rule
// back. A change writes the kernel before its store transaction commits, so that a kernel that
// refuses it changes nothing in the store either.
type kernelUndo struct {
	remove  []netip.Prefix // blocked by the change only
	restore []backend.Rule // the rules the change replaced or removed
}

// note records, in the transaction that is about to change p, what the kernel has to go back to.
func (u *kernelUndo) note(tx *store.Tx, p netip.Prefix, now time.Time) error {
	old, ok, err := tx.Rule(p)
	if err != nil {
		return err
	}
	if ok && !old.Expired(now) {
		u.restore = append(u.restore, old.Enforced())
	} else {
		u.remove = append(u.remove, p)
	}
	return nil
}

// undoKernel puts the kernel back as u says; nil u: the kernel was not written. It runs with a
// background context: the undo must run even when the request was cancelled.
func (d *Daemon) undoKernel(change string, u *kernelUndo) {
	if u == nil {
		return
	}
	ctx := context.Background()
	if err := errors.Join(d.enf.Unblock(ctx, u.remove), d.enf.Block(ctx, u.restore)); err != nil {
		d.log.Error("put the kernel back after a refused change; the next sweep reconciles", "change", change, "err", err)
	}
}

func toBackend(rules []store.Rule) []backend.Rule {
	out := make([]backend.Rule, len(rules))
	for i, r := range rules {
		out[i] = r.Enforced()
	}
	return out
}

func ttlText(r store.Rule, now time.Time) string {
	if r.Permanent() {
		return "permanent"
	}
	return input.FormatDuration(r.Deadline.Sub(now).Round(time.Second))
}

func blockEvent(r store.Rule, source string, now time.Time) api.Event {
	return api.Event{Time: now, Event: api.EventBlock, Address: r.Prefix.String(), Reason: r.Reason, TTL: ttlText(r, now),
		Expires: r.Deadline, Source: source, Offences: r.Offences}
}

func (d *Daemon) logEvents(evs ...api.Event) {
	if len(evs) == 0 {
		return
	}
	if err := d.events.Log(evs...); err != nil {
		d.log.Error("event log", "err", err)
	}
}

// Unblock removes blocks. Targets that were not blocked are named in notFound.
func (d *Daemon) Unblock(ctx context.Context, targets []string) (removed, notFound []string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.cfg
	ts, err := d.parseTargets(targets, cfg, false)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	var gone []store.Rule
	var undo *kernelUndo
	err = d.store.Update(func(tx *store.Tx) error {
		var prefixes []netip.Prefix
		for _, t := range ts {
			prefixes = append(prefixes, t.prefix)
			r, ok, err := tx.Rule(t.prefix)
			if err != nil {
				return err
			}
			if !ok {
				notFound = append(notFound, t.text)
				continue
			}
			if _, err := tx.DeleteRule(t.prefix); err != nil {
				return err
			}
			gone = append(gone, r)
			removed = append(removed, t.prefix.String())
		}
		// Put back if the commit fails: the store's rules (a trap block it does not know yet
		// is not put back).
		undo = &kernelUndo{}
		for _, r := range gone {
			if !r.Expired(now) {
				undo.restore = append(undo.restore, r.Enforced())
			}
		}
		// The fleet gets every unblock asked for: another host may hold the block this one lacks.
		if err := d.shareUnblocks(tx, prefixes, now); err != nil {
			return err
		}
		// Also prefixes the store does not know: a trap block not yet adopted must go too.
		return d.enf.Unblock(ctx, prefixes)
	})
	if err != nil {
		d.undoKernel("unblock", undo)
		return nil, nil, fmt.Errorf("unblock: %w", err)
	}
	d.notifyFleet()
	var evs []api.Event
	for _, r := range gone {
		evs = append(evs, api.Event{Time: now, Event: api.EventUnblock, Address: r.Prefix.String(), Reason: r.Reason, Source: api.OriginManual})
	}
	d.logEvents(evs...)
	if len(gone) > 0 {
		d.rec.Unblocked(len(gone))
	}
	return removed, notFound, nil
}
