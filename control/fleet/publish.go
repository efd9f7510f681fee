package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
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
func (n *Node) publish(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if err := n.drain(ctx, js, stream); err != nil {
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
	seq   uint64
	ack   jetstream.PubAckFuture
	count int // decisions it shares: 1, or those of a bulk value
}

// drain publishes the outbox in order; what is handled is deleted from it. An entry that fails
// stays, with everything after it, for the next try.
func (n *Node) drain(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream) error {
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
						sent += p.count
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
				if deleted, err = n.unblock(ctx, js, stream, e); err != nil {
					break
				}
				if deleted {
					sent++
				}
				done = e.Seq
				continue
			}
			if e.Bulk != nil {
				var p pending
				if p, err = n.putBulk(js, e, now); err != nil {
					break
				}
				batch = append(batch, p)
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
			batch = append(batch, pending{seq: e.Seq, ack: ack, count: 1})
		}
		if err == nil {
			err = flush()
		}
		if shed > 0 {
			n.shed.Add(uint64(shed))
			n.shedLog.Do(func() {
				n.log.Warn("trap decisions not shared: over fleet.max_publish_per_second; enforced here all the same",
					"shed", shed, "shed_total", n.shed.Load(), "cap", n.cfg.MaxPublishPerSecond)
			})
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

// putBulk publishes a bulk value asynchronously under a new key; the key lives until the
// latest deadline in it (and the margin), or for good if one of its blocks is permanent.
func (n *Node) putBulk(js jetstream.JetStream, e store.OutboxEntry, now time.Time) (pending, error) {
	count, deadline, err := BulkInfo(e.Bulk)
	if err != nil { // written by this host, so never; kept, it would hold up the outbox for good
		n.log.Error("outbox entry dropped, not shared", "seq", e.Seq, "err", err)
		return pending{seq: e.Seq}, nil
	}
	var opts []jetstream.PublishOpt
	if !deadline.IsZero() {
		if !now.Before(deadline) {
			return pending{seq: e.Seq}, nil // nothing left to share
		}
		opts = append(opts, jetstream.WithMsgTTL(deadline.Sub(now).Round(time.Second)+gcMargin))
	}
	if limit := js.Conn().MaxPayload(); int64(len(e.Bulk))+1024 > limit {
		return pending{}, fmt.Errorf("share %d imported blocks: a bulk value of %d bytes is over the server's max_payload (%d): set max_payload to 1MB, its default",
			count, len(e.Bulk), limit)
	}
	ack, err := js.PublishAsync("$KV."+n.cfg.Bucket+"."+BulkKey(), e.Bulk, opts...)
	if err != nil {
		return pending{}, fmt.Errorf("publish %d shared blocks: %w", count, err)
	}
	return pending{seq: e.Seq, ack: ack, count: count}, nil
}

// unblock deletes the key of an unblocked prefix unless it holds a block made after the unblock
// (a stale unblock never removes a newer block): the delete is conditional on the revision read.
// A key that holds no block gets its delete marker all the same, since a bulk value may hold the
// prefix (see bulk.go).
func (n *Node) unblock(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, e store.OutboxEntry) (deleted bool, err error) {
	key := Key(e.Rule.Prefix)
	subject := "$KV." + n.cfg.Bucket + "." + key
	for range 5 {
		var rev uint64 // the key's last revision, marker or value; 0: it never had one
		last, err := stream.GetLastMsgForSubject(ctx, subject)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return false, fmt.Errorf("read %s before its unblock: %w", key, err)
		default:
			rev = last.Sequence
			var v Value
			if last.Header.Get("KV-Operation") == "" && json.Unmarshal(last.Data, &v) == nil && v.MadeMs > e.Rule.LastOffence.UnixMilli() {
				n.stale.Add(1)
				n.log.Info("unblock not shared: the fleet blocked it again since", "prefix", e.Rule.Prefix, "node", v.Node)
				return false, nil
			}
		}
		n.noteOwnDelete(key, 1)
		// kv.Delete cannot require "no revision yet" (it reads 0 as no condition): the marker is
		// published as it would, with the condition always set.
		m := nats.NewMsg(subject)
		m.Header.Set("KV-Operation", "DEL")
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
		_, err = js.PublishMsg(ctx, m)
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
