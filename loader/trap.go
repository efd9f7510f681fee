package loader

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/bpf"
)

// Marks in the trap_ports map.
const (
	trapTCP = uint8(bpf.SnareTrapProtoTRAP_TCP)
	trapUDP = uint8(bpf.SnareTrapProtoTRAP_UDP)
)

// The back-ends accept thresholds up to backend.MaxTrapThreshold, which must be what the scan
// state holds: one of these two constants is negative, and does not compile, if they differ.
const (
	_ = bpf.SnareLimitsTRAP_MAX_PORTS - backend.MaxTrapThreshold
	_ = backend.MaxTrapThreshold - bpf.SnareLimitsTRAP_MAX_PORTS
)

// SetTrap implements backend.Enforcer: it writes the trap-port bitmap (one batch over the whole
// port array) and the trap settings.
func (x *XDP) SetTrap(ctx context.Context, cfg backend.TrapConfig) error {
	on := len(cfg.TCPPorts)+len(cfg.UDPPorts) > 0
	if on && (cfg.Threshold < 1 || cfg.Threshold > backend.MaxTrapThreshold) {
		return fmt.Errorf("trap threshold %d out of range 1..%d", cfg.Threshold, backend.MaxTrapThreshold)
	}
	if on && cfg.Window <= 0 {
		return fmt.Errorf("trap window must be positive, got %s", cfg.Window)
	}
	if cfg.TTL < 0 {
		return fmt.Errorf("trap ttl must not be negative, got %s", cfg.TTL)
	}
	marks := make([]uint8, 1<<16)
	for _, p := range cfg.TCPPorts {
		marks[p] |= trapTCP
	}
	for _, p := range cfg.UDPPorts {
		marks[p] |= trapUDP
	}
	keys := make([]uint32, 1<<16)
	for i := range keys {
		keys[i] = uint32(i)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	// Ports that stop being traps are cleared in the same batch: the map always holds all 65536.
	for i := 0; i < len(keys); i += batchSize {
		j := min(i+batchSize, len(keys))
		if _, err := x.objs.TrapPorts.BatchUpdate(keys[i:j], marks[i:j], nil); err != nil {
			return fmt.Errorf("write trap ports: %w", err)
		}
	}
	return x.updateSettings(func(c *bpf.SnareConfig) {
		c.Flags &^= cfgTrapOn | cfgTrapTCPBlock | cfgTrapUDPBlock
		if on {
			c.Flags |= cfgTrapOn
		}
		if cfg.BlockTCP {
			c.Flags |= cfgTrapTCPBlock
		}
		if cfg.BlockUDP {
			c.Flags |= cfgTrapUDPBlock
		}
		c.TrapThreshold = uint32(max(cfg.Threshold, 1))
		c.TrapWindowNs = uint64(cfg.Window)
		c.TrapTtlNs = uint64(cfg.TTL)
		c.EventIntervalNs, c.EventBurst = 0, 0
		if cfg.EventsPerSecond > 0 {
			c.EventIntervalNs = uint64(time.Second) / uint64(cfg.EventsPerSecond)
			c.EventBurst = uint64(max(cfg.EventBurst, 1))
		}
	})
}

// TrapEvents implements backend.Enforcer. The ring buffer is pinned, so events the program sent
// while no daemon was running are delivered on start.
func (x *XDP) TrapEvents(ctx context.Context) (<-chan backend.TrapEvent, error) {
	rd, err := ringbuf.NewReader(x.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("open trap event ring buffer: %w", err)
	}
	out := make(chan backend.TrapEvent, 256)
	go func() {
		<-ctx.Done()
		rd.Close() // unblocks Read
	}()
	go func() {
		defer close(out)
		for {
			rec, err := rd.Read()
			if err != nil {
				if !errors.Is(err, ringbuf.ErrClosed) {
					x.log.Error("read trap events", "err", err)
				}
				return
			}
			ev, err := decodeEvent(rec.RawSample)
			if err != nil {
				x.log.Warn("bad trap event", "err", err)
				continue
			}
			// Delivered even when ctx has ended meanwhile: Read has taken it off the ring
			// buffer, so dropping it would lose it (the next daemon would find the scanner's
			// block, but not the scan). Reading stops once the closer above has run.
			out <- ev
		}
	}()
	return out, nil
}

func decodeEvent(raw []byte) (backend.TrapEvent, error) {
	var e bpf.SnareTrapEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		return backend.TrapEvent{}, fmt.Errorf("decode trap event: %w", err)
	}
	c := now()
	ev := backend.TrapEvent{
		Time:        c.toWall(e.TimeNs),
		Source:      netip.AddrFrom16(e.Addr).Unmap(),
		Blocked:     bpf.SnareTrapAction(e.Action) == bpf.SnareTrapActionTRAP_ACT_BLOCKED,
		Allowlisted: bpf.SnareTrapAction(e.Action) == bpf.SnareTrapActionTRAP_ACT_ALLOWLISTED,
		Full:        bpf.SnareTrapAction(e.Action) == bpf.SnareTrapActionTRAP_ACT_FULL,
	}
	if e.Family == 6 {
		ev.Source = netip.AddrFrom16(e.Addr)
	}
	switch e.Proto {
	case 6:
		ev.Proto = "tcp"
		ev.TCPFlags = tcpFlags(e.TcpFlags)
	case 17:
		ev.Proto = "udp"
	default:
		ev.Proto = fmt.Sprint(e.Proto)
	}
	for _, pp := range e.Ports[:min(int(e.Nports), len(e.Ports))] {
		ev.Ports = append(ev.Ports, uint16(pp))
	}
	return ev, nil
}

