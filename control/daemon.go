package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/snare-dev/snare/control/eventlog"

	"github.com/snare-dev/snare/control/config"

	"github.com/snare-dev/snare/control/store"

	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control/api"

	"github.com/snare-dev/snare/backend"
)

// Options configure Open.
type Options struct {
	Config   *config.Config
	Logger   *slog.Logger // nil: discard
	Recorder Recorder     // nil: NopRecorder
	Version  string
	// OpenEnforcer opens the enforcement back-end (snared's picks XDP or the iptables fallback)
	// and says why, if it is the fallback. Open calls it while it reads the store: creating a
	// million-entry map takes the kernel as long as that read. The daemon owns the enforcer
	// and closes it.
	OpenEnforcer func() (enf backend.Enforcer, fallbackReason string, err error)
	// Enforcer, when set, is an enforcer already open, used instead of OpenEnforcer.
	Enforcer backend.Enforcer
	// ImplicitAllow discovers the implicit allowlist; nil means ImplicitAllowlist("/etc/resolv.conf").
	ImplicitAllow func() (Allowlist, error)
	// Listening lists the host's listening ports for the trap-port watcher; nil means ListeningPorts.
	Listening func(ctx context.Context) (tcp, udp map[uint16]bool, err error)
	// ImportIdleTimeout cuts off an import upload that sends nothing for this long; nothing of
	// it is imported. Zero means defaultImportIdleTimeout.
	ImportIdleTimeout time.Duration
}

// defaultImportIdleTimeout is how long an import upload may send nothing before it is cut off.
const defaultImportIdleTimeout = 30 * time.Second

// Daemon is snared's core: it owns the configuration, the durable store, the enforcer and the
// event log, and serves the API. Every state change goes through it, serialised by mu, and is
// committed to the store before the call returns.
type Daemon struct {
	log      *slog.Logger
	rec      Recorder
	version  string
	started  time.Time
	opts     Options
	store    *store.Store
	enf      backend.Enforcer
	fallback string // why the fallback back-end runs, "" for the configured one
	events   *eventlog.Log

	mu        sync.Mutex
	cfg       *config.Config
	implicit  Allowlist
	allow     Allowlist // implicit + config + manual, what the enforcer has
	trapTCP   []uint16  // trap ports in force
	trapUDP   []uint16
	lastPrune time.Time
	sweeps    int

	evictions atomic.Uint64

	// importing is held by the one import in progress: its list is read outside mu, and a
	// million lines take 24 MB of records and more to write them, so two are not read at once.
	importing chan struct{}

	// watch restarts the trap-port watcher after a reload (set while Serve runs).
	watchMu     sync.Mutex
	watchCancel context.CancelFunc
	serveCtx    context.Context
}

// UserError is a problem with the request (bad address, refused target, bad TTL): the API
// answers it with a 4xx status and the message as is.
type UserError struct{ Err error }

func (e *UserError) Error() string { return e.Err.Error() }
func (e *UserError) Unwrap() error { return e.Err }

func userErrorf(format string, args ...any) error {
	return &UserError{Err: fmt.Errorf(format, args...)}
}

