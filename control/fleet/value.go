// Package fleet shares a host's block decisions with the other hosts of a fleet through one NATS
// JetStream key-value bucket, and applies theirs here. A key per prefix holds the latest block
// (its absolute deadline: every host enforces it itself, the bucket's per-key TTL only collects
// garbage); an unblock deletes the key. Local decisions reach the bucket from the store's outbox,
// so the engine is never on the local block path.
package fleet

import (
	"cmp"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/input"
	"github.com/snare-dev/snare/control/store"
)

// Value is what a key holds: one block as the host that made it stored it.
type Value struct {
	Prefix     string `json:"prefix"`
	DeadlineMs int64  `json:"deadline_ms"` // unix ms; 0: permanent
	Origin     string `json:"origin"`      // manual, trap or import on the node that made it
	Reason     string `json:"reason"`
	Node       string `json:"node"`
	MadeMs     int64  `json:"made_ms"` // unix ms of the decision
}

// Key is the bucket key of a prefix: "4.198-18-0-7.32", "6.<32 hex digits>.64" (KV keys allow
// only [-/_=.A-Za-z0-9]).
func Key(p netip.Prefix) string {
	a := p.Masked().Addr()
	if a.Is4() {
		b := a.As4()
		return fmt.Sprintf("4.%d-%d-%d-%d.%d", b[0], b[1], b[2], b[3], p.Bits())
	}
	b := a.As16()
	return "6." + hex.EncodeToString(b[:]) + "." + strconv.Itoa(p.Bits())
}

// ParseKey is the inverse of Key; anything Key would not write is an error.
func ParseKey(k string) (netip.Prefix, error) {
	parts := strings.Split(k, ".")
	if len(parts) != 3 {
		return netip.Prefix{}, fmt.Errorf("key %q: not family.address.bits", k)
	}
	bits, err := strconv.Atoi(parts[2])
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("key %q: bad prefix length", k)
	}
	var a netip.Addr
	switch parts[0] {
	case "4":
		a, err = netip.ParseAddr(strings.ReplaceAll(parts[1], "-", "."))
		if err != nil || !a.Is4() {
			return netip.Prefix{}, fmt.Errorf("key %q: bad IPv4 address", k)
		}
	case "6":
		b, err := hex.DecodeString(parts[1])
		if err != nil || len(b) != 16 {
			return netip.Prefix{}, fmt.Errorf("key %q: bad IPv6 address", k)
		}
		a = netip.AddrFrom16([16]byte(b))
	default:
		return netip.Prefix{}, fmt.Errorf("key %q: unknown family %q", k, parts[0])
	}
	p, err := a.Prefix(bits)
	if err != nil || p.Addr() != a || Key(p) != k {
		return netip.Prefix{}, fmt.Errorf("key %q: not a canonical prefix", k)
	}
	return p, nil
}

// valueOf is the value a local rule is shared as.
func valueOf(r store.Rule, node string) Value {
	made := r.LastOffence
	if made.IsZero() {
		made = r.Created // an imported rule: no offence, created when the list says
	}
	v := Value{Prefix: r.Prefix.String(), Origin: r.Origin, Reason: r.Reason, Node: node, MadeMs: made.UnixMilli()}
	if !r.Permanent() {
		v.DeadlineMs = r.Deadline.UnixMilli()
	}
	return v
}

// limits are what a value from the engine must keep to.
type limits struct {
	rules  input.TargetRules
	maxTTL time.Duration // 0: no cap
}

// skewAllowance is how far a value's deadline may lie beyond max_ttl from now: the clocks of
// two hosts differ a little.
const skewAllowance = time.Minute

var errExpired = errors.New("expired")

// decode checks a value read from key k and returns the rule it makes here (origin fleet).
// errExpired: a valid value whose deadline has passed (nothing to do, not refused).
func (l limits) decode(k string, data []byte, rev uint64, now time.Time) (store.Rule, error) {
	p, err := ParseKey(k)
	if err != nil {
		return store.Rule{}, err
	}
	var v Value
	if err := json.Unmarshal(data, &v); err != nil {
		return store.Rule{}, fmt.Errorf("key %s: value is not JSON: %w", k, err)
	}
	vp, err := netip.ParsePrefix(v.Prefix)
	if err != nil || vp != p {
		return store.Rule{}, fmt.Errorf("key %s: value's prefix %q is another prefix", k, v.Prefix)
	}
	r, err := l.rule(p, v, rev, now)
	if err == nil || errors.Is(err, errExpired) {
		err = cmp.Or(checkNode(v.Node), checkReason(p, v.Reason), err)
	}
	if err != nil && !errors.Is(err, errExpired) {
		return store.Rule{}, fmt.Errorf("key %s: %w", k, err)
	}
	return r, err
}

// checkNode refuses the name of a node that no config would give.
func checkNode(node string) error {
	if err := input.CheckText("node", node, 64); err != nil || node == "" {
		return fmt.Errorf("bad node %q", node)
	}
	return nil
}

func checkReason(p netip.Prefix, reason string) error {
	if err := input.CheckReason(reason); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// rule checks a block shared as v for prefix p and returns the rule it makes here (origin
// fleet, revision rev); v's node and reason are checked by the caller (a bulk value's node
// once, from its header).
// errExpired: a valid block whose deadline has passed.
func (l limits) rule(p netip.Prefix, v Value, rev uint64, now time.Time) (store.Rule, error) {
	if err := input.CheckTarget(p, l.rules); err != nil {
		return store.Rule{}, err
	}
	if !slices.Contains([]string{api.OriginManual, api.OriginTrap, api.OriginImport}, v.Origin) {
		return store.Rule{}, fmt.Errorf("%s: unknown origin %q", p, v.Origin)
	}
	if v.DeadlineMs < 0 || v.MadeMs <= 0 {
		return store.Rule{}, fmt.Errorf("%s: bad times (deadline_ms %d, made_ms %d)", p, v.DeadlineMs, v.MadeMs)
	}
	r := store.Rule{Prefix: p, Reason: v.Reason, Origin: api.OriginFleet, Created: time.UnixMilli(v.MadeMs),
		Offences: 1, LastOffence: time.UnixMilli(v.MadeMs), Node: v.Node, Revision: rev}
	if v.DeadlineMs == 0 {
		return r, nil // permanent stays permanent: a deliberate --ttl permanent, as here
	}
	r.Deadline = time.UnixMilli(v.DeadlineMs)
	if l.maxTTL != 0 && r.Deadline.After(now.Add(l.maxTTL+skewAllowance)) {
		return store.Rule{}, fmt.Errorf("%s: deadline %s is beyond block.escalation.max_ttl %s from now", p,
			r.Deadline.UTC().Format(time.RFC3339), input.FormatTTL(l.maxTTL))
	}
	if !now.Before(r.Deadline) {
		return r, errExpired
	}
	return r, nil
}
