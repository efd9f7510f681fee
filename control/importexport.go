package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/blocklist"
	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/control/store"
)

// Import blocks every entry of a block list. Dated lines (blocked.list) keep their dates: a line
// dated D expires at D + TTL, and lines already past that are skipped and counted as Expired.
// Any bad line rejects the whole import unless SkipBad. Everything is written in one store
// transaction and one enforcer batch (for big lists: see ImportStream).
func (d *Daemon) Import(ctx context.Context, req api.ImportRequest) (api.ImportResponse, error) {
	return d.ImportStream(ctx, strings.NewReader(req.Content), req)
}

// bulkImport is the size from which an import writes the store in chunks (Store.BulkPutRules)
// while the kernel takes the same batch concurrently.
const bulkImport = 50_000

// ImportStream is Import with the list read from body as it arrives (req.Content is ignored):
// lines are parsed while the body is still being read. Nothing is changed unless the whole body
// arrives: a client that aborts the upload (its own check found bad lines) imports nothing. Big
// imports write the store and the kernel concurrently; if either fails, both are rolled back.
//
// The body is read and parsed without the daemon's lock, so a slow or stalled upload holds up no
// block, unblock, trap event or sweep; the lock is taken once the list is complete. One import
// runs at a time.
func (d *Daemon) ImportStream(ctx context.Context, body io.Reader, req api.ImportRequest) (api.ImportResponse, error) {
	name := req.Name
	if name == "" {
		name = "import"
	}
	select {
	case d.importing <- struct{}{}:
	case <-ctx.Done():
		return api.ImportResponse{}, fmt.Errorf("import %s: waiting for another import: %w", name, ctx.Err())
	}
	defer func() { <-d.importing }()
	d.mu.Lock()
	cfg, allow := d.cfg, d.allow
	d.mu.Unlock()
	now := time.Now()
	ttl := time.Duration(cfg.Block.TTL)
	if strings.TrimSpace(req.TTL) != "" {
		var err error
		if ttl, err = input.ParseTTL(req.TTL); err != nil {
			return api.ImportResponse{}, &UserError{Err: err}
		}
	}
	reason, err := importReason(req.Reason, name)
	if err != nil {
		return api.ImportResponse{}, err
	}
	var resp api.ImportResponse
	recs, errs, bad, expired, err := readImport(body, cfg, allow, ttl, now)
	if err != nil {
		return api.ImportResponse{}, fmt.Errorf("import %s: %w", name, err)
	}
	resp.Expired = expired
	if bad > 0 && !req.SkipBad {
		return api.ImportResponse{Errors: errs, Skipped: bad}, &UserError{Err: importError(name, errs, bad)}
	}
	resp.Skipped, resp.Errors = bad, errs

	d.mu.Lock()
	defer d.mu.Unlock()
	// The list checked against the daemon as it is now: nothing is written before this.
	if err := d.recheckAllowLocked(name, recs, allow); err != nil {
		return api.ImportResponse{}, err
	}

	// Keeps the 1M import under 1 s (0.94-1.12 s -> 0.80-0.87 s with pointer-free records).
	// A big list into an empty daemon (the first import of an old blocked.list) goes to the
	// kernel as soon as its order is known, while the store's copy is made: the kernel's share
	// of the work, the biggest, then overlaps the rest. (In store order, not as it came: the
	// kernel's LRU list is laid out in the order of insertion, and a sweep that removes a
	// million entries in another order than they went in takes 40% longer.) With nothing
	// stored there is nothing to merge with; only a repeated prefix has to be written again
	// afterwards, where the file's last line won and the latest deadline must.
	// A list that fits block.capacity even if every line were new needs no closer look; one that
	// may not is counted exactly once its repeats and stored entries are known.
	var lines [2]int
	for i := range recs.n {
		lines[store.FamilyIndex(recs.at(i).V6())]++
	}
	fits := d.checkCapacity(cfg, lines) == nil
	order := recs.order()
	var early chan error
	if recs.n >= bulkImport && d.store.Count() == 0 && fits {
		early = make(chan error, 1)
		read := recs.orderedReader(order)
		go func() {
			early <- d.blockChunks(ctx, recs.n, func(j int) backend.Rule {
				rec := read(j)
				r := backend.Rule{Prefix: rec.Prefix()}
				if ttl != 0 {
					r.Deadline = rec.Time()
				}
				return r
			})
		}()
	}

	// One rule per prefix, in store order: the latest deadline (the latest date) wins.
	uniq := recs.unique(order, ttl != 0)
	n := uniq.len()
	rule := func(rec backend.Record) store.Rule {
		r := store.Rule{Prefix: rec.Prefix(), Reason: reason, Origin: api.OriginImport}
		if ttl != 0 {
			r.Deadline = rec.Time()
			r.Created = r.Deadline.Add(-ttl)
		} else {
			r.Created = rec.Time()
		}
		return r
	}
	at := func(i int) store.Rule { return rule(uniq.at(i)) }
	// orderedRules is at for one goroutine that reads the rules in order (the store's writer,
	// the kernel's).
	orderedRules := func() func(int) store.Rule {
		read := uniq.orderedReader()
		return func(i int) store.Rule { return rule(read(i)) }
	}
	// Entries already blocked keep what they are, extended to the later deadline; the kernel
	// takes that deadline too.
	var merged map[int]mergedRule
	if early == nil {
		if merged, err = d.mergeStored(n, func(i int) netip.Prefix { rec := uniq.at(i); return rec.Prefix() }, at, now); err != nil {
			return api.ImportResponse{}, fmt.Errorf("import %s: %w", name, err)
		}
	}
	if !fits {
		var fresh [2]int
		for i := range n {
			if _, ok := merged[i]; !ok {
				rec := uniq.at(i)
				fresh[store.FamilyIndex(rec.V6())]++
			}
		}
		if err := d.checkCapacity(cfg, fresh); err != nil {
			return api.ImportResponse{}, fmt.Errorf("import %s: %w", name, err)
		}
	}
	switch {
	case early != nil:
		share := func(tx *store.Tx) error { return d.shareImport(tx, n, orderedRules()) }
		err = d.bulkBlock(n, orderedRules(), nil, share, func() error {
			if err := <-early; err != nil {
				return err
			}
			again := make([]backend.Rule, len(uniq.repeated))
			for j, i := range uniq.repeated {
				again[j] = at(int(i)).Enforced()
			}
			return d.enf.Block(ctx, again)
		})
	default:
		final := func(rule func(int) store.Rule) func(int) store.Rule {
			return func(i int) store.Rule {
				if m, ok := merged[i]; ok {
					return m.merged
				}
				return rule(i)
			}
		}
		if n >= bulkImport {
			kernel := final(orderedRules())
			share := func(tx *store.Tx) error { return d.shareImport(tx, n, final(orderedRules())) }
			err = d.bulkBlock(n, final(orderedRules()), merged, share, func() error {
				return d.blockChunks(ctx, n, func(i int) backend.Rule { return kernel(i).Enforced() })
			})
			break
		}
		rules, get := make([]store.Rule, n), final(at)
		for i := range n {
			rules[i] = get(i)
		}
		written := false
		err = d.store.Update(func(tx *store.Tx) error {
			if err := tx.PutRulesSorted(rules); err != nil {
				return err
			}
			if err := d.shareImport(tx, n, func(i int) store.Rule { return rules[i] }); err != nil {
				return err
			}
			written = true
			return d.enf.Block(ctx, toBackend(rules))
		})
		if err != nil && written {
			d.undoKernel("import "+name, importUndo(n, at, merged))
		}
	}
	if err != nil {
		return api.ImportResponse{}, fmt.Errorf("import %s: %w", name, err)
	}
	d.notifyFleet()
	resp.Imported = n
	releaseBatchMemory(n) // import then sweep of 1M peaked at 129-150 MB without, 93-101 MB with
	d.logEvents(api.Event{Time: now, Event: api.EventBlock, Source: api.OriginImport, Reason: reason, TTL: input.FormatTTL(ttl),
		Detail: fmt.Sprintf("imported %d entries from %s (%d already expired, %d bad lines skipped)", resp.Imported, name, resp.Expired, resp.Skipped)})
	d.rec.Blocked(api.OriginImport, resp.Imported)
	return resp, nil
}