// Open opens the store, the event log and the enforcer and brings the kernel in line with the
// store (the store is the source of truth): blocks the kernel made while no daemon ran are adopted, expired ones dropped, and the
// rest (re)inserted, all without removing what is still valid, so a restart never opens a gap.
// Trap detection, the allowlist and the settings are in force when Open returns.
func Open(ctx context.Context, o Options) (*Daemon, error) {
	if o.Config == nil {
		return nil, errors.New("no configuration")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Recorder == nil {
		o.Recorder = NopRecorder{}
	}
	if o.ImplicitAllow == nil {
		o.ImplicitAllow = func() (Allowlist, error) { return ImplicitAllowlist("/etc/resolv.conf") }
	}
	if o.Listening == nil {
		o.Listening = ListeningPorts
	}
	if o.ImportIdleTimeout <= 0 {
		o.ImportIdleTimeout = defaultImportIdleTimeout
	}
	d := &Daemon{log: o.Logger, rec: o.Recorder, version: o.Version, started: time.Now(), opts: o, cfg: o.Config,
		importing: make(chan struct{}, 1)}

	st, err := store.OpenStore(o.Config.DBPath())
	if err != nil {
		return nil, err
	}
	d.store = st
	ev, err := eventlog.Open(o.Config.EventsPath())
	if err != nil {
		st.Close()
		return nil, err
	}
	d.events = ev

	// Read the store while the enforcer loads: creating the million-entry LRU maps alone takes
	// the kernel ~0.4 s, and the store read about as long, on another core. Nothing else writes
	// the store before restore, which uses the snapshot unless it has to adopt kernel entries.
	snap := make(chan store.Snapshot, 1)
	go func() { snap <- st.Snapshot(time.Now()) }()

	d.enf = o.Enforcer
	if d.enf == nil {
		if o.OpenEnforcer == nil {
			err = errors.New("no enforcer to open")
		} else {
			d.enf, d.fallback, err = o.OpenEnforcer()
		}
		if err != nil {
			<-snap // the read must end before the store closes
			d.events.Close()
			d.store.Close()
			return nil, err
		}
	}
	if err := d.restore(ctx, snap); err != nil {
		d.Close()
		return nil, err
	}
	if d.store.Count() >= bigBatch {
		// Only now, with restore's million-entry slices out of scope, can they be handed back.
		go debug.FreeOSMemory()
	}
	return d, nil
}

// Close stops nothing in the kernel: enforcement stays in place (pinned maps and links, or
// ipset sets and rules) so that a restarting daemon leaves no gap.
func (d *Daemon) Close() error {
	var errs []error
	if d.enf != nil {
		errs = append(errs, d.enf.Close())
	}
	if d.events != nil {
		errs = append(errs, d.events.Close())
	}
	if d.store != nil {
		errs = append(errs, d.store.Close())
	}
	return errors.Join(errs...)
}

// Backend names the enforcer in use and, for the fallback, why.
func (d *Daemon) Backend() (name, fallbackReason string) { return d.enf.Name(), d.fallback }

// Enforcer is the back-end in use (for metrics and tests).
func (d *Daemon) Enforcer() backend.Enforcer { return d.enf }

// Config returns the configuration in force.
func (d *Daemon) Config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// Events is the event log.
func (d *Daemon) Events() *eventlog.Log { return d.events }

// restore is Open's reconciliation of kernel and store; snapc delivers the store as read while
// the enforcer loaded. It is received once the settings and the allowlist are in force, which
// may overlap the end of the read.
func (d *Daemon) restore(ctx context.Context, snapc <-chan store.Snapshot) error {
	var snap store.Snapshot
	received := false
	defer func() {
		if !received {
			<-snapc // the read must end before the store closes
		}
	}()
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.cfg
	now := time.Now()

	if err := d.enf.SetSettings(ctx, cfg.EnforcerSettings()); err != nil {
		return fmt.Errorf("enforcer settings: %w", err)
	}
	if err := d.refreshAllowLocked(ctx, true); err != nil {
		return err
	}

	snap, received = <-snapc, true
	var expired []store.Rule
	var live backend.Records
	err := d.store.Update(func(tx *store.Tx) error {
		if snap.Err != nil || snap.Commits != tx.CommitsBefore() {
			// The store changed since the snapshot (the allowlist refresh above dropped blocks
			// it now covers), or the read failed: read it again, here. An entry that expired
			// between the snapshot and now is harmless either way: the kernel passes it at its
			// deadline and the first sweep removes it.
			snap = tx.Snapshot(now, d.store.Count())
			if snap.Err != nil {
				return snap.Err
			}
		}
		live = snap.Live
		for _, r := range snap.Gone {
			if _, err := tx.DeleteRule(r.Prefix); err != nil {
				return err
			}
		}
		expired = snap.Gone
		return nil
	})
	if err != nil {
		return fmt.Errorf("restore from store %s: %w", d.store.Path(), err)
	}
	// The back-end compares the store's rules with what it holds without a Go value per entry,
	// and leaves the trap blocks the kernel made while no daemon ran (or whose event was
	// suppressed) in place: they are adopted like any trap block.
	// Nothing here holds the rules past this call: once the back-end has read them, the
	// collector can take them (24 MB for a million) while it compares.
	restored := len(live)
	snap.Live = nil
	n, trapped, err := d.enf.Replace(ctx, live)
	if err != nil {
		return fmt.Errorf("restore %d rules into the %s back-end: %w", restored, d.enf.Name(), err)
	}
	adopted, err := d.adoptLocked(ctx, cfg, trapped, now)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	d.log.Info("restored blocks", "rules", restored, "reinserted", n, "adopted", len(adopted), "expired", len(expired), "backend", d.enf.Name())

	var evs []api.Event
	evs = append(evs, api.Event{Time: now, Event: api.EventStart, Source: "daemon",
		Detail: fmt.Sprintf("snared %s, %s back-end, %d blocks restored (%d reinserted), %d adopted, %d expired", d.version, d.enf.Name(), restored, n, len(adopted), len(expired))})
	evs = append(evs, adoptEvents(adopted, now)...)
	evs = append(evs, expireEvents(expired, now)...)
	d.logEvents(evs...)
	if len(expired) > 0 {
		d.rec.Expired(len(expired))
	}

	tcp, udp, err := d.trapPorts(ctx, cfg)
	if err != nil {
		d.log.Warn("cannot list listening sockets; trap ports are the configured lists as they are", "err", err)
	}
	return d.applyTrapLocked(ctx, cfg, tcp, udp)
}

// trapSpec is the trap-port policy of cfg.
func trapSpec(cfg *config.Config) TrapPortSpec {
	t := cfg.EnforcerTrap()
	ex, _ := input.ParsePorts(cfg.Trap.Exclude)
	return TrapPortSpec{TCP: t.TCPPorts, UDP: t.UDPPorts, AdvancedBelow: cfg.Trap.AdvancedBelow, Exclude: ex}
}

// trapPorts computes the trap ports in force once (the watcher keeps them current later). When
// the listening sockets cannot be read, the configured lists are used as they are.
func (d *Daemon) trapPorts(ctx context.Context, cfg *config.Config) (tcp, udp []uint16, err error) {
	spec := trapSpec(cfg)
	if e, err := ReadEphemeralPorts(); err != nil {
		d.log.Warn("cannot read the ephemeral port range; configured trap ports inside it stay traps", "err", err)
	} else {
		spec.Ephemeral = e
		for _, l := range []struct {
			key   string
			ports []uint16
		}{{"trap.tcp_ports", spec.TCP}, {"trap.udp_ports", spec.UDP}} {
			if in := e.Ephemeral(l.ports); len(in) > 0 {
				d.log.Warn("trap ports inside the ephemeral port range are not trapped: replies to the host's own connections arrive there; narrow net.ipv4.ip_local_port_range or list them in net.ipv4.ip_local_reserved_ports to trap them",
					"key", l.key, "ports", input.FormatPorts(in), "range", e.String())
			}
		}
	}
	tl, ul, err := d.opts.Listening(ctx)
	if err != nil {
		spec.AdvancedBelow = 0
		tcp, udp = TrapPorts(spec, nil, nil)
		return tcp, udp, err
	}
	tcp, udp = TrapPorts(spec, tl, ul)
	return tcp, udp, nil
}

func (d *Daemon) applyTrapLocked(ctx context.Context, cfg *config.Config, tcp, udp []uint16) error {
	tc := cfg.EnforcerTrap()
	tc.TCPPorts, tc.UDPPorts = tcp, udp
	if err := d.enf.SetTrap(ctx, tc); err != nil {
		return fmt.Errorf("configure trap ports: %w", err)
	}
	d.trapTCP, d.trapUDP = tcp, udp
	return nil
}

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
		return d.enf.Block(ctx, toBackend(out))
	})
	if err != nil {
		d.undoKernel("block", undo)
		return nil, fmt.Errorf("block: %w", err)
	}
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
	gone []netip.Prefix
	back []backend.Rule
}

