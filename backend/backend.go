// Package backend is the small contract between snare's control plane and its two enforcement
// back-ends: the XDP data path (package loader) and the ipset + iptables fallback (package
// fallback, in iptables-fallback/). Nothing above this interface knows which one is in use.
// What both back-ends decide alike about a block lives here too: how a prefix is normalised
// (Normalize), where it is kept (Place) and the IPv6 block length (Settings.IPv6Bits).
package backend

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// Rule is one block as the enforcer sees it: a source prefix (a /32 or /128 for a single
// address) and the wall-clock time it stops dropping. A zero Deadline means permanent.
type Rule struct {
	Prefix   netip.Prefix
	Deadline time.Time
}

// Permanent reports whether the rule never expires.
func (r Rule) Permanent() bool { return r.Deadline.IsZero() }

// Rules is a list of rules read by position. At may be called from several goroutines at once.
// A restore hands the enforcer a million rules this way, kept compact by the caller, instead of
// as a []Rule: 56 MB with pointers, which a start touched for the first time.
type Rules interface {
	Len() int
	At(i int) Rule
}

// RuleList is a []Rule as Rules.
type RuleList []Rule

func (l RuleList) Len() int      { return len(l) }
func (l RuleList) At(i int) Rule { return l[i] }

// RuleState is a rule as found in the kernel, with its hit counter.
type RuleState struct {
	Rule
	Hits    uint64
	LastHit time.Time // zero if never hit
	// FromTrap is true for blocks the enforcer inserted itself at a trap trigger; the daemon
	// adopts those it has not heard of (a rate-limited event, a daemon that was down).
	FromTrap bool
}

// MaxTrapThreshold is the largest TrapConfig.Threshold: the XDP program's scan state remembers
// that many distinct ports (TRAP_MAX_PORTS; the loader fails to compile if the two differ). It
// lives here so that the iptables back-end and the configuration need not link the XDP program.
const MaxTrapThreshold = 16

// TrapConfig is what the enforcer needs to catch scanners itself.
type TrapConfig struct {
	TCPPorts  []uint16
	UDPPorts  []uint16
	Threshold int           // distinct trap ports within Window that trigger a block (1..MaxTrapThreshold)
	Window    time.Duration // how long a source's scan state counts
	TTL       time.Duration // base TTL of a trap block; the daemon escalates afterwards (0 = permanent)
	BlockTCP  bool          // false: log mode for TCP (record, do not block)
	BlockUDP  bool          // false: log mode for UDP
	// EventsPerSecond and EventBurst rate-limit trap events sent to user space (per CPU in XDP).
	EventsPerSecond int
	EventBurst      int
}

// Settings are the enforcer-wide switches.
type Settings struct {
	DryRun bool // count what would be dropped, pass it
	// IPv6Prefix is the prefix length an IPv6 block covers when given a single address (0: the
	// default, DefaultIPv6Prefix).
	IPv6Prefix int
}

// DefaultIPv6Prefix is the length an IPv6 block covers unless configured: a /64 is what one
// host usually has to itself.
const DefaultIPv6Prefix = 64

// IPv6Bits is the length an IPv6 block covers under s, the one Place takes. It refuses a length
// outside 1..128.
func (s Settings) IPv6Bits() (int, error) {
	bits := s.IPv6Prefix
	if bits == 0 {
		bits = DefaultIPv6Prefix
	}
	if bits < 1 || bits > 128 {
		return 0, fmt.Errorf("ipv6 block prefix /%d out of range 1..128", bits)
	}
	return bits, nil
}

// TrapEvent is sent by the enforcer when a source hits trap ports.
type TrapEvent struct {
	Time     time.Time
	Source   netip.Addr
	Proto    string   // "tcp" or "udp"
	Ports    []uint16 // distinct trap ports hit in the window, newest last
	TCPFlags string   // e.g. "SYN", "FIN", "NULL", "FIN|PSH|URG"
	// Blocked is true when the enforcer inserted the block itself; false in log mode or when
	// the source is allowlisted (Allowlisted then says why).
	Blocked     bool
	Allowlisted bool
	// Full is true when the source would have been blocked but the block map already holds
	// block.capacity entries: a trap flood never evicts the blocks the daemon made.
	Full bool
}

