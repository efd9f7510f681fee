package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/control/store"
)

// Removal is a key deleted (or purged) in the bucket, or found gone by a reconcile.
type Removal struct {
	Prefix netip.Prefix
	// Revision of the delete: a fleet rule that came with an older revision goes. A reconcile
	// that found the key gone gives the highest revision there is.
	Revision uint64
	// At is when the delete was made (the server's clock): a rule this host made goes only if it
	// was made before (a local decision after the delete stands).
	At time.Time
}

// Local is what the fleet needs of the daemon.
type Local interface {
	// ApplyFleet applies blocks made elsewhere (origin fleet) to the store and the back-end and
	// returns how many it applied (not those it has already) and those the local allowlist
	// kept out.
	ApplyFleet(ctx context.Context, rules []store.Rule) (applied int, allowlisted []store.Rule, err error)
	// RemoveFleet applies removals (see Removal) and returns how many rules went.
	RemoveFleet(ctx context.Context, gone []Removal) (int, error)
	// FleetRulesNotFrom lists the stored rules of origin fleet whose revision live refuses.
	FleetRulesNotFrom(live func(revision uint64) bool) ([]netip.Prefix, error)
}

// Options configure New.
type Options struct {
	Config *config.Config
	Local  Local
	Store  *store.Store // its outbox holds the local decisions to share
	Logger *slog.Logger
}

// Node is this host in the fleet: its connection, the publisher of its outbox and the watcher of
// the bucket, and their counters.
type Node struct {
	cfg      config.FleetConfig
	name     string
	storeDir string // the embedded server's
	limits   limits
	local    Local
	st       *store.Store
	log      *slog.Logger
	wake     chan struct{}
	limit    *rate.Limiter // trap decisions published per second

	published, received, refused, shed, allowlisted, stale atomic.Uint64
	running                                                atomic.Bool // a session runs
	// Log lines a flood would repeat are written once an interval.
	shedLog, refuseLog, replicasLog, embeddedLog *rate.Sometimes

	// outboxMu makes a delete from the outbox and the count of what it published one step.
	outboxMu sync.Mutex

	mu        sync.Mutex
	connected bool
	lastErr   string
	embedded  *api.FleetEmbedded
	peers     map[string]time.Time
	// ownDeletes counts the keys this node's publisher deleted whose marker the watcher has not
	// seen yet: a marker carries no node, and this node's rule for the key, if any, is a block
	// made after the unblock, which the marker must not remove.
	ownDeletes map[string]int
	lag        time.Duration

	// allowlistedSeen holds the revision of each fleet block the allowlist kept out, so that a
	// reconnect, which reads every key again, does not count and log them again.
	allowlistedSeen map[netip.Prefix]uint64
}

// New prepares a node; Run connects it.
func New(o Options) *Node {
	c := o.Config
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxRate := c.Fleet.MaxPublishPerSecond
	return &Node{cfg: c.Fleet, name: c.FleetNode(), storeDir: c.FleetStoreDir(), local: o.Local, st: o.Store, log: log.With("component", "fleet"),
		limits: limits{rules: c.TargetRules(), maxTTL: time.Duration(c.Block.Escalation.MaxTTL)},
		wake:   make(chan struct{}, 1), limit: rate.NewLimiter(rate.Limit(maxRate), maxRate),
		peers: map[string]time.Time{}, ownDeletes: map[string]int{}, allowlistedSeen: map[netip.Prefix]uint64{},
		shedLog: &rate.Sometimes{Interval: 10 * time.Second}, refuseLog: &rate.Sometimes{Interval: time.Second},
		replicasLog: &rate.Sometimes{Interval: time.Hour}, embeddedLog: &rate.Sometimes{Interval: time.Minute}}
}

// Notify tells the publisher that the outbox has new decisions.
func (n *Node) Notify() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// gcMargin is how long a key outlives its deadline in the bucket: the engine's TTL only
// collects garbage, every host enforces the deadline itself.
const gcMargin = time.Minute

// markerTTL is how long the bucket keeps the marker of a key its TTL removed.
const markerTTL = time.Hour

// Run connects to the fleet (starting the embedded server first if configured) and shares
// decisions until ctx ends, reconnecting and reconciling as needed. Local enforcement never
// waits for it.
func (n *Node) Run(ctx context.Context) error {
	servers := slices.Clone(n.cfg.Servers)
	var embedded *server.Server
	if n.cfg.Embedded.Listen != "" {
		if embedded = n.startEmbeddedRetrying(ctx); embedded == nil {
			return nil // ended before the server could start
		}
		defer embedded.Shutdown()
		// This snared talks to its own server in process (over no socket, so neither TLS nor
		// credentials apply), and through it to the rest of a cluster.
		servers = []string{"nats://" + n.cfg.Embedded.Listen}
	}
	// Every (re)connect starts a session: a new watcher that reconciles from the bucket's state.
	sessions := make(chan struct{}, 1)
	poke := func() {
		select {
		case sessions <- struct{}{}:
		default:
		}
	}
	opts := []nats.Option{nats.Name("snared " + n.name), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ConnectHandler(func(*nats.Conn) { poke() }),
		nats.ReconnectHandler(func(*nats.Conn) { poke() }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			n.setConnected(false)
			if err != nil {
				n.setErr(fmt.Errorf("disconnected: %w", err))
			}
			poke()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { n.setErr(n.explain(err)) }),
		// Every failed attempt says why (refused, TLS required, authorization violation).
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				n.setErr(n.explain(fmt.Errorf("connect to %s: %w", strings.Join(servers, ","), err)))
			}
		}),
		// A refused user is retried like an unreachable server: the account may be pushed to the
		// server, or the creds file replaced (it is read on every attempt), after snared started.
		nats.IgnoreAuthErrorAbort(),
	}
	switch {
	case embedded != nil:
		opts = append(opts, nats.InProcessServer(embedded))
	default:
		if n.cfg.Creds != "" {
			opts = append(opts, nats.UserCredentials(n.cfg.Creds))
		}
		if n.cfg.TLS.CA != "" {
			opts = append(opts, nats.RootCAs(n.cfg.TLS.CA))
		}
		if n.cfg.TLS.Cert != "" {
			opts = append(opts, nats.ClientCert(n.cfg.TLS.Cert, n.cfg.TLS.Key))
		}
	}
	nc, err := nats.Connect(strings.Join(servers, ","), opts...)
	if err != nil {
		n.setErr(n.explain(fmt.Errorf("connect to %s: %w", strings.Join(servers, ","), err)))
		return err
	}
	defer nc.Close()
	if nc.IsConnected() {
		poke()
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	stop := func() {} // ends the running session and waits for it
	defer func() { stop() }()
	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sessions:
		case <-retry.C:
			if n.running.Load() || !nc.IsConnected() {
				continue
			}
		}
		stop()
		stop = func() {}
		n.setConnected(false)
		if !nc.IsConnected() {
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		stop = func() { cancel(); <-done }
		n.running.Store(true)
		go func() {
			defer close(done)
			defer n.running.Store(false)
			err := n.session(sctx, js)
			n.setConnected(false)
			if err != nil && sctx.Err() == nil {
				n.setErr(err)
				n.log.Warn("fleet session ended; retrying", "err", err)
			}
		}()
	}
}

