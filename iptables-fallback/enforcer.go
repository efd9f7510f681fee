package fallback

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/vishvananda/netns"
	"golang.org/x/time/rate"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/internal/nsrun"
)

// Enforcer implements backend.Enforcer with ipset sets and iptables/ip6tables rules in the raw
// table. All methods are safe for concurrent use.
type Enforcer struct {
	opts  Options
	n     names
	log   *slog.Logger
	ns    nsHandle
	sets  *ipsetConn
	fams  []*family // IPv4, IPv6
	nflog io.Closer

	mu       sync.Mutex // config below and every change of the chains
	allow    []netip.Prefix
	settings backend.Settings
	v6bits   int // netmask of the ip6 set: the length a single IPv6 block covers
	trap     backend.TrapConfig
	limiter  *rate.Limiter

	scanMu sync.Mutex
	scan   *lru.Cache[netip.Addr, *scanState]

	hitMu sync.Mutex
	hits  map[netip.Prefix]hitMemo

	events     chan backend.TrapEvent
	trapBlocks atomic.Uint64
	suppressed atomic.Uint64
	// trapErrors counts failed trap blocks (a full set); trapErrLogged is when one was last logged.
	trapErrors    atomic.Uint64
	trapErrLogged atomic.Int64

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// hitMemo remembers an entry's packet count when Rules last read it: ipset keeps no last-hit
// time, so LastHit is the first read that saw the count grow.
type hitMemo struct {
	packets uint64
	last    time.Time
}

var _ backend.Enforcer = (*Enforcer)(nil)

// New creates (or adopts, after a restart) the sets, chains and rules for opts.Prefix and starts
// reading trap packets. Existing sets keep their entries and existing rules stay in place, so a
// restarting daemon leaves no gap.
func New(opts Options) (*Enforcer, error) {
	opts, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	e := &Enforcer{
		opts:   opts,
		n:      namesFor(opts.Prefix),
		log:    opts.Logger,
		hits:   map[netip.Prefix]hitMemo{},
		events: make(chan backend.TrapEvent, 1024),
		v6bits: backend.DefaultIPv6Prefix,
	}
	e.limiter = rate.NewLimiter(0, 0)
	if e.scan, err = lru.New[netip.Addr, *scanState](opts.ScanEntries); err != nil {
		return nil, fmt.Errorf("scan state: %w", err)
	}
	if e.ns, err = openNS(opts.NetNS); err != nil {
		return nil, err
	}
	if err := e.open(); err != nil {
		e.closeHandles()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.stop = cancel
	if err := e.startNflog(ctx); err != nil {
		cancel()
		e.closeHandles()
		return nil, err
	}
	if opts.CheckInterval > 0 {
		e.wg.Add(1)
		go e.watch(ctx)
	}
	return e, nil
}

func (e *Enforcer) open() error {
	var err error
	if e.sets, err = dialIpset(e.ns.fd()); err != nil {
		return err
	}
	if e.fams, err = newFamilies(e.ns, e.opts.Variant, e.n); err != nil {
		return err
	}
	if err := e.ensureSets(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.loadTrapPorts(); err != nil {
		return err
	}
	if e.trap.TTL, err = e.fams[0].trapTTLInPlace(e.n.trapChain); err != nil {
		return err
	}
	if e.settings.DryRun, err = e.fams[0].dryRunInPlace(e.n.chain, e.n.ip4); err != nil {
		return err
	}
	if _, err := e.syncChainsLocked(); err != nil {
		return err
	}
	return nil
}

// Name implements backend.Enforcer.
func (e *Enforcer) Name() string { return "iptables" }

// Close implements backend.Enforcer: it stops reading trap packets and the watcher and closes
// the sockets; sets and rules stay in the kernel.
func (e *Enforcer) Close() error {
	if e.stop != nil {
		e.stop()
	}
	e.wg.Wait()
	e.closeHandles()
	return nil
}

func (e *Enforcer) closeHandles() {
	if e.nflog != nil {
		e.nflog.Close()
		e.nflog = nil
	}
	if e.sets != nil {
		e.sets.Close()
		e.sets = nil
	}
	e.ns.close()
}

// watch repairs the chains and sets every CheckInterval, so a firewall reload that flushed them
// is undone within seconds.
func (e *Enforcer) watch(ctx context.Context) {
	defer e.wg.Done()
	t := time.NewTicker(e.opts.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if repaired, err := e.Repair(ctx); err != nil {
			e.log.Error("check iptables chains and ipset sets", "err", err)
		} else if repaired {
			e.log.Warn("iptables chains or ipset sets were changed by someone else: repaired")
		}
	}
}

// Repair checks that the sets exist and the chains hold exactly snare's rules, and restores
// what is missing. It reports whether anything had to be repaired. Destroyed sets come back with
// the allowlist and trap ports; block sets come back empty and the daemon's reconciliation
// (Replace) refills them.
func (e *Enforcer) Repair(ctx context.Context) (bool, error) {
	repaired := false
	for _, name := range e.n.allSets() {
		if _, err := e.sets.header(name); errors.Is(err, errSetMissing) {
			repaired = true
		} else if err != nil {
			return false, err
		}
	}
	if repaired {
		if err := e.ensureSets(); err != nil {
			return true, err
		}
		e.mu.Lock()
		err := e.writeTrapPortsLocked()
		allow := e.allow
		e.mu.Unlock()
		if err != nil {
			return true, err
		}
		if err := e.SetAllow(ctx, allow); err != nil {
			return true, err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	changed, err := e.syncChainsLocked()
	return repaired || changed, err
}

// nsHandle is the network namespace the enforcer works in; the zero value (and -1) is the
// caller's own.
type nsHandle struct{ h netns.NsHandle }

func openNS(path string) (nsHandle, error) {
	if path == "" {
		return nsHandle{h: -1}, nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nsHandle{h: -1}, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return nsHandle{h: h}, nil
}

// fd is the namespace for netlink sockets (0: the current one).
func (n nsHandle) fd() int {
	if n.h <= 0 {
		return 0
	}
	return int(n.h)
}

func (n *nsHandle) close() {
	if n.h > 0 {
		n.h.Close()
	}
	n.h = -1
}

// do runs fn in the namespace. iptables runs as a child process, which inherits the namespace of
// the thread that forks it: fn runs on a fresh, locked thread that has joined the namespace.
func (n nsHandle) do(fn func() error) error {
	if n.h <= 0 {
		return fn()
	}
	return nsrun.In(n.h, fn)
}