// InterfaceStatus tells how the enforcer is attached to one interface.
type InterfaceStatus struct {
	Name string `json:"name"`
	Mode string `json:"mode"` // "native", "generic", "iptables"

	// Per-interface packets and bytes by reason, where the back-end counts per interface (XDP).
	// SharedWith names interfaces whose counters cannot be told apart from this one's.
	Packets    map[string]uint64 `json:"packets,omitempty"`
	Bytes      map[string]uint64 `json:"bytes,omitempty"`
	SharedWith []string          `json:"shared_with,omitempty"`
}

// Counters are the enforcer's totals since its maps or chains were created.
type Counters struct {
	Passed      uint64            `json:"passed"`
	Dropped     uint64            `json:"dropped"`
	ByReason    map[string]uint64 `json:"by_reason"` // e.g. "drop_exact", "drop_cidr", "pass_allow"
	Evictions   uint64            `json:"evictions"`
	TrapHits    uint64            `json:"trap_hits"`
	TrapBlocks  uint64            `json:"trap_blocks"`
	Suppressed  uint64            `json:"events_suppressed"`
	ScanEntries int               `json:"scan_entries"`
	Entries     int               `json:"entries"`
	Capacity    int               `json:"capacity"`

	// BytesByReason holds the bytes of the packets counted in ByReason, where the back-end
	// counts them (nil otherwise).
	BytesByReason map[string]uint64 `json:"bytes_by_reason,omitempty"`
}

// Status is a snapshot for `snarectl status` and metrics.
type Status struct {
	Backend    string            `json:"backend"` // "xdp" or "iptables"
	Interfaces []InterfaceStatus `json:"interfaces"`
	Counters   Counters          `json:"counters"`
}

// Enforcer is implemented by the XDP data path and by the iptables fallback.
// All methods must be safe for concurrent use.
type Enforcer interface {
	// Name is "xdp" or "iptables".
	Name() string
	// Block inserts or replaces rules, all in one batch where the back-end allows. It only
	// reads rules: a bulk import writes its store from the same slice meanwhile.
	Block(ctx context.Context, rules []Rule) error
	// Unblock removes rules; prefixes that are not present are ignored.
	Unblock(ctx context.Context, prefixes []netip.Prefix) error
	// Replace makes the kernel state equal to rules (used on start), with one exception: trap
	// blocks the kernel made itself (FromTrap, not expired) that rules lack stay in place and
	// are returned, for the caller to adopt. It returns how many rules had to be (re)inserted.
	Replace(ctx context.Context, rules Rules) (inserted int, trapped []RuleState, err error)
	// Rules reads every rule currently enforced, with hit counters.
	Rules(ctx context.Context) ([]RuleState, error)
	// SetAllow replaces the allowlist: sources inside it always pass and are never trap-blocked.
	SetAllow(ctx context.Context, prefixes []netip.Prefix) error
	// SetTrap configures trap detection; ports lists may be empty (detection off).
	SetTrap(ctx context.Context, cfg TrapConfig) error
	// SetSettings changes the enforcer-wide switches.
	SetSettings(ctx context.Context, s Settings) error
	// TrapEvents delivers trap events until ctx ends; the channel is closed then, once every
	// event already taken from the kernel has been delivered. The caller reads it until it is
	// closed: an event read from the kernel and then dropped is gone for good.
	TrapEvents(ctx context.Context) (<-chan TrapEvent, error)
	// Status reports attachment and counters. Counting the entries may walk the maps (about
	// 0.3 s at a million in XDP); a caller that does not need Counters.Entries says so with
	// WithoutEntryCount, and may then find it zero.
	Status(ctx context.Context) (Status, error)
	// Close releases user-space resources but leaves enforcement in place (pinned / in the kernel),
	// so a restarting daemon leaves no gap.
	Close() error
}

type noEntryCount struct{}

// WithoutEntryCount marks ctx for a Status call that needs no Counters.Entries (the daemon's
// API status takes the count from its store, and is polled).
func WithoutEntryCount(ctx context.Context) context.Context {
	return context.WithValue(ctx, noEntryCount{}, true)
}

// EntryCountWanted reports whether a Status call with ctx should count the entries.
func EntryCountWanted(ctx context.Context) bool {
	skip, _ := ctx.Value(noEntryCount{}).(bool)
	return !skip
}