// tcpFlags names a probe's flags the way scanners' docs do: NULL, XMAS, or the flags joined.
func tcpFlags(f uint8) string {
	if f == 0 {
		return "NULL"
	}
	if f&0x3f == 0x29 { // FIN|PSH|URG
		return "XMAS"
	}
	names := []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}
	var out []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, "|")
}

// statNames maps the program's counter slots to the reason names status and metrics use.
var statNames = map[bpf.SnareStatReason]string{
	bpf.SnareStatReasonSTAT_PASS:             "pass",
	bpf.SnareStatReasonSTAT_PASS_UNPARSED:    "pass_unparsed",
	bpf.SnareStatReasonSTAT_PASS_EXPIRED:     "pass_expired",
	bpf.SnareStatReasonSTAT_PASS_ALLOW:       "pass_allow",
	bpf.SnareStatReasonSTAT_DRY_RUN:          "dry_run",
	bpf.SnareStatReasonSTAT_DROP_EXACT:       "drop_exact",
	bpf.SnareStatReasonSTAT_DROP_CIDR:        "drop_cidr",
	bpf.SnareStatReasonSTAT_DROP_TRAP:        "drop_trap",
	bpf.SnareStatReasonSTAT_TRAP_HIT:         "trap_hit",
	bpf.SnareStatReasonSTAT_TRAP_BLOCK:       "trap_block",
	bpf.SnareStatReasonSTAT_EVENT_SENT:       "event_sent",
	bpf.SnareStatReasonSTAT_EVENT_SUPPRESSED: "event_suppressed",
	bpf.SnareStatReasonSTAT_TRAP_FULL:        "trap_full",
}

// slotCounters are one interface slot's counters by reason, summed over CPUs.
type slotCounters [bpf.SnareStatReasonSTAT_MAX]bpf.SnareCounter