// readImport parses an import list on every CPU, a piece at a time, each line into its own slot
// of recs (lines that block nothing leave it empty, compacted away at the end): on one CPU the
// parse is a fifth of an import. It returns the records (deadlines for TTL imports, creation times
// for permanent ones), the first bad lines by line number, and the counts of bad lines
// (targets allow refuses included) and of lines already expired. Keeps the 1M import under 1 s
// (one goroutine: 0.89-0.99 s through the API, every CPU: 0.76-0.84 s).
func readImport(body io.Reader, cfg *config.Config, allow Allowlist, ttl time.Duration, now time.Time) (recs *importBatch, errs []api.LineError, bad, expired int, err error) {
	recs = newImportBatch(cfg.Block.Capacity)
	rules := cfg.TargetRules()
	var mu sync.Mutex        // guards what the pieces report
	nowMs := now.UnixMilli() // lines are stamped to the millisecond, as the store keeps times
	ttlMs := ttl.Milliseconds()
	_, err = blocklist.Read(body, runtime.GOMAXPROCS(0), func(first, lines int) error {
		return recs.makeSlots(first + lines - 1)
	}, func(text string, first int) {
		p := blocklist.NewParser(rules, now, first)
		gone := 0
		p.Parse(text, func(l blocklist.Line) {
			// Allowlisted targets are bad lines too.
			if err := allow.Refuse(l.Target, l.Prefix, l.Addr, l.Single); err != nil {
				p.Fail(l.Number, l.Target, err.Error())
				return
			}
			c := nowMs
			if !l.Date.IsZero() {
				c = l.Date.UnixMilli()
				if ttl != 0 && c+ttlMs <= nowMs {
					gone++
					return
				}
			}
			if ttl != 0 {
				c += ttlMs // the record holds the deadline; permanent ones when they were made
			}
			*recs.at(l.Number - 1) = backend.RecordOf(l.Prefix, c)
		})
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, p.Errors()...)
		bad += p.Bad()
		expired += gone
	})
	if errors.Is(err, blocklist.ErrNotList) {
		return nil, nil, 0, 0, &UserError{Err: err}
	}
	if err != nil {
		return nil, nil, 0, 0, err
	}
	recs.compact()
	// Each piece reported its first bad lines: together they hold the list's first ones.
	slices.SortFunc(errs, func(a, b api.LineError) int { return a.Line - b.Line })
	return recs, errs[:min(len(errs), blocklist.MaxErrors)], bad, expired, nil
}