// note records, in the transaction that is about to change p, what the kernel has to go back to.
func (u *kernelUndo) note(tx *store.Tx, p netip.Prefix, now time.Time) error {
	old, ok, err := tx.Rule(p)
	if err != nil {
		return err
	}
	if ok && !old.Expired(now) {
		u.back = append(u.back, old.Enforced())
	} else {
		u.gone = append(u.gone, p)
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
	if err := errors.Join(d.enf.Unblock(ctx, u.gone), d.enf.Block(ctx, u.back)); err != nil {
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
				undo.back = append(undo.back, r.Enforced())
			}
		}
		// Also prefixes the store does not know: a trap block not yet adopted must go too.
		return d.enf.Unblock(ctx, prefixes)
	})
	if err != nil {
		d.undoKernel("unblock", undo)
		return nil, nil, fmt.Errorf("unblock: %w", err)
	}
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

// Entries returns every active block with its live counters, in prefix order.
func (d *Daemon) Entries(ctx context.Context) ([]api.Entry, error) {
	out := make([]api.Entry, 0, d.store.Count())
	err := d.EachEntry(ctx, func(e *api.Entry) error {
		out = append(out, *e)
		return nil
	})
	return out, err
}

// EachEntry calls fn with every active block and its live counters, in prefix order, without
// holding them all: the list of a million entries is streamed. The entry passed to fn is reused.
func (d *Daemon) EachEntry(ctx context.Context, fn func(*api.Entry) error) error {
	states, err := d.enf.Rules(ctx)
	if err != nil {
		return fmt.Errorf("read enforced rules: %w", err)
	}
	// The kernel's rules sorted like the store's, so the counters are merged in one walk.
	sortStates(states)
	now := time.Now()
	i := 0
	var e api.Entry
	return d.store.View(func(tx *store.Tx) error {
		return tx.ForEachRule(func(r store.Rule) error {
			if r.Expired(now) {
				return nil
			}
			e = entryOf(r)
			for i < len(states) && states[i].Prefix.Compare(r.Prefix) < 0 {
				i++
			}
			if i < len(states) && states[i].Prefix == r.Prefix {
				e.Hits, e.LastHit = states[i].Hits, states[i].LastHit
			}
			return fn(&e)
		})
	})
}

