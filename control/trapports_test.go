package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

func portSet(ps ...uint16) map[uint16]bool {
	m := map[uint16]bool{}
	for _, p := range ps {
		m[p] = true
	}
	return m
}

func portRange(lo, hi uint16) []uint16 {
	var out []uint16
	for p := int(lo); p <= int(hi); p++ {
		out = append(out, uint16(p))
	}
	return out
}

func without(ps []uint16, drop ...uint16) []uint16 {
	return slices.DeleteFunc(slices.Clone(ps), func(p uint16) bool { return slices.Contains(drop, p) })
}

func TestTrapPorts(t *testing.T) {
	for _, tc := range []struct {
		name               string
		spec               TrapPortSpec
		tcpListen, udpList map[uint16]bool
		wantTCP, wantUDP   []uint16
	}{
		{
			name:    "configured lists come out sorted and unique",
			spec:    TrapPortSpec{TCP: []uint16{31337, 1, 111, 1}, UDP: []uint16{161, 7}},
			wantTCP: []uint16{1, 111, 31337},
			wantUDP: []uint16{7, 161},
		},
		{
			name:      "a listening port is never a trap, per protocol",
			spec:      TrapPortSpec{TCP: []uint16{1, 22, 111}, UDP: []uint16{22, 53, 161}},
			tcpListen: portSet(22),
			udpList:   portSet(53),
			wantTCP:   []uint16{1, 111},
			wantUDP:   []uint16{22, 161},
		},
		{
			name:    "exclude wins over the lists",
			spec:    TrapPortSpec{TCP: []uint16{1, 111}, UDP: []uint16{7, 111}, Exclude: []uint16{111}},
			wantTCP: []uint16{1},
			wantUDP: []uint16{7},
		},
		{
			name:    "port 0 is never a trap",
			spec:    TrapPortSpec{TCP: []uint16{0, 1}, AdvancedBelow: 3},
			wantTCP: []uint16{1, 2},
			wantUDP: []uint16{1, 2},
		},
		{
			name: "advanced mode: every port below the bound not listened on, minus exclude, plus lists",
			spec: TrapPortSpec{
				TCP: []uint16{31337}, UDP: []uint16{54321},
				AdvancedBelow: 1024, Exclude: []uint16{113, 2000},
			},
			tcpListen: portSet(22, 80, 443, 8080),
			udpList:   portSet(53, 123),
			wantTCP:   append(without(portRange(1, 1023), 22, 80, 113, 443), 31337),
			wantUDP:   append(without(portRange(1, 1023), 53, 113, 123), 54321),
		},
		{
			name:    "advanced mode skips the ephemeral range",
			spec:    TrapPortSpec{AdvancedBelow: 32780, Ephemeral: EphemeralPorts{Low: 32768, High: 60999}},
			udpList: portSet(53),
			wantTCP: portRange(1, 32767),
			wantUDP: without(portRange(1, 32767), 53),
		},
		{
			name: "listed ports inside the ephemeral range are no traps, unless reserved",
			spec: TrapPortSpec{TCP: []uint16{31337, 32771, 40421}, UDP: []uint16{7, 32770, 32771, 54321, 60999, 61000},
				Ephemeral: EphemeralPorts{Low: 32768, High: 60999, Reserved: []uint16{32771}}},
			wantTCP: []uint16{31337, 32771},
			wantUDP: []uint16{7, 32771, 61000},
		},
		{
			name:    "advanced bound above 65535 is clamped",
			spec:    TrapPortSpec{AdvancedBelow: 100000},
			wantTCP: portRange(1, 65535),
			wantUDP: portRange(1, 65535),
		},
		{
			name:    "negative advanced bound means off",
			spec:    TrapPortSpec{TCP: []uint16{1}, AdvancedBelow: -5},
			wantTCP: []uint16{1},
			wantUDP: []uint16{},
		},
		{
			name:      "everything listened on: no traps",
			spec:      TrapPortSpec{TCP: []uint16{1, 2}},
			tcpListen: portSet(1, 2),
			wantTCP:   []uint16{},
			wantUDP:   []uint16{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tcp, udp := TrapPorts(tc.spec, tc.tcpListen, tc.udpList)
			if !slices.Equal(tcp, tc.wantTCP) {
				t.Errorf("tcp: got %s, want %s", shortPorts(tcp), shortPorts(tc.wantTCP))
			}
			if !slices.Equal(udp, tc.wantUDP) {
				t.Errorf("udp: got %s, want %s", shortPorts(udp), shortPorts(tc.wantUDP))
			}
		})
	}
}

// shortPorts keeps failure messages readable for sets of thousands of ports.
func shortPorts(ps []uint16) string {
	if len(ps) > 12 {
		return fmt.Sprintf("%v ... %v (%d ports)", ps[:6], ps[len(ps)-6:], len(ps))
	}
	return fmt.Sprint(ps)
}

func TestReadEphemeralPorts(t *testing.T) {
	e, err := ReadEphemeralPorts()
	if err != nil {
		t.Fatal(err)
	}
	if e.Low == 0 || e.Low > e.High {
		t.Errorf("implausible range %s", e)
	}
	if !e.Contains(e.Low) || !e.Contains(e.High) || e.Contains(e.Low-1) {
		t.Errorf("range %s: Contains disagrees with its bounds", e)
	}
}

