package loader

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
)

// openIn opens the loader inside the lab's host namespace, where the host-side veths live.
func openIn(t *testing.T, lab *netlab.Lab, opts Options) (*XDP, error) {
	t.Helper()
	var x *XDP
	err := lab.Do(lab.Host.NS, func() error {
		var err error
		x, err = Open(opts)
		return err
	})
	return x, err
}

// reaches reports whether one ping from the peer's namespace to the host gets an answer.
func reaches(lab *netlab.Lab, peer *netlab.Node, dst netip.Addr) bool {
	_, err := lab.Run(peer.NS, "ping", "-n", "-q", "-c", "1", "-W", "1", dst.String())
	return err == nil
}

// reachesSoon reports whether the peer gets an answer within 3 s, pinging every 200 ms (at most
// 15 echoes). Right after a block is lifted the peer's neighbour entry for the host may still be
// waiting on a solicitation the block dropped (IPv6 retransmits one a second), so a single echo
// with a 1 s wait can be lost though nothing drops it any more.
func reachesSoon(lab *netlab.Lab, peer *netlab.Node, dst netip.Addr) bool {
	_, err := lab.Run(peer.NS, "ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", "3", dst.String())
	return err == nil
}

// xdpOn reads the XDP attachment of iface inside the host namespace.
func xdpOn(t *testing.T, lab *netlab.Lab, iface string) (attached bool, mode uint32) {
	t.Helper()
	err := lab.Do(lab.Host.NS, func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil {
			attached, mode = x.Attached, x.AttachMode
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return attached, mode
}

func TestAttachBlockRestartRemove(t *testing.T) {
	for _, mode := range []string{"native", "generic"} {
		t.Run(mode, func(t *testing.T) {
			lab := testutil.NewLab(t, "attacker", "client")
			pins := filepath.Join(testutil.TempBPFFS(t), "snare")
			ifaces := lab.HostIfaceNames()
			opts := Options{Interfaces: ifaces, Mode: mode, PinDir: pins, Capacity: 1024, Logger: testLogger(t)}
			hostA := lab.HostIface("attacker").Addr4.Addr()
			hostC := lab.HostIface("client").Addr4.Addr()
			hostA6 := lab.HostIface("attacker").Addr6.Addr()

			x, err := openIn(t, lab, opts)
			if err != nil {
				t.Fatal(err)
			}
			st, err := x.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Interfaces) != len(ifaces) {
				t.Fatalf("status interfaces %+v", st.Interfaces)
			}
			for _, ifc := range st.Interfaces {
				if ifc.Mode != mode {
					t.Fatalf("%s attached %s, want %s", ifc.Name, ifc.Mode, mode)
				}
			}
			if !reachesSoon(lab, lab.Attacker(), hostA) || !reachesSoon(lab, lab.Client(), hostC) {
				t.Fatal("lab not reachable before any block")
			}

			blockRules := []backend.Rule{
				{Prefix: netip.PrefixFrom(lab.Attacker().Addr4(), 32), Deadline: time.Now().Add(time.Hour)},
				{Prefix: netip.PrefixFrom(lab.Attacker().Addr6(), 128)}, // permanent, stored as its /64
			}
			if err := x.Block(context.Background(), blockRules); err != nil {
				t.Fatal(err)
			}
			if reaches(lab, lab.Attacker(), hostA) || reaches(lab, lab.Attacker(), hostA6) {
				t.Fatal("blocked attacker still reaches the host")
			}
			if !reachesSoon(lab, lab.Client(), hostC) {
				t.Fatal("client lost the host")
			}

			// Counters are kept per interface: the drops are on the attacker's side only.
			st, err = x.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, ifc := range st.Interfaces {
				if len(ifc.SharedWith) > 0 {
					t.Logf("%s shares its counter slot with %v: per-interface check skipped", ifc.Name, ifc.SharedWith)
					continue
				}
				drops := ifc.Packets["drop_exact"]
				switch ifc.Name {
				case lab.HostIface("attacker").Name:
					if drops == 0 || ifc.Bytes["drop_exact"] == 0 {
						t.Errorf("%s: no drops counted: %v", ifc.Name, ifc.Packets)
					}
				case lab.HostIface("client").Name:
					if drops != 0 || ifc.Packets["pass"] == 0 {
						t.Errorf("%s: drops %d, passes %d; want 0 and some", ifc.Name, drops, ifc.Packets["pass"])
					}
				}
			}

			// A second daemon on the same pin directory is refused.
			if _, err := openIn(t, lab, opts); !errors.Is(err, ErrLocked) {
				t.Fatalf("second open: %v, want ErrLocked", err)
			}

			// The daemon goes away: the pinned link and maps keep dropping.
			if err := x.Close(); err != nil {
				t.Fatal(err)
			}
			if reaches(lab, lab.Attacker(), hostA) {
				t.Fatal("attacker reaches the host while no daemon runs")
			}

			// A restarted daemon (mode auto) takes over the same link and maps.
			opts.Mode = "auto"
			y, err := openIn(t, lab, opts)
			if err != nil {
				t.Fatal(err)
			}
			st, _ = y.Status(context.Background())
			for _, ifc := range st.Interfaces {
				if ifc.Mode != mode {
					t.Fatalf("after restart %s reports %s, want the pinned %s", ifc.Name, ifc.Mode, mode)
				}
			}
			rules, err := y.Rules(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(rules) != 2 || rules[0].Hits+rules[1].Hits == 0 {
				t.Fatalf("rules after restart %+v, want both with hits", rules)
			}
			if err := y.Unblock(context.Background(), []netip.Prefix{blockRules[0].Prefix}); err != nil {
				t.Fatal(err)
			}
			if !reachesSoon(lab, lab.Attacker(), hostA) {
				t.Fatal("unblocked attacker still dropped")
			}
			if reaches(lab, lab.Attacker(), hostA6) {
				t.Fatal("the v6 block went with the v4 one")
			}
			y.Close()

			// Uninstall: no program on any interface, no pins.
			if err := lab.Do(lab.Host.NS, func() error { return Remove(pins, ifaces) }); err != nil {
				t.Fatal(err)
			}
			for _, ifc := range ifaces {
				if on, _ := xdpOn(t, lab, ifc); on {
					t.Fatalf("xdp still attached to %s after Remove", ifc)
				}
			}
			if _, err := os.Stat(pins); !os.IsNotExist(err) {
				t.Fatalf("pin directory still there: %v", err)
			}
			if !reachesSoon(lab, lab.Attacker(), hostA6) {
				t.Fatal("attacker still dropped after uninstall")
			}
		})
	}
}

func TestOpenBadInput(t *testing.T) {
	lab := testutil.NewLab(t, "attacker")
	pins := filepath.Join(testutil.TempBPFFS(t), "snare")
	good := Options{Interfaces: lab.HostIfaceNames(), Mode: "auto", PinDir: pins, Capacity: 1024}
	for name, mut := range map[string]func(*Options){
		"no interface":      func(o *Options) { o.Interfaces = nil },
		"missing interface": func(o *Options) { o.Interfaces = []string{"snare-nonexist0"} },
		"bad mode":          func(o *Options) { o.Mode = "turbo" },
		"zero capacity":     func(o *Options) { o.Capacity = 0 },
		"no pin dir":        func(o *Options) { o.PinDir = "" },
		"pin dir not bpffs": func(o *Options) { o.PinDir = t.TempDir() },
	} {
		t.Run(name, func(t *testing.T) {
			o := good
			mut(&o)
			x, err := openIn(t, lab, o)
			if err == nil {
				x.Close()
				t.Fatal("accepted")
			}
			t.Logf("error: %v", err)
			for _, ifc := range good.Interfaces {
				if on, _ := xdpOn(t, lab, ifc); on {
					t.Fatalf("xdp left attached to %s after a failed open", ifc)
				}
			}
		})
	}
}

// TestAutoFallsBackToGeneric uses a jumbo MTU, which veth cannot run native XDP with (ERANGE):
// auto mode must fall back to generic and say so, native mode must fail with the reason.
func TestAutoFallsBackToGeneric(t *testing.T) {
	testutil.RequireRoot(t)
	lab, err := netlab.New(netlab.Config{Peers: []string{"attacker"}, MTU: 9000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	pins := filepath.Join(testutil.TempBPFFS(t), "snare")
	opts := Options{Interfaces: lab.HostIfaceNames(), Mode: "native", PinDir: pins, Capacity: 1024, Logger: testLogger(t)}

	if x, err := openIn(t, lab, opts); err == nil {
		x.Close()
		t.Fatal("native attach with a 9000 MTU on veth succeeded; the test premise is wrong")
	} else {
		t.Logf("native: %v", err)
	}
	if on, _ := xdpOn(t, lab, opts.Interfaces[0]); on {
		t.Fatal("failed native attach left a program attached")
	}

	opts.Mode = "auto"
	x, err := openIn(t, lab, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		x.Close()
		lab.Do(lab.Host.NS, func() error { return Remove(pins, opts.Interfaces) })
	}()
	st, err := x.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Interfaces) != 1 || st.Interfaces[0].Mode != "generic" {
		t.Fatalf("auto attached %+v, want generic", st.Interfaces)
	}
	if on, mode := xdpOn(t, lab, opts.Interfaces[0]); !on || mode != 2 {
		t.Fatalf("kernel reports attached %v mode %d, want generic (2)", on, mode)
	}
	if err := x.Block(context.Background(), []backend.Rule{{Prefix: netip.PrefixFrom(lab.Attacker().Addr4(), 32)}}); err != nil {
		t.Fatal(err)
	}
	if reaches(lab, lab.Attacker(), lab.HostIface("attacker").Addr4.Addr()) {
		t.Fatal("blocked attacker reaches the host through generic xdp")
	}
	// Entries are counted unless the caller says it does not need them (the API's status).
	if st, err = x.Status(context.Background()); err != nil || st.Counters.Entries != 1 {
		t.Fatalf("status counts %d entries (%v), want 1", st.Counters.Entries, err)
	}
	if st, err = x.Status(backend.WithoutEntryCount(context.Background())); err != nil || st.Counters.Entries != 0 || len(st.Interfaces) != 1 {
		t.Fatalf("status without the entry count: %d entries, %d interfaces (%v); want 0, 1", st.Counters.Entries, len(st.Interfaces), err)
	}
}
