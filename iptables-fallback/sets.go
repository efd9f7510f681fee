package fallback

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/backend"
)

// allowMaxElem bounds the allowlist sets: they hold a handful of prefixes.
const allowMaxElem = 65536

// hashSize picks the initial bucket count of a set holding up to maxElem entries: ipset starts
// at 1024 and doubles (rehashing everything) whenever a bucket overflows, which makes a bulk
// load of a million entries crawl.
func hashSize(maxElem int) uint32 {
	want := max(maxElem/4, 1024)
	return 1 << bits.Len(uint(want-1))
}

func (e *Enforcer) specs(v6bits int) map[string]setSpec {
	block := func(typ string, fam uint8, netmask uint8) setSpec {
		return setSpec{Type: typ, Family: fam, MaxElem: uint32(e.opts.Capacity),
			HashSize: hashSize(e.opts.Capacity), Netmask: netmask, Timeout: true, Counters: true, Comment: true}
	}
	// Kernel trap marks: full addresses (no netmask, so a new IPv6 block length needs no
	// migration), same timeouts as the blocks they mark.
	mark := func(fam uint8) setSpec {
		return setSpec{Type: "hash:ip", Family: fam, MaxElem: uint32(e.opts.Capacity),
			HashSize: hashSize(e.opts.Capacity), Timeout: true}
	}
	allow := func(fam uint8) setSpec {
		return setSpec{Type: "hash:net", Family: fam, MaxElem: allowMaxElem}
	}
	ports := setSpec{Type: "bitmap:port", Family: unix.NFPROTO_UNSPEC}
	var mask6 uint8
	if v6bits < 128 {
		mask6 = uint8(v6bits)
	}
	return map[string]setSpec{
		e.n.allow4:   allow(unix.NFPROTO_IPV4),
		e.n.allow6:   allow(unix.NFPROTO_IPV6),
		e.n.ip4:      block("hash:ip", unix.NFPROTO_IPV4, 0),
		e.n.ip6:      block("hash:ip", unix.NFPROTO_IPV6, mask6),
		e.n.net4:     block("hash:net", unix.NFPROTO_IPV4, 0),
		e.n.net6:     block("hash:net", unix.NFPROTO_IPV6, 0),
		e.n.trapTCP:  ports,
		e.n.trapUDP:  ports,
		e.n.trapped4: mark(unix.NFPROTO_IPV4),
		e.n.trapped6: mark(unix.NFPROTO_IPV6),
	}
}

