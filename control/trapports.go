package control

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/input"
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
	// Ephemeral are the ports the kernel picks for the host's own outgoing connections and
	// datagrams. None of them is ever a trap, listed or not: replies to the host's own clients
	// (its DNS stub, NTP, syslog or QUIC client, the web application) arrive there, and a trap
	// there would block the servers they talk to. The zero value means none; TrapPortWatcher reads
	// them from the kernel when it is zero.
	Ephemeral EphemeralPorts
}

// EphemeralPorts is the kernel's local port range (net.ipv4.ip_local_port_range) less its
// reserved ports (net.ipv4.ip_local_reserved_ports, which the kernel never picks: an operator who
// wants a trap inside the range reserves the port).
type EphemeralPorts struct {
	Low, High uint16 // inclusive; 0, 0: none
	Reserved  []uint16
}

// Contains reports whether the kernel may pick p as a local port.
func (e EphemeralPorts) Contains(p uint16) bool {
	return e.Low != 0 && p >= e.Low && p <= e.High && !slices.Contains(e.Reserved, p)
}

// String is the range as the sysctl shows it, e.g. "32768-60999".
func (e EphemeralPorts) String() string { return fmt.Sprintf("%d-%d", e.Low, e.High) }

// Ephemeral lists the ports of ps that the kernel may pick as local ports.
func (e EphemeralPorts) Ephemeral(ps []uint16) []uint16 {
	var out []uint16
	for _, p := range ps {
		if e.Contains(p) {
			out = append(out, p)
		}
	}
	return out
}

// TrapPorts computes the trap ports in force: the configured lists, plus in advanced mode every
// port below AdvancedBelow, minus Exclude, minus the ephemeral ports, minus every port the host
// listens on (a trap must never be a port the host serves). Port 0 is never a trap. The results are sorted and free of
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
	for p := 1; p < below; p++ {
		set[uint16(p)] = true
	}
	delete(set, 0)
	for p := range set {
		if spec.Ephemeral.Contains(p) {
			delete(set, p)
		}
	}
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

// linuxEphemeral is Linux's default local port range: what the kernel most likely picks from
// when its sysctl cannot be read, so that no reply to the host's own clients is a trap then either.
var linuxEphemeral = EphemeralPorts{Low: 32768, High: 60999}

// ReadEphemeralPorts reads the kernel's local port range and reserved ports (one pair of
// sysctls for IPv4 and IPv6 alike).
func ReadEphemeralPorts() (EphemeralPorts, error) {
	const rangePath = "/proc/sys/net/ipv4/ip_local_port_range"
	const reservedPath = "/proc/sys/net/ipv4/ip_local_reserved_ports"
	b, err := os.ReadFile(rangePath)
	if err != nil {
		return EphemeralPorts{}, fmt.Errorf("read ephemeral port range: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return EphemeralPorts{}, fmt.Errorf("parse %s: %q", rangePath, b)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo > hi || lo == 0 {
		return EphemeralPorts{}, fmt.Errorf("parse %s: %q", rangePath, b)
	}
	e := EphemeralPorts{Low: uint16(lo), High: uint16(hi)}
	b, err = os.ReadFile(reservedPath)
	if err != nil {
		return EphemeralPorts{}, fmt.Errorf("read reserved ports: %w", err)
	}
	if text := strings.TrimSpace(string(b)); text != "" {
		if e.Reserved, err = input.ParsePorts(text); err != nil {
			return EphemeralPorts{}, fmt.Errorf("parse %s: %w", reservedPath, err)
		}
	}
	return e, nil
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
	if spec.Ephemeral.Low == 0 {
		e, err := ReadEphemeralPorts()
		if err != nil {
			if w.OnError != nil {
				w.OnError(fmt.Errorf("%w; assuming Linux's default range %s", err, linuxEphemeral))
			}
			e = linuxEphemeral
		}
		spec.Ephemeral = e
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
