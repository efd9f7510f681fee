package control

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TrapPortSpec is the configured trap-port policy (config keys trap.tcp_ports, trap.udp_ports,
// trap.advanced_below, trap.exclude).
type TrapPortSpec struct {
	TCP, UDP []uint16
	// AdvancedBelow > 0 turns on portsentry's "advanced" mode: every port below it that nothing on
	// the host listens on is a trap too.
	AdvancedBelow int
	// Exclude is never a trap, whatever the lists or advanced mode say.
	Exclude []uint16
	// EphemeralLow..EphemeralHigh (inclusive) is the kernel's local port range
	// (net.ipv4.ip_local_port_range). Advanced mode skips it, because replies to the host's own
	// outgoing connections arrive there and a socket that lives for a few milliseconds can come
	// and go between two polls. Ports listed explicitly in TCP or UDP are kept even inside the
	// range (the operator asked for them). Zero means no range; WatchTrapPorts fills it from the
	// kernel when it is zero.
	EphemeralLow, EphemeralHigh uint16
}

// TrapPorts computes the trap ports in force: the configured lists, plus in advanced mode every
// port below AdvancedBelow, minus Exclude, minus every port the host listens on (a trap must never
// be a port the host serves). Port 0 is never a trap. The results are sorted and free of
// duplicates.
func TrapPorts(spec TrapPortSpec, tcpListen, udpListen map[uint16]bool) (tcp, udp []uint16) {
	return trapSet(spec, spec.TCP, tcpListen), trapSet(spec, spec.UDP, udpListen)
}

func trapSet(spec TrapPortSpec, configured []uint16, listening map[uint16]bool) []uint16 {
	set := map[uint16]bool{}
	for _, p := range configured {
		set[p] = true
	}
	below := min(spec.AdvancedBelow, 1<<16)
	inEphemeral := func(p int) bool {
		return spec.EphemeralLow != 0 && p >= int(spec.EphemeralLow) && p <= int(spec.EphemeralHigh)
	}
	for p := 1; p < below; p++ {
		if !inEphemeral(p) {
			set[uint16(p)] = true
		}
	}
	delete(set, 0)
	for _, p := range spec.Exclude {
		delete(set, p)
	}
	for p := range listening {
		delete(set, p)
	}
	out := make([]uint16, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// EphemeralPortRange reads the kernel's local port range for outgoing connections.
func EphemeralPortRange() (low, high uint16, err error) {
	const path = "/proc/sys/net/ipv4/ip_local_port_range"
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("read ephemeral port range: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("parse %s: %q", path, b)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		return 0, 0, fmt.Errorf("parse %s: %q", path, b)
	}
	return uint16(lo), uint16(hi), nil
}

// DefaultTrapPortInterval is how often the watcher looks at the host's sockets: a port that
// starts listening stops being a trap within about this long.
const DefaultTrapPortInterval = time.Second

// TrapPortWatcher keeps the trap ports in force current as services start and stop. It polls the
// host's sockets and calls Update with the full sets whenever they change.
type TrapPortWatcher struct {
	Spec TrapPortSpec
	// Interval between polls; zero means DefaultTrapPortInterval.
	Interval time.Duration
	// Update receives the trap ports in force: once at start, then after every change.
	Update func(tcp, udp []uint16)
	// Listening lists the ports in use; nil means ListeningPorts. Tests swap it.
	Listening func(ctx context.Context) (tcp, udp map[uint16]bool, err error)
	// OnError is told about a failed poll (nil: ignored). The previous sets stay in force: a
	// failed poll must not turn served ports into traps.
	OnError func(error)
}

// WatchTrapPorts runs a TrapPortWatcher with ListeningPorts until ctx ends; see
// TrapPortWatcher.Run.
func WatchTrapPorts(ctx context.Context, spec TrapPortSpec, interval time.Duration, update func(tcp, udp []uint16)) error {
	w := TrapPortWatcher{Spec: spec, Interval: interval, Update: update}
	return w.Run(ctx)
}

// Run polls until ctx ends and then returns nil. The first poll happens at once; if it fails
// Run returns its error without calling Update, since it cannot know which ports are served.
func (w *TrapPortWatcher) Run(ctx context.Context) error {
	interval := w.Interval
	if interval <= 0 {
		interval = DefaultTrapPortInterval
	}
	listening := w.Listening
	if listening == nil {
		listening = ListeningPorts
	}
	spec := w.Spec
	if spec.AdvancedBelow > 0 && spec.EphemeralLow == 0 {
		lo, hi, err := EphemeralPortRange()
		if err != nil {
			return err
		}
		spec.EphemeralLow, spec.EphemeralHigh = lo, hi
	}

	tl, ul, err := listening(ctx)
	if err != nil {
		return fmt.Errorf("trap ports: %w", err)
	}
	tcp, udp := TrapPorts(spec, tl, ul)
	w.Update(tcp, udp)

	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		tl, ul, err := listening(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if w.OnError != nil {
				w.OnError(fmt.Errorf("trap ports: %w", err))
			}
			continue
		}
		ntcp, nudp := TrapPorts(spec, tl, ul)
		if slices.Equal(ntcp, tcp) && slices.Equal(nudp, udp) {
			continue
		}
		tcp, udp = ntcp, nudp
		w.Update(tcp, udp)
	}
}
