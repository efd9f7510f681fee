package fleet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snare-dev/snare/control/store"
)

// watchBatch is how many bucket updates are applied to the daemon at once.
const watchBatch = 4096

// watch applies the bucket's keys to this host: first every current key (then a reconcile drops
// the fleet rules whose key is gone), then every change as it comes.
func (n *Node) watch(ctx context.Context, w jetstream.KeyWatcher) error {
	initial := true
	// The revisions of the values in the initial state: a fleet rule came from one of them, or
	// its key or bulk value is gone (a set of one number per key, where a set of the prefixes
	// of a million shared blocks would cost a catching-up host some 60 MB).
	live := map[uint64]bool{}
	var puts []store.Rule
	var dels []Removal
	apply := func() {
		if len(puts) > 0 {
			applied, kept, err := n.local.ApplyFleet(ctx, puts)
			if err != nil {
				n.refused.Add(uint64(len(puts)))
				n.log.Error("apply fleet blocks", "blocks", len(puts), "err", err)
			} else {
				n.received.Add(uint64(applied))
				n.noteAllowlisted(kept)
			}
			puts = puts[:0]
		}
		if len(dels) > 0 {
			if _, err := n.local.RemoveFleet(ctx, dels); err != nil {
				n.log.Error("apply fleet unblocks", "unblocks", len(dels), "err", err)
			} else {
				n.received.Add(uint64(len(dels)))
			}
			dels = dels[:0]
		}
	}
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case e, ok = <-w.Updates():
		}
		for {
			if !ok {
				return errors.New("bucket watcher closed")
			}
			if e == nil { // the initial state is all delivered
				apply()
				if err := n.reconcile(ctx, live); err != nil {
					return err
				}
				initial, live = false, nil
				n.setConnected(true)
			} else {
				if rm, ok := n.entry(e, initial, &puts); ok {
					dels = append(dels, rm)
				}
				if initial && e.Operation() == jetstream.KeyValuePut {
					live[e.Revision()] = true
				}
			}
			if len(puts)+len(dels) >= watchBatch {
				break
			}
			select {
			case e, ok = <-w.Updates():
				continue
			default:
			}
			break
		}
		apply()
	}
}

// entry turns one bucket entry into the blocks to apply (appended to puts) or a removal (ok);
// nothing when there is nothing to do here: this node's own blocks, expired ones, or bad values
// (refused, counted and logged).
func (n *Node) entry(e jetstream.KeyValueEntry, initial bool, puts *[]store.Rule) (rm Removal, ok bool) {
	now := time.Now()
	if e.Operation() != jetstream.KeyValuePut {
		if IsBulkKey(e.Key()) || n.ownDelete(e.Key()) {
			// A bulk value's blocks end at their own deadlines; this host unblocked it already.
			return Removal{}, false
		}
		p, err := ParseKey(e.Key())
		if err != nil {
			n.refuse(err)
			return Removal{}, false
		}
		return Removal{Prefix: p, Revision: e.Revision(), At: e.Created()}, true
	}
	var rules []store.Rule
	var node string
	if IsBulkKey(e.Key()) {
		var refused int
		var bad, err error
		rules, node, refused, bad, err = n.limits.decodeBulk(e.Key(), e.Value(), e.Revision(), now)
		if err != nil {
			n.refuse(err)
			return Removal{}, false
		}
		if refused > 0 {
			n.refused.Add(uint64(refused - 1))
			n.refuse(fmt.Errorf("%w (and %d more blocks of the bulk value)", bad, refused-1))
		}
	} else {
		r, err := n.limits.decode(e.Key(), e.Value(), e.Revision(), now)
		switch {
		case errors.Is(err, errExpired):
			return Removal{}, false
		case err != nil:
			n.refuse(err)
			return Removal{}, false
		}
		rules, node = []store.Rule{r}, r.Node
	}
	if node == n.name {
		return Removal{}, false // this host has them already
	}
	*puts = append(*puts, rules...)
	n.mu.Lock()
	n.peers[node] = now
	if !initial && len(rules) > 0 {
		n.lag = now.Sub(rules[0].LastOffence)
	}
	n.mu.Unlock()
	return Removal{}, false
}

// noteAllowlisted counts and logs the fleet blocks the allowlist kept out, each revision once.
func (n *Node) noteAllowlisted(kept []store.Rule) {
	n.mu.Lock()
	var fresh []netip.Prefix
	for _, r := range kept {
		if n.allowlistedSeen[r.Prefix] != r.Revision {
			n.allowlistedSeen[r.Prefix] = r.Revision
			fresh = append(fresh, r.Prefix)
		}
	}
	n.mu.Unlock()
	n.allowlisted.Add(uint64(len(fresh)))
	for i, p := range fresh {
		if i == 10 {
			n.log.Warn("more fleet blocks of allowlisted addresses not enforced here", "more", len(fresh)-i)
			break
		}
		n.log.Warn("fleet block of an allowlisted address not enforced here", "prefix", p)
	}
}

func (n *Node) refuse(err error) {
	n.refused.Add(1)
	n.refuseLog.Do(func() {
		n.log.Warn("refused a value from the fleet", "err", err, "refused_total", n.refused.Load())
	})
}

// reconcile drops the fleet rules that came from a value the bucket no longer holds (unblocked
// or expired while this host was away, the delete markers maybe purged since). It runs after the
// current values are applied, so that no still-valid block is ever missing meanwhile.
func (n *Node) reconcile(ctx context.Context, live map[uint64]bool) error {
	stale, err := n.local.FleetRulesNotFrom(func(rev uint64) bool { return live[rev] })
	if err != nil {
		return err
	}
	if len(stale) == 0 {
		return nil
	}
	gone := make([]Removal, len(stale))
	now := time.Now()
	for i, p := range stale {
		gone[i] = Removal{Prefix: p, Revision: math.MaxUint64, At: now}
	}
	dropped, err := n.local.RemoveFleet(ctx, gone)
	if err != nil {
		return err
	}
	n.log.Info("reconciled with the fleet", "dropped", dropped)
	return nil
}
