package control

import (
	"bufio"
	"context"
	"errors"
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

	var expired []netip.Prefix
	var shown []Rule // the first maxExpireEvents of them, for the event log
	// The kernel drops expired entries while the store deletes them: the data path already
	// ignores an entry past its deadline, so neither order can open a gap.
	var kernelDone chan error
	if d.store.Due(now) || now.Sub(d.lastPrune) >= offencePruneInterval {
		var next time.Time
		err := d.store.Update(func(tx *Tx) error {
			var err error
			if expired, shown, next, err = tx.expiredPrefixes(now, maxExpireEvents); err != nil {
				return err
			}
			if len(expired) > 0 {
				kernelDone = make(chan error, 1)
				go func() { kernelDone <- d.enf.Unblock(ctx, expired) }()
				if err := tx.deleteExpired(now); err != nil {
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
		d.store.setEarliest(next)
		if now.Sub(d.lastPrune) >= offencePruneInterval {
			d.lastPrune = now
		}
	}
	if len(expired) > 0 {
		res.Expired = len(expired)
		evs := expireEvents(shown, now)
		if more := len(expired) - len(shown); more > 0 {
			evs = append(evs, Event{Time: now, Event: EventExpire, Source: "sweep",
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
func (d *Daemon) reconcileLocked(ctx context.Context, cfg *Config, now time.Time, res *SweepResult) error {
	kernel, err := d.enf.Rules(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: read enforced rules: %w", err)
	}
	sortStates(kernel)
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
func (d *Daemon) adoptLocked(ctx context.Context, cfg *Config, trapped []backend.RuleState, now time.Time) ([]Rule, error) {
	var adopt []backend.RuleState
	var allowed []netip.Prefix
	var evs []Event
	for _, k := range trapped {
		if it, ok := d.allow.Covers(k.Prefix); ok {
			allowed = append(allowed, k.Prefix)
			evs = append(evs, Event{Time: now, Event: EventUnblock, Address: k.Prefix.String(), Source: "daemon",
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
		return nil, fmt.Errorf("adopt %d trap blocks: %w", len(adopt), err)
	}
	d.rec.Blocked(OriginTrap, len(rules))
	return rules, nil
}

// adoptEvents are the event log's lines for adopted trap blocks (the first maxExpireEvents).
func adoptEvents(rules []Rule, now time.Time) []Event {
	var evs []Event
	for j, r := range rules {
		if j == maxExpireEvents {
			evs = append(evs, Event{Time: now, Event: EventBlock, Source: OriginTrap,
				Detail: fmt.Sprintf("and %d more trap blocks adopted from the kernel", len(rules)-j)})
			break
		}
		evs = append(evs, blockEvent(r, OriginTrap, now))
	}
	return evs
}

// adoptReason is the reason of a trap block found in the kernel without its event.
const adoptReason = "trap (blocked by the kernel, event not received)"

// Import blocks every entry of a block list. Dated lines (blocked.list) keep their dates: a line
// dated D expires at D + TTL, and lines already past that are skipped and counted as Expired.
// Any bad line rejects the whole import unless SkipBad. Everything is written in one store
// transaction and one enforcer batch (for big lists: see ImportStream).
func (d *Daemon) Import(ctx context.Context, req ImportRequest) (ImportResponse, error) {
	return d.ImportStream(ctx, strings.NewReader(req.Content), int64(len(req.Content)), req)
}

// bulkImport is the size from which an import writes the store in chunks (Store.BulkPutRules)
// while the kernel takes the same batch concurrently.
const bulkImport = 50_000

// ImportStream is Import with the list read from r as it arrives (req.Content is ignored):
// lines are parsed while the body is still being read. size is the body's length if known
// (-1 if not), a hint for presizing. Nothing is changed unless the whole body arrives: a client
// that aborts the upload (its own check found bad lines) imports nothing. Big imports write the
// store and the kernel concurrently; if either fails, both are rolled back.
func (d *Daemon) ImportStream(ctx context.Context, body io.Reader, size int64, req ImportRequest) (ImportResponse, error) {
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
	var resp ImportResponse
	// The kernel's batch is built as the lines are parsed, and sorted and deduplicated in
	// place: copying a million rules out of another slice cost 0.2 s before the kernel got its
	// first one. The store's rules are made from it (Rule of i below).
	var batch []backend.Rule
	var created []int64 // unix ms per rule, kept only for permanent imports (no deadline to derive it from)
	if size > 0 {
		// A line is at least 8 bytes ("a.b.c.d\n"): room for that many never has to grow, which
		// for a million rules copied 50 MB and faulted in 60 more. What is not filled is never
		// touched, so it costs no memory.
		batch = make([]backend.Rule, 0, min(size/8+1, 1<<22))
	}
	var refused []LineError
	nowMs := now.UnixMilli()
	errs, bad, err := ReadBlockList(body, cfg.TargetRules(), now, func(l ImportLine) {
		// Allowlisted targets are bad lines too.
		if err := d.allow.Refuse(l.Target, l.Prefix, l.Addr, l.Single); err != nil {
			refused = append(refused, LineError{Line: l.Line, Text: strings.Clone(l.Target), Error: err.Error()})
			return
		}
		c := nowMs
		if !l.Date.IsZero() {
			c = l.Date.UnixMilli()
			if ttl != 0 && c+ttl.Milliseconds() <= nowMs {
				resp.Expired++
				return
			}
		}
		r := backend.Rule{Prefix: l.Prefix}
		if ttl != 0 {
			r.Deadline = time.UnixMilli(c).Add(ttl)
		} else {
			created = append(created, c)
		}
		batch = append(batch, r)
	})
	if err != nil {
		return ImportResponse{}, fmt.Errorf("import %s: %w", name, err)
	}
	bad += len(refused)
	for _, e := range refused {
		if len(errs) < maxImportLineErrors {
			errs = append(errs, e)
		}
	}
	slices.SortFunc(errs, func(a, b LineError) int { return a.Line - b.Line })
	if bad > 0 && !req.SkipBad {
		return ImportResponse{Errors: errs, Skipped: bad}, &UserError{Err: importError(name, errs, bad)}
	}
	resp.Skipped, resp.Errors = bad, errs

	// One rule per prefix: the latest deadline (the latest date) wins. Lists are often sorted
	// already, and checking costs far less than sorting; a blocked.list is in the order its
	// blocks were made, which a radix sort puts in store order in tens of milliseconds (a
	// stable comparison sort took a second for a million).
	byPrefix := func(a, b backend.Rule) int { return a.Prefix.Compare(b.Prefix) }
	if !slices.IsSortedFunc(batch, byPrefix) {
		order := prefixOrder(len(batch), func(i int) netip.Prefix { return batch[i].Prefix })
		permute(batch, order)
		if created != nil {
			permute(created, order)
		}
	}
	if len(batch) > 1 {
		w := 0
		for j := 1; j < len(batch); j++ {
			if batch[j].Prefix == batch[w].Prefix {
				if ttl != 0 && batch[j].Deadline.After(batch[w].Deadline) {
					batch[w].Deadline = batch[j].Deadline
				}
				continue // permanent: the first line's date stays
			}
			w++
			batch[w] = batch[j]
			if created != nil {
				created[w] = created[j]
			}
		}
		batch = batch[:w+1]
	}
	rule := func(i int) Rule {
		r := Rule{Prefix: batch[i].Prefix, Reason: reason, Origin: OriginImport, Deadline: batch[i].Deadline}
		if ttl != 0 {
			r.Created = r.Deadline.Add(-ttl)
		} else {
			r.Created = time.UnixMilli(created[i])
		}
		return r
	}
	// Entries already blocked keep what they are, extended to the later deadline; the kernel's
	// batch takes that deadline too.
	merged, err := d.mergeStored(batch, rule, now)
	if err != nil {
		return ImportResponse{}, fmt.Errorf("import %s: %w", name, err)
	}
	for i, m := range merged {
		batch[i].Deadline = m.now.Deadline
	}
	at := func(i int) Rule {
		if m, ok := merged[i]; ok {
			return m.now
		}
		return rule(i)
	}
	if len(batch) < bulkImport {
		rules := make([]Rule, len(batch))
		for i := range batch {
			rules[i] = at(i)
		}
		err = d.store.Update(func(tx *Tx) error {
			if err := tx.PutRulesSorted(rules); err != nil {
				return err
			}
			return d.enf.Block(ctx, batch)
		})
	} else {
		err = d.bulkBlock(ctx, batch, at, merged)
	}
	if err != nil {
		return ImportResponse{}, fmt.Errorf("import %s: %w", name, err)
	}
	resp.Imported = len(batch)
	if len(batch) >= bigBatch {
		batch, created = nil, nil
		go debug.FreeOSMemory() // an import's buffers are garbage now: give the memory back
	}
	d.logEvents(Event{Time: now, Event: EventBlock, Source: OriginImport, Reason: reason, TTL: FormatTTL(ttl),
		Detail: fmt.Sprintf("imported %d entries from %s (%d already expired, %d bad lines skipped)", resp.Imported, name, resp.Expired, resp.Skipped)})
	d.rec.Blocked(OriginImport, resp.Imported)
	return resp, nil
}

// mergedRule is an imported entry that was blocked already: what it was and what it becomes.
type mergedRule struct{ old, now Rule }

// mergeStored finds the entries (sorted) that are blocked already and not expired; each keeps
// its stored rule, extended to the later deadline. Keyed by index into entries.
func (d *Daemon) mergeStored(entries []backend.Rule, rule func(int) Rule, now time.Time) (map[int]mergedRule, error) {
	merged := map[int]mergedRule{}
	if d.store.Count() == 0 || len(entries) == 0 {
		return merged, nil
	}
	check := func(i int, old Rule) {
		if old.Expired(now) {
			return
		}
		r := old
		if n := rule(i); laterDeadline(n.Deadline, old.Deadline) {
			r.Deadline = n.Deadline
		}
		merged[i] = mergedRule{old: old, now: r}
	}
	err := d.store.View(func(tx *Tx) error {
		if d.store.Count() < len(entries) {
			// Walk the (smaller) store and look each rule up among the entries.
			return tx.ForEachRule(func(old Rule) error {
				if i, ok := slices.BinarySearchFunc(entries, old.Prefix, func(e backend.Rule, p netip.Prefix) int { return e.Prefix.Compare(p) }); ok {
					check(i, old)
				}
				return nil
			})
		}
		for i, e := range entries {
			old, ok, err := tx.Rule(e.Prefix)
			if err != nil {
				return err
			}
			if ok {
				check(i, old)
			}
		}
		return nil
	})
	return merged, err
}

// bulkBlock writes the rules at(0..n-1) (sorted by prefix; n = len(kernel)) to the store in
// chunks while the kernel takes the same rules as kernel, concurrently, and swaps the store's
// new rules in only when the kernel has them all. On any failure the kernel is put back: new
// entries removed, merged ones given their old deadlines.
func (d *Daemon) bulkBlock(ctx context.Context, kernel []backend.Rule, at func(int) Rule, merged map[int]mergedRule) error {
	n := len(kernel)
	kerr := make(chan error, 1)
	go func() { kerr <- d.enf.Block(ctx, kernel) }()
	waited := false
	err := d.store.BulkPutRules(n, at, func() error {
		waited = true
		return <-kerr
	})
	if !waited {
		<-kerr // the store failed first: let the kernel finish before undoing it
	}
	if err == nil {
		return nil
	}
	var gone []netip.Prefix
	var back []backend.Rule
	for i := range n {
		if m, ok := merged[i]; ok {
			back = append(back, backend.Rule{Prefix: m.old.Prefix, Deadline: m.old.Deadline})
		} else {
			gone = append(gone, at(i).Prefix)
		}
	}
	// Background context: the undo must run even when the request was cancelled.
	undo := errors.Join(d.enf.Unblock(context.Background(), gone), d.enf.Block(context.Background(), back))
	if undo != nil {
		d.log.Error("undo a failed import in the kernel; the next sweep reconciles", "err", undo)
	}
	return err
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
