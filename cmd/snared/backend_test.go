package main

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/bpf"
	"github.com/snare-dev/snare/control/config"
	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
	fallback "github.com/snare-dev/snare/iptables-fallback"
	"github.com/snare-dev/snare/loader"
)

var discard = slog.New(slog.DiscardHandler)

// hostConfig is the default configuration on lab's host: its interfaces, pins in a fresh bpffs.
func hostConfig(t *testing.T, lab *netlab.Lab) *config.Config {
	t.Helper()
	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Interfaces = lab.HostIfaceNames()
	cfg.BPFFS = filepath.Join(testutil.TempBPFFS(t), "pins")
	return cfg
}

// Maps pinned by a newer snare are refused with loader.ErrNewerABI even with backend auto: that
// snare's program stays attached to them, so falling back to iptables would enforce twice, and on
// stale maps.
func TestNewerPinsRefusedNotFallenBack(t *testing.T) {
	lab := testutil.NewLab(t, "attacker")
	cfg := hostConfig(t, lab)
	if err := os.Mkdir(cfg.BPFFS, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), uint32(bpf.SnareAbiSNARE_ABI+1)); err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(filepath.Join(cfg.BPFFS, "abi")); err != nil {
		t.Fatal(err)
	}
	fellBack := false
	openFB := func([]string) (backend.Enforcer, error) {
		fellBack = true
		return nil, errors.New("the test offers no fallback")
	}
	lab.Do(lab.Host.NS, func() error {
		var enf backend.Enforcer
		enf, _, err = openBackend(cfg, discard, openFB)
		if err == nil {
			enf.Close()
		}
		return nil
	})
	if !errors.Is(err, loader.ErrNewerABI) || fellBack {
		t.Fatalf("backend auto over a newer snare's pins: %v (fallback tried: %v), want loader.ErrNewerABI", err, fellBack)
	}
}

// backend auto: when XDP cannot attach (native mode on a jumbo-MTU veth fails with ERANGE), the
// daemon runs on the iptables fallback and says why; backend xdp fails instead.
func TestAutoFallback(t *testing.T) {
	testutil.RequireRoot(t)
	lab, err := netlab.New(netlab.Config{Peers: []string{"attacker"}, MTU: 9000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	cfg := hostConfig(t, lab)
	cfg.XDPMode = "native"
	openFB := func(ifaces []string) (backend.Enforcer, error) {
		return fallback.New(fallback.Options{Interfaces: ifaces, Capacity: 1024, Prefix: "snta" + lab.Suffix,
			NetNS: "/run/netns/" + lab.Host.NS, Logger: discard})
	}
	open := func(c *config.Config) (backend.Enforcer, string, error) {
		var enf backend.Enforcer
		var reason string
		var err error
		lab.Do(lab.Host.NS, func() error {
			enf, reason, err = openBackend(c, discard, openFB)
			return nil
		})
		return enf, reason, err
	}

	enf, reason, err := open(cfg)
	if err != nil {
		t.Fatalf("backend auto with XDP failing: %v", err)
	}
	if enf.Name() != "iptables" || !strings.Contains(reason, "xdp unavailable") {
		t.Errorf("backend %s, reason %q: want the iptables fallback with the XDP error as reason", enf.Name(), reason)
	}
	enf.Close()

	xdpOnly := *cfg
	xdpOnly.Backend = "xdp"
	if enf, _, err := open(&xdpOnly); err == nil {
		enf.Close()
		t.Fatal("backend xdp succeeded where XDP cannot attach")
	}
}

// A pin directory another snared holds is an error with backend auto too: its program keeps
// enforcing there, which is no reason to fall back.
func TestLockedPinsNotFallenBack(t *testing.T) {
	lab := testutil.NewLab(t, "attacker")
	cfg := hostConfig(t, lab)
	fellBack := false
	openFB := func([]string) (backend.Enforcer, error) {
		fellBack = true
		return nil, errors.New("the test offers no fallback")
	}
	lab.Do(lab.Host.NS, func() error {
		first, _, err := openBackend(cfg, discard, openFB)
		if err != nil {
			t.Fatalf("first back-end: %v", err)
		}
		defer first.Close()
		second, _, err := openBackend(cfg, discard, openFB)
		if err == nil {
			second.Close()
		}
		if !errors.Is(err, loader.ErrLocked) || fellBack {
			t.Errorf("second back-end on the same pins: %v (fallback tried: %v), want loader.ErrLocked", err, fellBack)
		}
		return nil
	})
}