// ensureSets creates missing sets and adopts existing ones. An existing set of the right type
// whose options differ (maxelem after a capacity change, missing counters) is migrated with its
// entries through a scratch set and an atomic swap; one of another type is refused.
func (e *Enforcer) ensureSets() error {
	// The IPv6 block length lives in the ip6 set (its netmask): adopt it.
	if h, err := e.sets.header(e.n.ip6); err == nil && h.Type == "hash:ip" {
		bits := 128
		if h.Netmask > 0 {
			bits = int(h.Netmask)
		}
		e.mu.Lock()
		e.v6bits = bits
		e.mu.Unlock()
	} else if err != nil && !errors.Is(err, errSetMissing) {
		return err
	}
	e.mu.Lock()
	specs := e.specs(e.v6bits)
	e.mu.Unlock()
	for _, name := range e.n.allSets() {
		spec := specs[name]
		h, err := e.sets.header(name)
		if errors.Is(err, errSetMissing) {
			if err := e.sets.create(name, spec); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if h.Type != spec.Type || (spec.Family != unix.NFPROTO_UNSPEC && h.Family != spec.Family) {
			return fmt.Errorf("set %s exists with type %s family %d, want %s family %d: remove it or choose another prefix",
				name, h.Type, h.Family, spec.Type, spec.Family)
		}
		if spec.Type == "bitmap:port" {
			continue
		}
		if h.MaxElem != spec.MaxElem || h.HasTimeout != spec.Timeout || h.Counters != spec.Counters || h.Comment != spec.Comment {
			e.log.Info("migrating ipset set to new options", "set", name, "maxelem", spec.MaxElem, "had", h.MaxElem)
			if err := e.migrate(name, spec, h.Type == "hash:net"); err != nil {
				return err
			}
		}
	}
	return nil
}

// migrate rebuilds set name with spec: a scratch set is filled with the entries, then swapped in
// atomically (rules refer to sets by index, so they see the new one at once).
func (e *Enforcer) migrate(name string, spec setSpec, isNet bool) error {
	tmp := name + tmpSuffix
	if err := e.sets.destroy(tmp); err != nil {
		return err
	}
	if err := e.sets.create(tmp, spec); err != nil {
		return err
	}
	var entries []setEntry
	if err := e.sets.list(name, func(se setEntry) { entries = append(entries, se) }); err != nil {
		return err
	}
	if spec.Timeout {
		if err := e.sets.add(tmp, isNet, entries); err != nil {
			return err
		}
	} else if err := e.sets.addPlain(tmp, isNet, entries); err != nil {
		return err
	}
	if err := e.sets.swap(name, tmp); err != nil {
		return err
	}
	return e.sets.destroy(tmp)
}

// setFor is the block set that holds the normalized prefix p (see backend.Place), and whether
// that set is a hash:net one.
func (e *Enforcer) setFor(p netip.Prefix, v6bits int) (name string, isNet bool) {
	switch backend.Place(p, v6bits) {
	case backend.Exact4:
		return e.n.ip4, false
	case backend.Exact6:
		return e.n.ip6, false
	case backend.CIDR4:
		return e.n.net4, true
	default:
		return e.n.net6, true
	}
}

// Comments on block entries carry what ipset cannot: the deadline of a block longer than ipset's
// maximum timeout ("until=UNIX") and whether the trap inserted it ("trap").
const (
	commentTrap  = "trap"
	commentUntil = "until="
)

func makeComment(fromTrap bool, until int64) string {
	var parts []string
	if fromTrap {
		parts = append(parts, commentTrap)
	}
	if until > 0 {
		parts = append(parts, commentUntil+strconv.FormatInt(until, 10))
	}
	return strings.Join(parts, ",")
}

func parseComment(c string) (fromTrap bool, until time.Time) {
	for _, part := range strings.Split(c, ",") {
		if part == commentTrap {
			fromTrap = true
		} else if s, ok := strings.CutPrefix(part, commentUntil); ok {
			if u, err := strconv.ParseInt(s, 10, 64); err == nil {
				until = time.Unix(u, 0)
			}
		}
	}
	return fromTrap, until
}

// entryFor turns a deadline into an ipset timeout: seconds rounded up, so an entry never stops
// dropping early. Deadlines beyond ipset's maximum timeout are kept without one, with the deadline
// in the comment, and expired by the daemon's sweeper. expired is true for a deadline already past.
func entryFor(p netip.Prefix, deadline time.Time, fromTrap bool, now time.Time) (se setEntry, expired bool) {
	se.Prefix = p
	if deadline.IsZero() {
		se.Comment = makeComment(fromTrap, 0)
		return se, false
	}
	d := deadline.Sub(now)
	if d <= 0 {
		return se, true
	}
	if (d+time.Second-1)/time.Second > ipsetMaxTimeout {
		se.Comment = makeComment(fromTrap, deadline.Add(time.Second-1).Unix())
		return se, false
	}
	se.Deadline = deadline // the timeout is computed as the entry is sent
	se.Comment = makeComment(fromTrap, 0)
	return se, false
}

// batch collects entries per set.
type batch struct {
	add map[string][]setEntry
	del map[string][]netip.Prefix
	net map[string]bool
}

func (e *Enforcer) sortRules(rules []backend.Rule, fromTrap bool) (batch, error) {
	b := batch{add: map[string][]setEntry{}, del: map[string][]netip.Prefix{}, net: map[string]bool{}}
	e.mu.Lock()
	v6bits := e.v6bits
	e.mu.Unlock()
	now := time.Now()
	// Size each set's batch first: a million-entry load would otherwise spend its time growing
	// slices.
	counts := map[string]int{}
	for _, r := range rules {
		if p, err := backend.Normalize(r.Prefix); err == nil {
			set, _ := e.setFor(p, v6bits)
			counts[set]++
		}
	}
	for set, n := range counts {
		b.add[set] = make([]setEntry, 0, n)
	}
	for _, r := range rules {
		p, err := backend.NormalizeBlock(r.Prefix)
		if err != nil {
			return b, err
		}
		set, isNet := e.setFor(p, v6bits)
		b.net[set] = isNet
		se, expired := entryFor(p, r.Deadline, fromTrap, now)
		if expired {
			b.del[set] = append(b.del[set], p)
			continue
		}
		b.add[set] = append(b.add[set], se)
	}
	return b, nil
}

func (e *Enforcer) apply(b batch) error {
	for set, entries := range b.add {
		if err := e.sets.add(set, b.net[set], entries); err != nil {
			return err
		}
	}
	for set, prefixes := range b.del {
		if err := e.sets.del(set, b.net[set], prefixes); err != nil {
			return err
		}
	}
	return nil
}

// Block implements backend.Enforcer. A deadline already past removes the entry.
func (e *Enforcer) Block(ctx context.Context, rules []backend.Rule) error {
	b, err := e.sortRules(rules, false)
	if err != nil {
		return err
	}
	return e.apply(b)
}

// Unblock implements backend.Enforcer.
func (e *Enforcer) Unblock(ctx context.Context, prefixes []netip.Prefix) error {
	rules := make([]backend.Rule, len(prefixes))
	for i, p := range prefixes {
		rules[i] = backend.Rule{Prefix: p, Deadline: time.Unix(1, 0)} // past: delete
	}
	b, err := e.sortRules(rules, false)
	if err != nil {
		return err
	}
	return e.apply(b)
}

// Rules implements backend.Enforcer. Deadlines of entries with a kernel timeout are accurate to
// the second (ipset reports whole seconds left); LastHit is when Rules first saw the entry's
// packet counter grow.
func (e *Enforcer) Rules(ctx context.Context) ([]backend.RuleState, error) {
	out, _, err := e.rules()
	return out, err
}

// rules is Rules plus how long the listing took: ipset computes each entry's time left when
// it sends it, so deadlines read late in a long dump come out up to that much early.
func (e *Enforcer) rules() ([]backend.RuleState, time.Duration, error) {
	e.mu.Lock()
	v6bits := e.v6bits
	e.mu.Unlock()
	blockSets := []string{e.n.ip4, e.n.net4, e.n.ip6, e.n.net6}
	size := 0
	for _, set := range blockSets {
		h, err := e.sets.header(set)
		if err != nil {
			return nil, 0, err
		}
		size += int(h.Elements)
	}
	now := time.Now()
	out := make([]backend.RuleState, 0, size+size/8) // entries may arrive while listing
	for _, set := range blockSets {
		err := e.sets.list(set, func(se setEntry) {
			p := se.Prefix
			if set == e.n.ip6 {
				p = netip.PrefixFrom(p.Addr(), v6bits)
			}
			fromTrap, until := parseComment(se.Comment)
			rs := backend.RuleState{Rule: backend.Rule{Prefix: p}, Hits: se.Packets, FromTrap: fromTrap}
			switch {
			case se.Timeout > 0:
				rs.Deadline = now.Add(time.Duration(se.Timeout) * time.Second)
			case !until.IsZero():
				rs.Deadline = until
			}
			out = append(out, rs)
		})
		if err != nil {
			return nil, 0, err
		}
	}
	// Kernel trap blocks not yet (or never) reported over NFLOG carry no comment: their marks,
	// read after the block sets, tell them apart.
	marked := map[netip.Prefix]bool{}
	for _, set := range []string{e.n.trapped4, e.n.trapped6} {
		err := e.sets.list(set, func(se setEntry) {
			a := se.Prefix.Addr()
			if a.Is4() {
				marked[netip.PrefixFrom(a, 32)] = true
			} else {
				marked[netip.PrefixFrom(a, v6bits).Masked()] = true
			}
		})
		if err != nil {
			return nil, 0, err
		}
	}
	if len(marked) > 0 {
		for i := range out {
			if marked[out[i].Prefix] {
				out[i].FromTrap = true
			}
		}
	}
	e.hitMu.Lock()
	seen := make(map[netip.Prefix]hitMemo, len(e.hits))
	for i := range out {
		r := &out[i]
		if r.Hits == 0 {
			continue
		}
		m, ok := e.hits[r.Prefix]
		if !ok || r.Hits != m.packets {
			m = hitMemo{packets: r.Hits, last: now}
		}
		seen[r.Prefix] = m
		r.LastHit = m.last
	}
	e.hits = seen
	e.hitMu.Unlock()
	return out, time.Since(now), nil
}

// sameDeadline allows for ipset's whole-second timeouts (rounded up when written, down when
// read); slack is how much earlier a slow read may see it.
func sameDeadline(have, want time.Time) bool { return withinSlack(have, want, 0) }

func withinSlack(have, want time.Time, slack time.Duration) bool {
	if have.IsZero() || want.IsZero() {
		return have.IsZero() && want.IsZero()
	}
	d := have.Sub(want)
	return d > -2*time.Second-slack && d < 2*time.Second
}

// Replace implements backend.Enforcer: the sets end up holding rules, and the unexpired trap
// blocks rules lack, which are returned for adoption. Entries already present with the same
// deadline keep their counters; it returns how many were (re)inserted. It also repairs the
// chains, since it is what the daemon calls to reconcile.
func (e *Enforcer) Replace(ctx context.Context, rules backend.Rules) (int, []backend.RuleState, error) {
	if _, err := e.Repair(ctx); err != nil {
		return 0, nil, err
	}
	have, slack, err := e.rules()
	if err != nil {
		return 0, nil, err
	}
	want := make(map[netip.Prefix]time.Time, min(rules.Len(), len(have)))
	norm := make([]backend.Rule, 0, rules.Len())
	for i := range rules.Len() {
		r := rules.At(i)
		p, err := backend.NormalizeBlock(r.Prefix)
		if err != nil {
			return 0, nil, err
		}
		if len(have) > 0 {
			want[p] = r.Deadline
		}
		norm = append(norm, backend.Rule{Prefix: p, Deadline: r.Deadline})
	}
	var stale []netip.Prefix
	var trapped []backend.RuleState
	now := time.Now()
	present := make(map[netip.Prefix]bool, len(have))
	for _, h := range have {
		d, ok := want[h.Prefix]
		if !ok {
			if h.FromTrap && (h.Deadline.IsZero() || h.Deadline.After(now)) {
				trapped = append(trapped, h)
			} else {
				stale = append(stale, h.Prefix)
			}
			continue
		}
		if withinSlack(h.Deadline, d, slack) {
			present[h.Prefix] = true
		}
	}
	missing := norm // the bulk load (empty sets): everything
	if len(present) > 0 {
		missing = make([]backend.Rule, 0, len(norm)-len(present))
		for _, r := range norm {
			if !present[r.Prefix] {
				missing = append(missing, r)
			}
		}
	}
	if err := e.Unblock(ctx, stale); err != nil {
		return 0, nil, err
	}
	if err := e.Block(ctx, missing); err != nil {
		return 0, nil, err
	}
	return len(missing), trapped, nil
}

// SetAllow implements backend.Enforcer: it rewrites both allowlist sets; the trap reader checks
// the same list in memory.
func (e *Enforcer) SetAllow(ctx context.Context, prefixes []netip.Prefix) error {
	var want4, want6 []setEntry
	clean := make([]netip.Prefix, 0, len(prefixes))
	for _, p := range prefixes {
		p, err := backend.Normalize(p)
		if err != nil {
			return fmt.Errorf("allowlist %s: %w", p, err)
		}
		if p.Bits() == 0 {
			return fmt.Errorf("allowlist %s: a prefix of length 0 cannot be stored in an ipset hash:net set", p)
		}
		clean = append(clean, p)
		if p.Addr().Is4() {
			want4 = append(want4, setEntry{Prefix: p})
		} else {
			want6 = append(want6, setEntry{Prefix: p})
		}
	}
	for _, s := range []struct {
		name string
		want []setEntry
	}{{e.n.allow4, want4}, {e.n.allow6, want6}} {
		if err := e.syncPlain(s.name, s.want); err != nil {
			return fmt.Errorf("allowlist: %w", err)
		}
	}
	e.mu.Lock()
	e.allow = clean
	e.mu.Unlock()
	return nil
}

// syncPlain makes a hash:net set without timeouts hold exactly want: missing ones are added
// first, stale ones deleted after, so nothing allowed is ever briefly missing.
func (e *Enforcer) syncPlain(name string, want []setEntry) error {
	keep := map[netip.Prefix]bool{}
	for _, w := range want {
		keep[w.Prefix] = true
	}
	var stale []netip.Prefix
	if err := e.sets.list(name, func(se setEntry) {
		if !keep[se.Prefix] {
			stale = append(stale, se.Prefix)
		}
	}); err != nil {
		return err
	}
	if err := e.sets.addPlain(name, true, want); err != nil {
		return err
	}
	return e.sets.del(name, true, stale)
}

// SetSettings implements backend.Enforcer. Dry-run turns the DROP rules into counting rules;
// a new IPv6 block length rebuilds the ip6 set with the new netmask and re-places its entries.
func (e *Enforcer) SetSettings(ctx context.Context, s backend.Settings) error {
	bits, err := s.IPv6Bits()
	if err != nil {
		return err
	}
	s.IPv6Prefix = bits
	e.mu.Lock()
	old := e.v6bits
	e.mu.Unlock()
	if old != bits {
		if err := e.changeV6Bits(ctx, bits); err != nil {
			return err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.settings = s
	_, err = e.syncChainsLocked()
	return err
}

// changeV6Bits swaps an empty ip6 set with the new netmask in and re-blocks every IPv6 entry
// whose set changes (backend.Place): what the old ip6 set held moves to net6, and net6 entries
// of the new length move to ip6, where Unblock will look for them.
func (e *Enforcer) changeV6Bits(ctx context.Context, bits int) error {
	all, err := e.Rules(ctx)
	if err != nil {
		return err
	}
	var moved []backend.Rule
	var leaveNet6 []netip.Prefix
	e.mu.Lock()
	oldBits := e.v6bits
	e.mu.Unlock()
	for _, r := range all {
		if !r.Prefix.Addr().Is6() {
			continue
		}
		switch r.Prefix.Bits() {
		case oldBits:
			moved = append(moved, r.Rule)
		case bits:
			moved = append(moved, r.Rule)
			leaveNet6 = append(leaveNet6, r.Prefix)
		}
	}
	spec := e.specs(bits)[e.n.ip6]
	tmp := e.n.ip6 + tmpSuffix
	if err := e.sets.destroy(tmp); err != nil {
		return err
	}
	if err := e.sets.create(tmp, spec); err != nil {
		return err
	}
	e.mu.Lock()
	e.v6bits = bits
	e.mu.Unlock()
	if err := e.sets.swap(e.n.ip6, tmp); err != nil {
		return err
	}
	if err := e.sets.destroy(tmp); err != nil {
		return err
	}
	if err := e.Block(ctx, moved); err != nil {
		return err
	}
	return e.sets.del(e.n.net6, true, leaveNet6) // after: they drop from ip6 already
}