// recheckAllowLocked checks a parsed import list against the allowlist in force. The list was
// checked against the allowlist parsedWith while it was read; a prefix allowlisted since (allow
// add, a reload, a new own address) refuses the whole import: the allowlist always wins, and the
// list's line numbers are gone by now to report it as a bad line.
func (d *Daemon) recheckAllowLocked(name string, recs *importBatch, parsedWith Allowlist) error {
	was := map[netip.Prefix]bool{}
	for _, it := range parsedWith {
		was[it.Prefix] = true
	}
	var added Allowlist
	for _, it := range d.allow {
		if !was[it.Prefix] {
			added = append(added, it)
		}
	}
	if len(added) == 0 {
		return nil
	}
	for i := range recs.n {
		p := recs.at(i).Prefix()
		for _, it := range added {
			if it.Prefix.Overlaps(p) {
				return userErrorf("import %s: %s overlaps %s, allowlisted (%s) while the list was being sent; nothing imported: import it again to check it against the allowlist in force",
					name, p, it.Prefix, it.Source)
			}
		}
	}
	return nil
}

// mergedRule is an imported entry that was blocked already: the rule stored before the import
// and the rule it becomes.
type mergedRule struct{ stored, merged store.Rule }

// mergeStored finds the entries 0..n-1 (prefix(i), sorted) that are blocked already and not
// expired; each keeps its stored rule, extended to the later deadline. Keyed by entry index.
func (d *Daemon) mergeStored(n int, prefix func(int) netip.Prefix, rule func(int) store.Rule, now time.Time) (map[int]mergedRule, error) {
	merged := map[int]mergedRule{}
	if d.store.Count() == 0 || n == 0 {
		return merged, nil
	}
	check := func(i int, old store.Rule) {
		if old.Expired(now) {
			return
		}
		r := old
		if n := rule(i); laterDeadline(n.Deadline, old.Deadline) {
			r.Deadline = n.Deadline
		}
		merged[i] = mergedRule{stored: old, merged: r}
	}
	err := d.store.View(func(tx *store.Tx) error {
		if d.store.Count() < n {
			// Walk the (smaller) store and look each rule up among the entries.
			return tx.ForEachRule(func(old store.Rule) error {
				i := sort.Search(n, func(i int) bool { return prefix(i).Compare(old.Prefix) >= 0 })
				if i < n && prefix(i) == old.Prefix {
					check(i, old)
				}
				return nil
			})
		}
		for i := range n {
			old, ok, err := tx.Rule(prefix(i))
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

// bulkBlock writes the rules at(0..n-1) (sorted by prefix) to the store in chunks while kernel
// writes the same rules to the enforcer, concurrently, and swaps the store's new rules in only
// when the kernel has them all; share queues them for the fleet in that same commit. On any
// failure the kernel is put back: new entries removed, merged ones given their old deadlines.
func (d *Daemon) bulkBlock(n int, at func(int) store.Rule, merged map[int]mergedRule, share func(*store.Tx) error, kernel func() error) error {
	kerr := make(chan error, 1)
	go func() { kerr <- kernel() }()
	waited := false
	err := d.store.BulkPutRules(n, at, func() error {
		waited = true
		return <-kerr
	}, share)
	if !waited {
		<-kerr // the store failed first: let the kernel finish before undoing it
	}
	if err != nil {
		d.undoKernel("import", importUndo(n, at, merged))
	}
	return err
}

// importUndo puts the kernel back after a refused import of at(0..n-1): new entries removed,
// merged ones given their old deadlines.
func importUndo(n int, at func(int) store.Rule, merged map[int]mergedRule) *kernelUndo {
	u := &kernelUndo{}
	for i := range n {
		if m, ok := merged[i]; ok {
			u.restore = append(u.restore, m.stored.Enforced())
		} else {
			u.remove = append(u.remove, at(i).Prefix)
		}
	}
	return u
}

// kernelChunk is how many rules blockChunks hands the enforcer at once: enough for the loader
// to spread one call over two CPUs, few enough (3.5 MB) that the rules of a big import never
// exist as Go values (with pointers, for the collector to scan) all at once. Memory an import
// touches for the first time is dear on a VM (a page fault costs several microseconds): two
// chunks of 128K would be 14 MB of it. Keeps the 1M import's peak under 150 MB (128K chunks:
// 121 MB, 64K: 110 MB).
const kernelChunk = 1 << 16

// blockChunks blocks rule(0..n-1) in the enforcer, a chunk at a time. The next chunk is made
// while the enforcer takes the last one: made in turn, they would cost a big import 0.1 s.
func (d *Daemon) blockChunks(ctx context.Context, n int, rule func(int) backend.Rule) error {
	full := make(chan []backend.Rule, 1)
	free := make(chan []backend.Rule, 2)
	for range 2 {
		free <- make([]backend.Rule, 0, min(n, kernelChunk))
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(full)
		for i := 0; i < n; i += kernelChunk {
			var buf []backend.Rule
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			buf = buf[:0]
			for j := i; j < min(i+kernelChunk, n); j++ {
				buf = append(buf, rule(j))
			}
			select {
			case full <- buf:
			case <-stop:
				return
			}
		}
	}()
	for buf := range full {
		if err := d.enf.Block(ctx, buf); err != nil {
			return err
		}
		free <- buf
	}
	return nil
}

// laterDeadline reports whether deadline a is later than b (zero is permanent, the latest).
func laterDeadline(a, b time.Time) bool {
	if b.IsZero() {
		return false
	}
	return a.IsZero() || a.After(b)
}

func importError(name string, errs []api.LineError, bad int) error {
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

// Export writes every active block in format (blocklist.FormatBlockedList or FormatPlain).
func (d *Daemon) Export(w io.Writer, format string) error {
	switch format {
	case "", blocklist.FormatBlockedList:
		format = blocklist.FormatBlockedList
	case blocklist.FormatPlain:
	default:
		return userErrorf("unknown export format %q (want %s or %s)", format, blocklist.FormatBlockedList, blocklist.FormatPlain)
	}
	bw := bufio.NewWriterSize(w, 256<<10)
	now := time.Now()
	err := d.store.View(func(tx *store.Tx) error {
		return tx.ForEachRule(func(r store.Rule) error {
			if r.Expired(now) {
				return nil
			}
			return blocklist.WriteLine(bw, format, r.Prefix, r.Created)
		})
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}

// importReason returns the reason an import's entries get: the one asked for, or "import NAME".
// The reason is checked as CheckReason does, the name (shown in messages and events) alike but
// up to MaxImportNameLen; a default reason longer than MaxReasonLen keeps the end of the name
// (a path's file name).
func importReason(reason, name string) (string, error) {
	if err := input.CheckText("import name", name, input.MaxImportNameLen); err != nil {
		return "", &UserError{Err: err}
	}
	if reason != "" {
		if err := input.CheckReason(reason); err != nil {
			return "", &UserError{Err: err}
		}
		return reason, nil
	}
	const head, cut = "import ", "import ..."
	if len(head)+len(name) <= input.MaxReasonLen {
		return head + name, nil
	}
	tail := name[len(name)-(input.MaxReasonLen-len(cut)):]
	for len(tail) > 0 && !utf8.RuneStart(tail[0]) {
		tail = tail[1:]
	}
	return cut + tail, nil
}
