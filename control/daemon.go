package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/snare-dev/snare/control/eventlog"

	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/control/fleet"

	"github.com/snare-dev/snare/control/store"

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
	fleet    *fleet.Node // nil without a fleet section

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
	if o.Config.FleetEnabled() {
		// Before restore: trap blocks it adopts from the kernel are shared too.
		d.fleet = fleet.New(fleet.Options{Config: o.Config, Local: d, Store: st, Logger: d.log})
	}

	// Keeps the start after a reboot under 1 s (restore 1.1 s -> 0.5 s after attach).
	// Read the store while the enforcer loads: creating the million-entry LRU maps alone takes
	// the kernel ~0.4 s, and the store read about as long, on another core. Nothing else writes
	// the store before restore, which uses the snapshot unless it has to adopt kernel entries.
	snap := make(chan store.Snapshot, 1)
	go func() { snap <- st.Snapshot(time.Now()) }()

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
	if err := d.restore(ctx, snap); err != nil {
		d.Close()
		return nil, err
	}
	releaseBatchMemory(d.store.Count()) // restore's slices are out of scope only now
	return d, nil
}

// releaseBatchMemory collects a big batch's garbage at once and gives it back to the OS: keeps
// the 150 MB peak target, as the next big batch otherwise stacks on it (restart then sweep of
// 1M peaked at 157 MB without, 120 MB with).
func releaseBatchMemory(n int) {
	if n >= 100_000 {
		go debug.FreeOSMemory()
	}
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