// session binds the bucket and runs the watcher and the publisher until one fails or ctx ends.
func (n *Node) session(ctx context.Context, js jetstream.JetStream) error {
	kv, err := n.bucket(ctx, js)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", n.cfg.Bucket, err)
	}
	// The stream behind the bucket: an unblock reads a key's last revision, delete markers
	// included, which kv.Get does not give.
	stream, err := js.Stream(ctx, "KV_"+n.cfg.Bucket)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", n.cfg.Bucket, err)
	}
	sc := stream.CachedInfo().Config
	if !sc.AllowMsgTTL {
		return fmt.Errorf("bucket %s does not take a TTL per key, which snare's values carry: let snared create it, or create it with one (nats kv add %s --marker-ttl 1h)",
			n.cfg.Bucket, n.cfg.Bucket)
	}
	if sc.Replicas != n.cfg.Replicas {
		n.replicasLog.Do(func() {
			n.log.Warn("the fleet's bucket has other replicas than fleet.replicas, which applies only when snared creates it; left as it is",
				"bucket", n.cfg.Bucket, "replicas", sc.Replicas, "fleet.replicas", n.cfg.Replicas)
		})
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch bucket %s: %w", n.cfg.Bucket, err)
	}
	defer w.Stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- n.watch(ctx, w) }()
	go func() { errc <- n.publish(ctx, js, stream) }()
	err = <-errc
	cancel()
	<-errc
	return err
}

// bucket binds the fleet's bucket, creating it if missing: fleet.replicas applies then only,
// so that a host configured otherwise does not reshape the bucket every other host uses.
func (n *Node) bucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, n.cfg.Bucket)
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, err
	}
	kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: n.cfg.Bucket, Replicas: n.cfg.Replicas,
		LimitMarkerTTL: markerTTL, Description: "snare fleet: one key per blocked prefix"})
	if errors.Is(err, jetstream.ErrBucketExists) { // another host made it meanwhile
		return js.KeyValue(ctx, n.cfg.Bucket)
	}
	return kv, err
}

func (n *Node) setConnected(c bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.connected = c
	if c {
		n.lastErr = ""
	}
}

func (n *Node) setErr(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lastErr = err.Error()
}

// explain adds to an error of the server's authorization what the operator should check: the
// server names only the violation, not which side is wrong.
func (n *Node) explain(err error) error {
	msg := strings.ToLower(err.Error())
	switch {
	case !strings.Contains(msg, "authorization violation") && !strings.Contains(msg, "authentication expired") &&
		!strings.Contains(msg, "authentication revoked"):
		return err
	case n.cfg.Creds == "":
		return fmt.Errorf("%w (the server requires authentication, e.g. a NATS credentials file in fleet.creds, which is not set)", err)
	default:
		return fmt.Errorf("%w (the server refused the user of fleet.creds %s: is it a user of an account this server trusts, not expired or revoked?)", err, n.cfg.Creds)
	}
}

// Status is the node as `snarectl fleet status` shows it.
func (n *Node) Status() api.FleetStatus {
	n.mu.Lock()
	s := api.FleetStatus{Enabled: true, Node: n.name, Servers: slices.Clone(n.cfg.Servers), Bucket: n.cfg.Bucket,
		Connected: n.connected, Error: n.lastErr, LagMs: float64(n.lag.Microseconds()) / 1000}
	if n.embedded != nil {
		e := *n.embedded
		s.Embedded = &e
	}
	for name, at := range n.peers {
		s.Peers = append(s.Peers, api.FleetPeer{Node: name, LastSeen: at})
	}
	n.mu.Unlock()
	slices.SortFunc(s.Peers, func(a, b api.FleetPeer) int { return strings.Compare(a.Node, b.Node) })
	n.outboxMu.Lock() // the outbox and what left it, as of one moment
	s.Outbox = n.st.OutboxLen()
	s.Published, s.Received, s.Refused = n.published.Load(), n.received.Load(), n.refused.Load()
	n.outboxMu.Unlock()
	s.Shed, s.Allowlisted, s.Stale = n.shed.Load(), n.allowlisted.Load(), n.stale.Load()
	return s
}