func entryOf(r store.Rule) api.Entry {
	return api.Entry{Prefix: r.Prefix.String(), Reason: r.Reason, Origin: r.Origin, Created: r.Created,
		Expires: r.Deadline, Permanent: r.Permanent(), Offences: r.Offences}
}

// Status reports the back-end, its counters and the trap ports in force.
func (d *Daemon) Status(ctx context.Context) (api.StatusResponse, error) {
	// Entries come from the store: counting the kernel's (a walk of every map) is for metrics.
	st, err := d.enf.Status(backend.WithoutEntryCount(ctx))
	if err != nil {
		return api.StatusResponse{}, fmt.Errorf("enforcer status: %w", err)
	}
	d.mu.Lock()
	cfg, allow, tcp, udp := d.cfg, len(d.allow), d.trapTCP, d.trapUDP
	d.mu.Unlock()
	n := d.store.Count()
	c := st.Counters
	out := api.StatusResponse{
		Version: d.version, Backend: st.Backend, Fallback: d.fallback, DryRun: cfg.DryRun,
		Entries: n, Capacity: c.Capacity, Passed: c.Passed, Dropped: c.Dropped, ByReason: c.ByReason,
		Evictions: c.Evictions + d.evictions.Load(), Allowlist: allow, StartedAt: d.started,
		Trap: api.TrapStatus{
			TCPPorts: input.FormatPorts(tcp), UDPPorts: input.FormatPorts(udp), Threshold: cfg.Trap.Threshold,
			Window: input.FormatDuration(time.Duration(cfg.Trap.Window)), TCPMode: cfg.Trap.TCPMode, UDPMode: cfg.Trap.UDPMode,
			ScanEntries: c.ScanEntries, Hits: c.TrapHits, Blocks: c.TrapBlocks, Suppressed: c.Suppressed,
		},
	}
	if out.Capacity == 0 {
		out.Capacity = cfg.Block.Capacity
	}
	for _, i := range st.Interfaces {
		out.Interfaces = append(out.Interfaces, api.InterfaceStatus{Name: i.Name, Mode: i.Mode})
	}
	return out, nil
}

// Evictions is how many blocks the sweeper found missing from the kernel and re-inserted.
func (d *Daemon) Evictions() uint64 { return d.evictions.Load() }

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

// HandleTrapEvents records trap events until ch closes: each scan goes to the event log, and a
// block the kernel made goes to the store (escalated, written back to the kernel). Events that
// arrive together are stored in one transaction. It reads ch to its end, also once ctx is done
// (the back-end closes ch then): events the back-end took from the kernel during a shutdown are
// still recorded, with a context that is not cancelled.
func (d *Daemon) HandleTrapEvents(ctx context.Context, ch <-chan backend.TrapEvent) {
	ctx = context.WithoutCancel(ctx)
	for ev := range ch {
		batch := []backend.TrapEvent{ev}
	drain:
		for len(batch) < 512 {
			select {
			case ev, ok := <-ch:
				if !ok {
					break drain
				}
				batch = append(batch, ev)
			default:
				break drain
			}
		}
		for _, ev := range batch {
			d.rec.TrapEvent(ev)
		}
		if err := d.handleTraps(ctx, batch); err != nil {
			d.log.Error("record trap events", "err", err, "events", len(batch))
		}
	}
}

