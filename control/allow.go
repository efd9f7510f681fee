package control

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/control/store"
)

// RefreshImplicitAllow rediscovers the host's own addresses, gateways and resolvers (they change
// with DHCP, VPNs, new interfaces) and hands a changed allowlist to the enforcer. The sweeper
// calls it every interval.
func (d *Daemon) RefreshImplicitAllow(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.cfg.AllowImplicit {
		return nil
	}
	imp, err := d.opts.ImplicitAllow()
	if err != nil {
		return err
	}
	if slices.Equal(imp, d.implicit) {
		return nil
	}
	old := d.implicit
	d.implicit = imp
	if err := d.refreshAllowLocked(ctx, false); err != nil {
		d.implicit = old
		return err
	}
	d.log.Info("implicit allowlist changed", "entries", len(imp))
	return nil
}

// refreshAllowLocked recomputes the allowlist (rediscovering the implicit part when asked) and
// hands it to the enforcer.
func (d *Daemon) refreshAllowLocked(ctx context.Context, rediscover bool) error {
	cfg := d.cfg
	if rediscover {
		d.implicit = nil
		if cfg.AllowImplicit {
			imp, err := d.opts.ImplicitAllow()
			if err != nil {
				return fmt.Errorf("discover implicit allowlist: %w", err)
			}
			d.implicit = imp
		}
	}
	list := slices.Clone(d.implicit)
	for _, s := range cfg.Allow {
		p, err := input.ParseAllowPrefix(s)
		if err != nil {
			return fmt.Errorf("allow: %w", err)
		}
		list = append(list, AllowItem{p, api.AllowConfig})
	}
	var manual []store.AllowRecord
	if err := d.store.View(func(tx *store.Tx) error {
		var err error
		manual, err = tx.Allow()
		return err
	}); err != nil {
		return fmt.Errorf("read allowlist: %w", err)
	}
	for _, m := range manual {
		list = append(list, AllowItem{m.Prefix, api.AllowManual})
	}
	list = dedupeAllow(list)
	if err := d.enf.SetAllow(ctx, list.Prefixes()); err != nil {
		return fmt.Errorf("set allowlist: %w", err)
	}
	changed := d.allow == nil || !slices.Equal(d.allow.Prefixes(), list.Prefixes())
	d.allow = list
	if !changed {
		return nil
	}
	return d.dropAllowlistedLocked(ctx, list)
}

// dropAllowlistedLocked removes the blocks that lie inside the allowlist: an address blocked
// before it was allowlisted (by hand, or an own address or gateway that appeared later). The
// allowlist always wins, and the data path checks it only on CIDR and trap matches, so such a
// block must not stay in the exact-match map.
func (d *Daemon) dropAllowlistedLocked(ctx context.Context, allow Allowlist) error {
	if len(allow) == 0 {
		return nil
	}
	// Find them in a read transaction: at every start (and every allowlist change) this runs
	// over a store that may hold a million rules and usually none inside the allowlist, and a
	// write transaction would be committed and fsynced for nothing.
	var gone []store.Rule
	seen := map[netip.Prefix]bool{} // allow prefixes may overlap
	err := d.store.View(func(tx *store.Tx) error {
		for _, a := range allow {
			err := tx.RulesWithin(a.Prefix, func(r store.Rule) error {
				if !seen[r.Prefix] {
					seen[r.Prefix] = true
					gone = append(gone, r)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("find allowlisted blocks: %w", err)
	}
	if len(gone) == 0 {
		return nil
	}
	err = d.store.Update(func(tx *store.Tx) error {
		ps := make([]netip.Prefix, len(gone))
		for i, r := range gone {
			ps[i] = r.Prefix
			if _, err := tx.DeleteRule(r.Prefix); err != nil {
				return err
			}
		}
		return d.enf.Unblock(ctx, ps)
	})
	if err != nil {
		return fmt.Errorf("remove allowlisted blocks: %w", err)
	}
	now := time.Now()
	var evs []api.Event
	for _, r := range gone {
		evs = append(evs, api.Event{Time: now, Event: api.EventUnblock, Address: r.Prefix.String(), Reason: r.Reason,
			Source: "daemon", Detail: "the address is allowlisted now"})
	}
	d.logEvents(evs...)
	if len(gone) > 0 {
		d.rec.Unblocked(len(gone))
	}
	return nil
}

// Allowlist returns the whole allowlist, implicit entries included.
func (d *Daemon) Allowlist() []api.AllowEntry {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.AllowEntry, 0, len(d.allow))
	for _, it := range d.allow {
		out = append(out, api.AllowEntry{Prefix: it.Prefix.String(), Source: it.Source})
	}
	return out
}

// AllowAdd adds hand-made allowlist entries (durable).
func (d *Daemon) AllowAdd(ctx context.Context, targets []string) error {
	return d.changeAllow(ctx, targets, true)
}

// AllowDel removes hand-made allowlist entries; entries from the config or implicit ones
// cannot be removed this way.
func (d *Daemon) AllowDel(ctx context.Context, targets []string) error {
	return d.changeAllow(ctx, targets, false)
}

func (d *Daemon) changeAllow(ctx context.Context, targets []string, add bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(targets) == 0 {
		return userErrorf("no address given")
	}
	var ps []netip.Prefix
	var errs []string
	for _, s := range targets {
		p, err := input.ParseAllowPrefix(s)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		ps = append(ps, p)
	}
	if len(errs) > 0 {
		return userErrorf("%s; nothing changed", strings.Join(errs, "; "))
	}
	now := time.Now()
	if !add {
		for _, p := range ps {
			var from []string
			manual := false
			for _, it := range d.allow {
				if it.Prefix == p {
					if it.Source == api.AllowManual {
						manual = true
					} else {
						from = append(from, it.Source)
					}
				}
			}
			switch {
			case !manual && len(from) > 0:
				return userErrorf("%s is allowlisted by %s, not by hand: change the config (allow, allow_implicit) instead; nothing changed", p, strings.Join(from, ", "))
			case !manual:
				return userErrorf("%s is not in the allowlist; nothing changed", p)
			}
		}
	}
	old := d.allow
	err := d.store.Update(func(tx *store.Tx) error {
		for _, p := range ps {
			if add {
				if err := tx.PutAllow(store.AllowRecord{Prefix: p, Created: now}); err != nil {
					return err
				}
			} else if _, err := tx.DeleteAllow(p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store allowlist: %w", err)
	}
	if err := d.refreshAllowLocked(ctx, false); err != nil {
		// Put the store back so the durable state matches what is enforced.
		_ = d.store.Update(func(tx *store.Tx) error {
			for _, p := range ps {
				if add {
					_, _ = tx.DeleteAllow(p)
				} else {
					_ = tx.PutAllow(store.AllowRecord{Prefix: p, Created: now})
				}
			}
			return nil
		})
		d.allow = old
		return err
	}
	kind := api.EventAllow
	if !add {
		kind = api.EventDisallow
	}
	var evs []api.Event
	for _, p := range ps {
		evs = append(evs, api.Event{Time: now, Event: kind, Address: p.String(), Source: api.OriginManual})
	}
	d.logEvents(evs...)
	return nil
}