// readSlots reads every counter slot (per CPU) in one batch where the kernel allows it.
func (x *XDP) readSlots() ([]slotCounters, error) {
	n := int(x.objs.Stats.MaxEntries()) // STAT_IFACE_SLOTS * STAT_MAX
	nSlots := n / int(bpf.SnareStatReasonSTAT_MAX)
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	keys := make([]uint32, n)
	vals := make([]bpf.SnareCounter, n*ncpu)
	var cursor ebpf.MapBatchCursor
	got, err := x.objs.Stats.BatchLookup(&cursor, keys, vals, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) || got != n {
		// No batch support for per-CPU arrays here: one lookup per counter.
		for k := 0; k < n; k++ {
			var per []bpf.SnareCounter
			if err := x.objs.Stats.Lookup(uint32(k), &per); err != nil {
				return nil, fmt.Errorf("read counters: %w", err)
			}
			keys[k] = uint32(k)
			copy(vals[k*ncpu:(k+1)*ncpu], per)
		}
	}
	out := make([]slotCounters, nSlots)
	for i, k := range keys {
		c := &out[int(k)/int(bpf.SnareStatReasonSTAT_MAX)][int(k)%int(bpf.SnareStatReasonSTAT_MAX)]
		for _, v := range vals[i*ncpu : (i+1)*ncpu] {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
	}
	return out, nil
}

// Stats sums the per-CPU counters of every interface slot: packets and bytes per reason.
func (x *XDP) Stats() (map[string]bpf.SnareCounter, error) {
	slots, err := x.readSlots()
	if err != nil {
		return nil, err
	}
	out := make(map[string]bpf.SnareCounter, len(statNames))
	for r, name := range statNames {
		var sum bpf.SnareCounter
		for _, s := range slots {
			sum.Packets += s[r].Packets
			sum.Bytes += s[r].Bytes
		}
		out[name] = sum
	}
	return out, nil
}

// ifaceStatus reports each attached interface with its own slot's counters.
func (x *XDP) ifaceStatus() ([]backend.InterfaceStatus, error) {
	slots, err := x.readSlots()
	if err != nil {
		return nil, err
	}
	slotOf := func(l ifaceLink) int { return l.index % len(slots) } // ifindex & (STAT_IFACE_SLOTS-1)
	var out []backend.InterfaceStatus
	for _, l := range x.ifaces {
		is := backend.InterfaceStatus{Name: l.name, Mode: l.mode, Packets: map[string]uint64{}, Bytes: map[string]uint64{}}
		for r, name := range statNames {
			c := slots[slotOf(l)][r]
			is.Packets[name], is.Bytes[name] = c.Packets, c.Bytes
		}
		for _, o := range x.ifaces {
			if o.name != l.name && slotOf(o) == slotOf(l) {
				is.SharedWith = append(is.SharedWith, o.name)
			}
		}
		out = append(out, is)
	}
	return out, nil
}

// Status implements backend.Enforcer.
func (x *XDP) Status(ctx context.Context) (backend.Status, error) {
	st := backend.Status{Backend: "xdp"}
	ifs, err := x.ifaceStatus()
	if err != nil {
		return st, err
	}
	st.Interfaces = ifs
	stats, err := x.Stats()
	if err != nil {
		return st, err
	}
	cn := &st.Counters
	cn.ByReason = map[string]uint64{}
	cn.BytesByReason = map[string]uint64{}
	for name, c := range stats {
		cn.ByReason[name] = c.Packets
		cn.BytesByReason[name] = c.Bytes
	}
	cn.Passed = stats["pass"].Packets + stats["pass_unparsed"].Packets + stats["pass_expired"].Packets +
		stats["pass_allow"].Packets + stats["dry_run"].Packets
	cn.Dropped = stats["drop_exact"].Packets + stats["drop_cidr"].Packets + stats["drop_trap"].Packets
	cn.TrapHits = stats["trap_hit"].Packets
	cn.TrapBlocks = stats["trap_block"].Packets
	cn.Suppressed = stats["event_suppressed"].Packets
	cn.Capacity = x.capacity
	for _, m := range []*ebpf.Map{x.objs.Block4, x.objs.Block6, x.objs.Cidr4, x.objs.Cidr6} {
		if !backend.EntryCountWanted(ctx) {
			break
		}
		n, err := countKeys(m)
		if err != nil {
			return st, err
		}
		cn.Entries += n
	}
	if cn.ScanEntries, err = countKeys(x.objs.Scan); err != nil {
		return st, err
	}
	return st, nil
}
