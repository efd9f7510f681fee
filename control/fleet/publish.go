package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/store"
)

// publishBatch is how many outbox entries are read and published at once (asynchronously, then
// all acknowledgements awaited): a big import is shared in batches, not a round trip per entry.
const publishBatch = 1000

// ackTimeout bounds the wait for a batch's acknowledgements.
const ackTimeout = 10 * time.Second

// publish drains the outbox whenever it has something, until ctx ends or the engine fails.
func (n *Node) publish(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if err := n.drain(ctx, js, kv); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-n.wake:
		case <-tick.C:
		}
	}
}

// pending is an outbox entry handled in a batch: its publication's future, or nil when there was
// nothing to await (shed, expired, an unblock done at once).
type pending struct {
	seq uint64
	ack jetstream.PubAckFuture
}

// drain publishes the outbox in order; what is handled is deleted from it. An entry that fails
// stays, with everything after it, for the next try.
func (n *Node) drain(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) error {
	for {
		entries, err := n.st.ReadOutbox(publishBatch)
		if err != nil || len(entries) == 0 {
			return err
		}
		var batch []pending
		var done uint64    // the last sequence handled, everything before it too
		var shed, sent int // sent is counted once the outbox no longer holds them
		// flush awaits the batch's acknowledgements in order.
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(ackTimeout):
			}
			for _, p := range batch {
				if p.ack != nil {
					select {
					case <-p.ack.Ok():
						sent++
					case err := <-p.ack.Err():
						return fmt.Errorf("publish %s: %w", p.ack.Msg().Subject, err)
					default:
						return fmt.Errorf("publish %s: no acknowledgement within %s", p.ack.Msg().Subject, ackTimeout)
					}
				}
				done = p.seq
			}
			batch = batch[:0]
			return nil
		}
		now := time.Now()
		for _, e := range entries {
			if e.Unblock {
				if err = flush(); err != nil {
					break
				}
				var deleted bool
				if deleted, err = n.unblock(ctx, kv, e); err != nil {
					break
				}
				if deleted {
					sent++
				}
				done = e.Seq
				continue
			}
			r := e.Rule
			switch {
			case r.Expired(now):
				batch = append(batch, pending{seq: e.Seq}) // nothing left to share
				continue
			case r.Origin == api.OriginTrap && !n.limit.Allow():
				shed++
				batch = append(batch, pending{seq: e.Seq})
				continue
			}
			var ack jetstream.PubAckFuture
			ack, err = n.put(js, r, now)
			if err != nil {
				break
			}
			batch = append(batch, pending{seq: e.Seq, ack: ack})
		}
		if err == nil {
			err = flush()
		}
		if shed > 0 {
			n.shed.Add(uint64(shed))
			if every(&n.lastShedLog, 10*time.Second) {
				n.log.Warn("trap decisions not shared: over fleet.max_publish_per_second; enforced here all the same",
					"shed", shed, "shed_total", n.shed.Load(), "cap", n.cfg.MaxPublishPerSecond)
			}
		}
		if done > 0 {
			n.outboxMu.Lock()
			derr := n.st.DeleteOutbox(done)
			if derr == nil {
				n.published.Add(uint64(sent))
			}
			n.outboxMu.Unlock()
			if derr != nil {
				return errors.Join(err, derr)
			}
		}
		if err != nil {
			return err
		}
	}
}

// put publishes a block asynchronously on its key's subject (what KeyValue.Put does, but
// without waiting and with the per-key TTL, which Put cannot set).
func (n *Node) put(js jetstream.JetStream, r store.Rule, now time.Time) (jetstream.PubAckFuture, error) {
	data, err := json.Marshal(valueOf(r, n.name))
	if err != nil {
		return nil, err
	}
	var opts []jetstream.PublishOpt
	if !r.Permanent() {
		opts = append(opts, jetstream.WithMsgTTL(r.Deadline.Sub(now).Round(time.Second)+gcMargin))
	}
	ack, err := js.PublishAsync("$KV."+n.cfg.Bucket+"."+Key(r.Prefix), data, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", r.Prefix, err)
	}
	return ack, nil
}

// unblock deletes the key of an unblocked prefix unless it holds a block made after the unblock
// (a stale unblock never removes a newer block): the delete is conditional on the revision read.
func (n *Node) unblock(ctx context.Context, kv jetstream.KeyValue, e store.OutboxEntry) (deleted bool, err error) {
	key := Key(e.Rule.Prefix)
	for range 5 {
		cur, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return false, nil // never shared, expired, or unblocked elsewhere already
		}
		if err != nil {
			return false, fmt.Errorf("read %s before its unblock: %w", key, err)
		}
		var v Value
		if json.Unmarshal(cur.Value(), &v) == nil && v.MadeMs > e.Rule.LastOffence.UnixMilli() {
			n.stale.Add(1)
			n.log.Info("unblock not shared: the fleet blocked it again since", "prefix", e.Rule.Prefix, "node", v.Node)
			return false, nil
		}
		n.noteOwnDelete(key, 1)
		err = kv.Delete(ctx, key, jetstream.LastRevision(cur.Revision()))
		if err == nil {
			return true, nil
		}
		n.noteOwnDelete(key, -1)
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || (apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence &&
			apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return false, fmt.Errorf("delete %s: %w", key, err)
		}
		// Changed between the read and the delete: read again.
	}
	return false, fmt.Errorf("delete %s: it keeps changing", key)
}

// noteOwnDelete adds d to the count of this node's deletes of key not seen by the watcher yet.
func (n *Node) noteOwnDelete(key string, d int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ownDeletes[key] += d; n.ownDeletes[key] <= 0 {
		delete(n.ownDeletes, key)
	}
}

// ownDelete reports whether a delete marker of key is this node's own, and consumes it.
func (n *Node) ownDelete(key string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ownDeletes[key] == 0 {
		return false
	}
	if n.ownDeletes[key]--; n.ownDeletes[key] == 0 {
		delete(n.ownDeletes, key)
	}
	return true
}
