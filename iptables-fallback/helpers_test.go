package fallback

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
)

// Every test works in the host namespace of its own lab (testutil), with a random prefix, so it
// never touches the machine's firewall or another test's objects.

func testPrefix(t *testing.T) string {
	t.Helper()
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "snt" + hex.EncodeToString(b[:])
}

type fixture struct {
	lab    *netlab.Lab
	opts   Options
	e      *Enforcer
	ctx    context.Context
	prefix string
}

// variants returns the iptables variants installed here; tests that matter for both run once each.
func variants() []string {
	var out []string
	for _, v := range []string{"legacy", "nft"} {
		if _, err := exec.LookPath("iptables-" + v); err == nil {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		out = []string{""}
	}
	return out
}

func newFixture(t *testing.T, variant string) *fixture {
	t.Helper()
	testutil.RequireRoot(t)
	lab := testutil.NewLab(t)
	f := &fixture{lab: lab, ctx: context.Background(), prefix: testPrefix(t)}
	f.opts = Options{
		Capacity:      4096,
		Prefix:        f.prefix,
		NetNS:         filepath.Join("/run/netns", lab.Host.NS),
		Variant:       variant,
		CheckInterval: -1,
	}
	f.e = f.open(t)
	return f
}

func (f *fixture) open(t *testing.T) *Enforcer {
	t.Helper()
	e, err := New(f.opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// ipt runs iptables (or ip6tables) of the fixture's variant in the lab's host namespace.
func (f *fixture) ipt(t *testing.T, v6 bool, args ...string) string {
	t.Helper()
	bin := "iptables"
	if v6 {
		bin = "ip6tables"
	}
	if f.opts.Variant != "" {
		bin += "-" + f.opts.Variant
	}
	out, err := f.lab.Run(f.lab.Host.NS, bin, args...)
	if err != nil {
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return out
}

// reachable pings dst from peer ns; a lost ping is retried once, so one dropped probe of a busy
// machine does not read as a block.
func (f *fixture) reachable(ns string, dst netip.Addr) bool {
	for range 2 {
		if f.lab.Ping(ns, dst, 500*time.Millisecond) == nil {
			return true
		}
	}
	return false
}

func (f *fixture) hostAddr(peer *netlab.Node, v6 bool) netip.Addr {
	for _, ifc := range f.lab.Host.Ifaces {
		if ifc.Peer == peer.Role {
			if v6 {
				return ifc.Addr6.Addr()
			}
			return ifc.Addr4.Addr()
		}
	}
	panic("no host interface towards " + peer.Role)
}

func rulesByPrefix(t *testing.T, e *Enforcer) map[netip.Prefix]backend.RuleState {
	t.Helper()
	rs, err := e.Rules(context.Background())
	if err != nil {
		t.Fatalf("Rules: %v", err)
	}
	out := map[netip.Prefix]backend.RuleState{}
	for _, r := range rs {
		if _, dup := out[r.Prefix]; dup {
			t.Fatalf("Rules lists %s twice", r.Prefix)
		}
		out[r.Prefix] = r
	}
	return out
}

// eventually polls cond every 100ms for up to limit.
func eventually(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return cond()
}

// setExists tells whether an ipset set exists in the lab's host namespace.
func (f *fixture) setExists(t *testing.T, name string) bool {
	t.Helper()
	var exists bool
	err := f.lab.Do(f.lab.Host.NS, func() error {
		c, err := dialIpset(0)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.header(name)
		if errors.Is(err, errSetMissing) {
			return nil
		}
		exists = err == nil
		return err
	})
	if err != nil {
		t.Fatalf("check set %s: %v", name, err)
	}
	return exists
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func containsLine(out, want string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}

func testPrefixB() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "snb" + hex.EncodeToString(b[:])
}