// trapUpdate is one call of the watcher's update function.
type trapUpdate struct{ tcp, udp []uint16 }

// startWatcher runs w in the background and returns the channel of its updates; the watcher is
// stopped and must have returned when the test ends.
func startWatcher(t *testing.T, w *TrapPortWatcher) <-chan trapUpdate {
	t.Helper()
	updates := make(chan trapUpdate, 100)
	w.Update = func(tcp, udp []uint16) { updates <- trapUpdate{tcp, udp} }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("watcher returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("watcher did not stop after cancel")
		}
	})
	return updates
}

// waitUpdate returns the first update for which ok holds, failing the test if none arrives
// within a generous deadline (the watcher polls every 100ms here).
func waitUpdate(t *testing.T, updates <-chan trapUpdate, what string, ok func(trapUpdate) bool) trapUpdate {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case u := <-updates:
			if ok(u) {
				return u
			}
		case <-deadline:
			t.Fatalf("no trap-port update where %s within 10s", what)
		}
	}
}

// A service that starts listening on a trap port takes the port out of the trap set, and gives
// it back when it stops; with real sockets and the real ListeningPorts.
func TestTrapPortWatcherFollowsRealListeners(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tport := uint16(l.Addr().(*net.TCPAddr).Port)
	u, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	uport := uint16(u.LocalAddr().(*net.UDPAddr).Port)

	w := &TrapPortWatcher{
		// The kernel picked the ports from its ephemeral range, which is never trapped: the
		// watcher is given a range that holds none of them.
		Spec: TrapPortSpec{TCP: []uint16{1, tport}, UDP: []uint16{7, uport},
			Ephemeral: EphemeralPorts{Low: 65535, High: 65535}},
		Interval: 100 * time.Millisecond,
	}
	updates := startWatcher(t, w)

	first := waitUpdate(t, updates, "the first update arrives", func(trapUpdate) bool { return true })
	if !slices.Equal(first.tcp, []uint16{1}) || !slices.Equal(first.udp, []uint16{7}) {
		t.Fatalf("with both sockets open: got tcp %v udp %v, want [1] [7]", first.tcp, first.udp)
	}

	l.Close()
	u.Close()
	waitUpdate(t, updates, "the closed ports become traps", func(u trapUpdate) bool {
		return slices.Contains(u.tcp, tport) && slices.Contains(u.udp, uport)
	})

	// Listen again on the same ports: they must stop being traps.
	l, err = net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(tport))))
	if err != nil {
		t.Skipf("port %d was taken by someone else meanwhile: %v", tport, err)
	}
	defer l.Close()
	waitUpdate(t, updates, "a new listener stops being a trap", func(u trapUpdate) bool {
		return !slices.Contains(u.tcp, tport)
	})
}

// A failed poll keeps the previous sets; a failed first poll is an error and no update.
func TestTrapPortWatcherErrors(t *testing.T) {
	t.Run("first poll fails", func(t *testing.T) {
		called := false
		w := &TrapPortWatcher{
			Spec:   TrapPortSpec{TCP: []uint16{1}},
			Update: func(_, _ []uint16) { called = true },
			Listening: func(context.Context) (map[uint16]bool, map[uint16]bool, error) {
				return nil, nil, errors.New("netlink broke")
			},
		}
		if err := w.Run(context.Background()); err == nil {
			t.Fatal("want an error")
		}
		if called {
			t.Error("update called although the served ports are unknown")
		}
	})

	t.Run("later poll fails", func(t *testing.T) {
		var mu sync.Mutex
		polls := 0
		var errs []error
		w := &TrapPortWatcher{
			Spec:     TrapPortSpec{TCP: []uint16{1, 2}},
			Interval: 10 * time.Millisecond,
			Listening: func(context.Context) (map[uint16]bool, map[uint16]bool, error) {
				mu.Lock()
				defer mu.Unlock()
				polls++
				switch {
				case polls == 1:
					return portSet(2), nil, nil
				case polls <= 5:
					return nil, nil, errors.New("netlink hiccup")
				default:
					return portSet(1), nil, nil
				}
			},
			OnError: func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() },
		}
		updates := startWatcher(t, w)
		first := waitUpdate(t, updates, "the first update arrives", func(trapUpdate) bool { return true })
		if !slices.Equal(first.tcp, []uint16{1}) {
			t.Fatalf("first: got %v, want [1]", first.tcp)
		}
		// The next update must be the change after the errors, never an empty or full set.
		next := waitUpdate(t, updates, "the change after the errors arrives", func(trapUpdate) bool { return true })
		if !slices.Equal(next.tcp, []uint16{2}) {
			t.Fatalf("after errors: got %v, want [2]", next.tcp)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(errs) != 4 {
			t.Errorf("OnError called %d times, want 4", len(errs))
		}
	})
}

func TestTrapPortWatcherStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan []uint16, 10)
	done := make(chan error, 1)
	go func() {
		w := &TrapPortWatcher{Spec: TrapPortSpec{TCP: []uint16{1}}, Update: func(tcp, _ []uint16) { got <- tcp }}
		done <- w.Run(ctx)
	}()
	select {
	case tcp := <-got:
		if !slices.Equal(tcp, []uint16{1}) {
			t.Errorf("got %v, want [1]", tcp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no first update within 10s")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