func trapReason(ev backend.TrapEvent) string {
	ports := make([]string, len(ev.Ports))
	for i, p := range ev.Ports {
		ports[i] = strconv.Itoa(int(p))
	}
	s := "trap: " + ev.Proto + "/" + strings.Join(ports, ",")
	if ev.TCPFlags != "" {
		s += " " + ev.TCPFlags
	}
	return s
}

func (d *Daemon) handleTraps(ctx context.Context, batch []backend.TrapEvent) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.cfg
	now := time.Now()
	var evs []api.Event
	var blocked []store.Rule
	var release []netip.Prefix
	full := 0
	err := d.store.Update(func(tx *store.Tx) error {
		for _, ev := range batch {
			scan := api.Event{Time: ev.Time, Event: api.EventScan, Address: ev.Source.String(), Proto: ev.Proto,
				Ports: ev.Ports, TCPFlags: ev.TCPFlags, Source: api.OriginTrap}
			if scan.Time.IsZero() {
				scan.Time = now
			}
			p, perr := input.ParseTarget(ev.Source.String(), cfg.TargetRules())
			item, allowed := d.allow.Contains(ev.Source)
			switch {
			case ev.Allowlisted || allowed:
				scan.Action = "allowlisted"
				if allowed {
					scan.Detail = fmt.Sprintf("%s %s: not blocked", item.Source, item.Prefix)
				} else {
					scan.Detail = "allowlisted: not blocked"
				}
				if ev.Blocked && perr == nil {
					release = append(release, p) // the kernel's allowlist was behind ours
				}
				evs = append(evs, scan)
				continue
			case ev.Full:
				scan.Action = "not blocked"
				scan.Detail = fmt.Sprintf("block map full: block.capacity %d reached", cfg.Block.Capacity)
				evs = append(evs, scan)
				full++
				continue
			case !ev.Blocked:
				scan.Action = "logged"
				evs = append(evs, scan)
				continue
			case perr != nil:
				scan.Action = "blocked"
				scan.Detail = perr.Error()
				evs = append(evs, scan)
				continue
			}
			scan.Action = "blocked"
			if old, ok, err := tx.Rule(p); err == nil && ok && !old.Expired(now) && old.Origin == api.OriginTrap &&
				!old.LastOffence.Before(scan.Time.Add(-time.Second)) {
				// Already recorded since this event happened: adopted from the kernel by a sweep or
				// at start before its event was read. The same offence, not a repeat; it only
				// gets its real reason.
				old.Reason = trapReason(ev)
				if err := tx.PutRule(old); err != nil {
					return err
				}
				evs = append(evs, scan)
				continue
			}
			r, err := d.offendLocked(tx, cfg, p, api.OriginTrap, trapReason(ev), time.Duration(cfg.Block.TTL), false, now)
			if err != nil {
				return err
			}
			blocked = append(blocked, r)
			evs = append(evs, scan, blockEvent(r, api.OriginTrap, now))
		}
		if len(blocked) > 0 {
			// The kernel inserted the base TTL; write the escalated deadline back.
			if err := d.enf.Block(ctx, toBackend(blocked)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(release) > 0 {
		if err := d.enf.Unblock(ctx, release); err != nil {
			d.log.Error("release allowlisted trap block", "err", err)
		}
	}
	d.logEvents(evs...)
	if len(blocked) > 0 {
		d.rec.Blocked(api.OriginTrap, len(blocked))
	}
	if full > 0 {
		d.log.Warn("trap blocks refused: the block map is full; raise block.capacity or unblock",
			"capacity", cfg.Block.Capacity, "sources", full)
	}
	return nil
}

// EnforcerStatus is the enforcer's own status, what metrics read at scrape time. A back-end that
// does not know its capacity (ipset sizes come from the config) gets block.capacity.
func (d *Daemon) EnforcerStatus(ctx context.Context) (backend.Status, error) {
	st, err := d.enf.Status(ctx)
	if err == nil && st.Counters.Capacity == 0 {
		d.mu.Lock()
		st.Counters.Capacity = d.cfg.Block.Capacity
		d.mu.Unlock()
	}
	return st, err
}
