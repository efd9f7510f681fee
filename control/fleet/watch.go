package fleet

import (
	"context"
	"errors"
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
	seen := map[netip.Prefix]bool{} // keys holding a block in the initial state
	var puts []store.Rule
	var dels []Removal
	apply := func() {
		if len(puts) > 0 {
			kept, err := n.local.ApplyFleet(ctx, puts)
			if err != nil {
				n.refused.Add(uint64(len(puts)))
				n.log.Error("apply fleet blocks", "blocks", len(puts), "err", err)
			} else {
				n.received.Add(uint64(len(puts) - len(kept)))
				n.allowlisted.Add(uint64(len(kept)))
				for i, p := range kept {
					if i == 10 {
						n.log.Warn("more fleet blocks of allowlisted addresses not enforced here", "more", len(kept)-i)
						break
					}
					n.log.Warn("fleet block of an allowlisted address not enforced here", "prefix", p)
				}
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
				if err := n.reconcile(ctx, seen); err != nil {
					return err
				}
				initial, seen = false, nil
				n.setConnected(true)
			} else if r, del, ok := n.entry(e, initial); ok {
				if del {
					dels = append(dels, Removal{Prefix: r.Prefix, Revision: e.Revision(), At: e.Created()})
				} else {
					puts = append(puts, r)
				}
				if initial && !del {
					seen[r.Prefix] = true
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

// entry turns one bucket entry into a block to apply (del false) or a removal (del true); ok is
// false when there is nothing to do here: this node's own block, an expired one, or a bad value
// (refused, counted and logged).
func (n *Node) entry(e jetstream.KeyValueEntry, initial bool) (r store.Rule, del, ok bool) {
	now := time.Now()
	if e.Operation() != jetstream.KeyValuePut {
		if n.ownDelete(e.Key()) {
			return store.Rule{}, false, false // this host unblocked it already
		}
		p, err := ParseKey(e.Key())
		if err != nil {
			n.refuse(err)
			return store.Rule{}, false, false
		}
		return store.Rule{Prefix: p}, true, true
	}
	r, err := n.limits.decode(e.Key(), e.Value(), e.Revision(), now)
	switch {
	case errors.Is(err, errExpired):
		return store.Rule{}, false, false
	case err != nil:
		n.refuse(err)
		return store.Rule{}, false, false
	case r.Node == n.name:
		return store.Rule{}, false, false // this host has it already
	}
	n.mu.Lock()
	n.peers[r.Node] = now
	if !initial {
		n.lag = now.Sub(r.LastOffence)
	}
	n.mu.Unlock()
	return r, false, true
}

func (n *Node) refuse(err error) {
	n.refused.Add(1)
	if every(&n.lastRefuseLog, time.Second) {
		n.log.Warn("refused a value from the fleet", "err", err, "refused_total", n.refused.Load())
	}
}

// reconcile drops the fleet rules whose key the bucket no longer holds (unblocked or expired
// while this host was away, the delete markers maybe purged since). It runs after the current
// keys are applied, so that no still-valid block is ever missing meanwhile.
func (n *Node) reconcile(ctx context.Context, seen map[netip.Prefix]bool) error {
	have, err := n.local.FleetPrefixes()
	if err != nil {
		return err
	}
	var gone []Removal
	now := time.Now()
	for _, p := range have {
		if !seen[p] {
			gone = append(gone, Removal{Prefix: p, Revision: math.MaxUint64, At: now})
		}
	}
	if len(gone) == 0 {
		return nil
	}
	dropped, err := n.local.RemoveFleet(ctx, gone)
	if err != nil {
		return err
	}
	n.log.Info("reconciled with the fleet", "dropped", dropped)
	return nil
}
