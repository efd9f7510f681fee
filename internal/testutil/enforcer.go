package testutil

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"sync"
	"time"

	"github.com/snare-dev/snare/backend"
)

// ErrMemFull is what MemEnforcer.Block returns past the room Limit gave it.
var ErrMemFull = errors.New("mem enforcer full")

// MemEnforcer is an in-memory backend.Enforcer: enough to run the real daemon (control.Open)
// without root or a kernel. It keeps rules, the allowlist and the trap config; it can be made
// to fail blocks. The zero value is ready to use.
type MemEnforcer struct {
	// Backend is the name it reports ("mem" when empty); Interfaces and Capacity go into its
	// Status as they are.
	Backend    string
	Interfaces []backend.InterfaceStatus
	Capacity   int
	// Hits, when set, is reported as every rule's hit count.
	Hits uint64

	mu    sync.Mutex
	rules map[netip.Prefix]backend.RuleState
	allow []netip.Prefix
	trap  backend.TrapConfig
	fail  error // returned by Block when set
	// room, when limited, is how many more rules Block accepts; past it Block fails with
	// ErrMemFull: a kernel map that fills up in the middle of a load.
	room    int
	limited bool
}

func (m *MemEnforcer) Name() string {
	if m.Backend == "" {
		return "mem"
	}
	return m.Backend
}

func (m *MemEnforcer) Block(_ context.Context, rules []backend.Rule) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	if m.rules == nil {
		m.rules = map[netip.Prefix]backend.RuleState{}
	}
	for _, r := range rules {
		if m.limited {
			if m.room == 0 {
				return ErrMemFull
			}
			m.room--
		}
		m.rules[r.Prefix] = backend.RuleState{Rule: r}
	}
	return nil
}

func (m *MemEnforcer) Unblock(_ context.Context, ps []netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range ps {
		delete(m.rules, p)
	}
	return nil
}

// Replace keeps the unexpired trap blocks rules lack and returns them, as the back-ends do.
func (m *MemEnforcer) Replace(ctx context.Context, list backend.Rules) (int, []backend.RuleState, error) {
	want := map[netip.Prefix]bool{}
	var rules []backend.Rule
	for i := range list.Len() {
		r := list.At(i)
		want[r.Prefix] = true
		rules = append(rules, r)
	}
	m.mu.Lock()
	var trapped []backend.RuleState
	for p, r := range m.rules {
		if !want[p] && r.FromTrap && (r.Deadline.IsZero() || r.Deadline.After(time.Now())) {
			trapped = append(trapped, r)
		} else {
			delete(m.rules, p)
		}
	}
	m.mu.Unlock()
	return len(rules), trapped, m.Block(ctx, rules)
}

func (m *MemEnforcer) Rules(context.Context) ([]backend.RuleState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []backend.RuleState
	for _, r := range m.rules {
		if m.Hits != 0 {
			r.Hits = m.Hits
		}
		out = append(out, r)
	}
	return out, nil
}

func (m *MemEnforcer) SetAllow(_ context.Context, ps []netip.Prefix) error {
	m.mu.Lock()
	m.allow = ps
	m.mu.Unlock()
	return nil
}

func (m *MemEnforcer) SetTrap(_ context.Context, c backend.TrapConfig) error {
	m.mu.Lock()
	m.trap = c
	m.mu.Unlock()
	return nil
}

func (m *MemEnforcer) SetSettings(context.Context, backend.Settings) error { return nil }

func (m *MemEnforcer) TrapEvents(ctx context.Context) (<-chan backend.TrapEvent, error) {
	ch := make(chan backend.TrapEvent)
	go func() { <-ctx.Done(); close(ch) }()
	return ch, nil
}

func (m *MemEnforcer) Status(context.Context) (backend.Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return backend.Status{Backend: m.Name(), Interfaces: m.Interfaces,
		Counters: backend.Counters{Entries: len(m.rules), Capacity: m.Capacity}}, nil
}

func (m *MemEnforcer) Close() error { return nil }

// Held is a copy of the rules it holds, by prefix.
func (m *MemEnforcer) Held() map[netip.Prefix]backend.RuleState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.rules)
}

// Len is how many rules it holds.
func (m *MemEnforcer) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.rules)
}

// Rule is the rule it holds for p, if any.
func (m *MemEnforcer) Rule(p netip.Prefix) (backend.RuleState, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.rules[p]
	return r, ok
}

// Put adds r as the kernel would on its own (a trap block) or as an earlier run left it.
func (m *MemEnforcer) Put(r backend.RuleState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rules == nil {
		m.rules = map[netip.Prefix]backend.RuleState{}
	}
	m.rules[r.Prefix] = r
}

// Allowed is the allowlist it was given last.
func (m *MemEnforcer) Allowed() []netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.allow
}

// Trap is the trap config it was given last.
func (m *MemEnforcer) Trap() backend.TrapConfig {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.trap
}

// FailBlocks makes Block (and so Replace) return err; nil ends that.
func (m *MemEnforcer) FailBlocks(err error) {
	m.mu.Lock()
	m.fail = err
	m.mu.Unlock()
}

// Limit makes Block accept room more rules and fail with ErrMemFull past them; a negative room
// lifts the limit.
func (m *MemEnforcer) Limit(room int) {
	m.mu.Lock()
	m.room, m.limited = room, room >= 0
	m.mu.Unlock()
}
