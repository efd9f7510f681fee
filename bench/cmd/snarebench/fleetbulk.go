package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/snare-dev/snare/bench/lfgen"
	"github.com/snare-dev/snare/bpf"
	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/input"
)

// The fleet's big imports: a 1,000,000-entry list imported on one host until every other host
// enforces it, and a host that was down while another such list was imported, until it enforces
// that one after its start. Three hosts: n01 runs the embedded NATS server, n02 imports, n03
// only receives (and is the one that is away).

const (
	bulkCapacity = 1_100_000 // block.capacity of the fleet that shares the big imports: one list fits, not two
	bulkSample   = 1000      // entries of a list checked in each host's XDP program while waiting
	bulkGoal     = 10 * time.Second
	bulkMemGoal  = 150 // MB, peak of a receiving snared
	engineGoal   = 300 // MB, the engine's memory for the shared entries
)

// bulkFirst is where the catch-up's list starts: 240.128.0.0 onwards, apart from blockList's
// filler (240.0.0.0 onwards). Like it, reserved space that is never sent.
var bulkFirst = netip.MustParseAddr("240.128.0.0")

// bulkEntries is the size of each imported list.
func bulkEntries(quick bool) int {
	if quick {
		return 100_000
	}
	return 1_000_000
}

// bulkTTL is the first list's TTL: it has to be gone before the second list fits block.capacity,
// and it must outlast the wait for it on every host.
func bulkTTL(quick bool) time.Duration {
	if quick {
		return 40 * time.Second
	}
	return 90 * time.Second
}

// bulkWait is the longest wait for a list to be enforced on a host: well within bulkTTL.
func bulkWait(quick bool) time.Duration {
	if quick {
		return 25 * time.Second
	}
	return time.Minute
}

// sharedImport: the list imported through the API on n02 (what `snarectl import` sends), timed
// until n01 and n03 both enforce all of it; with the memory of a receiving snared and of the one
// that runs the engine.
func (f *fleetLab) sharedImport(t *table) error {
	if len(f.hosts) != 3 {
		return fmt.Errorf("the shared import runs on 3 hosts, not %d", len(f.hosts))
	}
	server, origin, receiver := f.hosts[0], f.hosts[1], f.hosts[2]
	others := []*fleetHost{server, receiver}
	n := bulkEntries(f.e.quick)
	list := blockList(n)
	hosts := fmt.Sprint(len(f.hosts))
	var before [2]float64 // resident MB of server and receiver before the import
	for i, h := range others {
		var err error
		if before[i], err = h.d.memMB("VmRSS"); err != nil {
			return fmt.Errorf("memory of %s: %w", h.name, err)
		}
	}
	t0 := time.Now()
	call, err := importList(origin, list, bulkTTL(f.e.quick))
	if err != nil {
		return err
	}
	took, err := waitList(others, list, t0, bulkWait(f.e.quick))
	if err != nil {
		return fmt.Errorf("import of %s on %s: %w", num(float64(n)), origin.name, err)
	}
	t.add(fmt.Sprintf("import of %s entries on %s (API) → every one enforced on %s and %s", num(float64(n)), origin.name, server.name, receiver.name),
		hosts, secs(took), "≤ 10 s", passMiss(took <= bulkGoal))
	t.add(fmt.Sprintf("that import: the part until %s's API answered (durable, in its own XDP, queued for the fleet)", origin.name), hosts, secs(call), "", "")
	if err := checkPinned(t, others, list, hosts); err != nil {
		return err
	}

	// Memory once the receivers are done and have given their buffers back (as the control
	// section reads a lone daemon's).
	time.Sleep(2 * time.Second)
	var after [2]float64
	for i, h := range others {
		if after[i], err = h.d.memMB("VmRSS"); err != nil {
			return fmt.Errorf("memory of %s: %w", h.name, err)
		}
	}
	peak, err := receiver.d.memMB("VmHWM")
	if err != nil {
		return fmt.Errorf("memory of %s: %w", receiver.name, err)
	}
	t.add(fmt.Sprintf("peak memory of a receiving snared (%s, VmHWM, since its start)", receiver.name), hosts, fmt.Sprintf("%.0f MB", peak),
		fmt.Sprintf("≤ %d MB", bulkMemGoal), passMiss(peak <= bulkMemGoal))
	t.add(fmt.Sprintf("%s resident memory before the import → 2 s after every host enforced it", receiver.name), hosts,
		fmt.Sprintf("%.0f → %.0f MB", before[1], after[1]), "", "")
	grow := after[0] - before[0]
	t.add(fmt.Sprintf("the engine's memory for %s shared entries: resident growth of the snared running the embedded NATS server (%s, %.0f → %.0f MB; it also applies them itself, as %s does)",
		num(float64(n)), server.name, before[0], after[0], receiver.name), hosts, fmt.Sprintf("%.0f MB", grow), fmt.Sprintf("≤ %d MB", engineGoal), passMiss(grow <= engineGoal))
	t.add(fmt.Sprintf("that growth less %s's (the engine's share without the applying)", receiver.name), hosts, fmt.Sprintf("%.0f MB", grow-(after[1]-before[1])), "", "")
	if hwm, err := server.d.memMB("VmHWM"); err == nil {
		t.add(fmt.Sprintf("peak memory of %s (VmHWM, since its start)", server.name), hosts, fmt.Sprintf("%.0f MB", hwm), "", "")
	}
	return nil
}

// catchUp: with the first list gone (expired, swept), n03 stops; n02 imports a second list of
// other entries; n03 starts again and is timed from its start until it enforces all of it.
func (f *fleetLab) catchUp(t *table) error {
	if len(f.hosts) != 3 {
		return fmt.Errorf("the catch-up runs on 3 hosts, not %d", len(f.hosts))
	}
	server, origin, away := f.hosts[0], f.hosts[1], f.hosts[2]
	n := bulkEntries(f.e.quick)
	hosts := fmt.Sprint(len(f.hosts))
	// block.capacity holds one list: the first one goes at its TTL, each host's sweep removes it.
	if err := waitEmpty(f.hosts, bulkTTL(f.e.quick)+time.Minute); err != nil {
		return err
	}
	away.prog.Close()
	away.prog = nil
	if err := away.d.stop(); err != nil {
		return fmt.Errorf("stop snared %s: %w", away.name, err)
	}
	list := fillerList(bulkFirst, n)
	t0 := time.Now()
	if _, err := importList(origin, list, time.Hour); err != nil {
		return err
	}
	took, err := waitList([]*fleetHost{server}, list, t0, bulkWait(f.e.quick))
	if err != nil {
		return fmt.Errorf("second import, on %s: %w", server.name, err)
	}
	t.add(fmt.Sprintf("while %s is down: a second import of %s other entries on %s → enforced on %s", away.name, num(float64(n)), origin.name, server.name), hosts, secs(took), "", "")
	// Everything is in the engine before the host returns: the origin's outbox is empty.
	if err := waitOutbox(origin, time.Minute); err != nil {
		return err
	}

	if err := away.d.start(away.cfg); err != nil {
		return fmt.Errorf("start snared %s again: %w", away.name, err)
	}
	started := away.d.started
	if _, err := away.d.waitReady(0, bulkWait(f.e.quick)); err != nil {
		return fmt.Errorf("snared %s: %w", away.name, err)
	}
	// Its new program replaced the old one in the pinned link.
	if away.prog, err = attachedProgram(away.d.pin, away.d.iface); err != nil {
		return fmt.Errorf("snared %s: %w", away.name, err)
	}
	took, err = waitList([]*fleetHost{away}, list, started, bulkWait(f.e.quick))
	if err != nil {
		return fmt.Errorf("catch-up of %s: %w", away.name, err)
	}
	t.add(fmt.Sprintf("catch-up: %s, down during that import, from its start until it enforces every one of the %s", away.name, num(float64(n))),
		hosts, secs(took), "≤ 10 s", passMiss(took <= bulkGoal))
	if err := checkPinned(t, []*fleetHost{away}, list, hosts); err != nil {
		return err
	}
	if peak, err := away.d.memMB("VmHWM"); err == nil {
		t.add(fmt.Sprintf("peak memory of %s during its start and catch-up (VmHWM)", away.name), hosts, fmt.Sprintf("%.0f MB", peak),
			fmt.Sprintf("≤ %d MB", bulkMemGoal), passMiss(peak <= bulkMemGoal))
	}
	return nil
}

// fillerList returns n consecutive IPv4 addresses from first on.
func fillerList(first netip.Addr, n int) []netip.Addr {
	f := first.As4()
	base := uint32(f[0])<<24 | uint32(f[1])<<16 | uint32(f[2])<<8 | uint32(f[3])
	out := make([]netip.Addr, n)
	for i := range out {
		v := base + uint32(i)
		out[i] = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return out
}

// importList imports list on h through its API (what `snarectl import FILE` sends) with ttl, and
// returns the call's round trip.
func importList(h *fleetHost, list []netip.Addr, ttl time.Duration) (time.Duration, error) {
	var sb strings.Builder
	for _, a := range list {
		sb.WriteString(a.String())
		sb.WriteByte('\n')
	}
	body := sb.String()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	resp, err := h.d.client.ImportStream(ctx, strings.NewReader(body), int64(len(body)),
		api.ImportRequest{Name: "bench.list", Reason: "bench fleet", TTL: input.FormatTTL(ttl)})
	took := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("import %d entries on %s: %w", len(list), h.name, err)
	}
	if resp.Imported != len(list) {
		return 0, fmt.Errorf("import on %s: %d of %d entries imported", h.name, resp.Imported, len(list))
	}
	return took, nil
}

// waitList polls hosts until each one's API counts at least len(list) entries (the store's
// count, which a fleet block reaches once it is in the kernel too) and its XDP program drops
// every source of a sample of the list (bulkSample evenly spread, and the last); it returns the
// time from t0 until the last host did.
func waitList(hosts []*fleetHost, list []netip.Addr, t0 time.Time, limit time.Duration) (time.Duration, error) {
	step := max(len(list)/bulkSample, 1)
	var frames [][]byte
	for i := 0; i < len(list); i += step {
		fr, err := lfgen.Frame(udp4(list[i]))
		if err != nil {
			return 0, err
		}
		frames = append(frames, fr)
	}
	last, err := lfgen.Frame(udp4(list[len(list)-1]))
	if err != nil {
		return 0, err
	}
	frames = append(frames, last)
	type wait struct {
		h       *fleetHost
		entries int
		pending [][]byte // sample frames it does not drop yet
	}
	var waits []*wait
	for _, h := range hosts {
		waits = append(waits, &wait{h: h, entries: -1, pending: frames})
	}
	for {
		kept := waits[:0]
		for _, w := range waits {
			if w.entries < len(list) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				st, err := w.h.d.client.Status(ctx)
				cancel()
				if err == nil {
					w.entries = st.Entries
				}
			}
			var still [][]byte
			for _, fr := range w.pending {
				ret, err := w.h.prog.Run(&ebpf.RunOptions{Data: fr})
				if err != nil {
					return 0, fmt.Errorf("test run on %s: %w", w.h.name, err)
				}
				if ret != xdpDrop {
					still = append(still, fr)
				}
			}
			w.pending = still
			if w.entries < len(list) || len(w.pending) > 0 {
				kept = append(kept, w)
			}
		}
		waits = kept
		took := time.Since(t0)
		if len(waits) == 0 {
			return took, nil
		}
		if took > limit {
			var msgs []string
			for _, w := range waits {
				msgs = append(msgs, fmt.Sprintf("%s: %d of %d entries, %d of %d sampled sources not dropped", w.h.name, max(w.entries, 0), len(list), len(w.pending), len(frames)))
			}
			return 0, fmt.Errorf("after %s: %s", limit, strings.Join(msgs, "; "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkPinned adds a row with how many of list each host holds in its pinned block4 map (the
// exact-address IPv4 map its XDP program looks sources up in), read once after the timed wait.
func checkPinned(t *table, hosts []*fleetHost, list []netip.Addr, nhosts string) error {
	var got []string
	all := true
	for _, h := range hosts {
		have, err := pinnedHolds(h.d.pin, list)
		if err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
		}
		got = append(got, fmt.Sprintf("%s %s", h.name, num(float64(have))))
		all = all && have == len(list)
	}
	t.add(fmt.Sprintf("entries of that list in the pinned XDP map (block4) of %s, read after", hostNames(hosts)), nhosts, strings.Join(got, ", "),
		fmt.Sprintf("all %s", num(float64(len(list)))), passMiss(all))
	return nil
}

func hostNames(hosts []*fleetHost) string {
	var names []string
	for _, h := range hosts {
		names = append(names, h.name)
	}
	return strings.Join(names, " and ")
}

// pinnedHolds returns how many addresses of list the block4 map pinned in pinDir holds.
func pinnedHolds(pinDir string, list []netip.Addr) (int, error) {
	pin := filepath.Join(pinDir, "block4")
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		return 0, fmt.Errorf("open pinned map %s: %w", pin, err)
	}
	defer m.Close()
	held := make(map[[4]byte]bool, len(list))
	keys := make([][4]byte, 4096)
	vals := make([]bpf.SnareBlockVal, len(keys))
	var cursor ebpf.MapBatchCursor
	for {
		c, err := m.BatchLookup(&cursor, keys, vals, nil)
		for _, k := range keys[:c] {
			held[k] = true
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read pinned map %s: %w", pin, err)
		}
	}
	have := 0
	for _, a := range list {
		if held[a.As4()] {
			have++
		}
	}
	return have, nil
}

// waitEmpty waits (bounded) until no host's API counts any entry.
func waitEmpty(hosts []*fleetHost, limit time.Duration) error {
	for end := time.Now().Add(limit); ; time.Sleep(500 * time.Millisecond) {
		var left []string
		for _, h := range hosts {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			st, err := h.d.client.Status(ctx)
			cancel()
			if err != nil {
				return fmt.Errorf("status of %s: %w", h.name, err)
			}
			if st.Entries > 0 {
				left = append(left, fmt.Sprintf("%s %d", h.name, st.Entries))
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("entries still stored after %s (the first list expired and swept by then): %s", limit, strings.Join(left, ", "))
		}
	}
}

// waitOutbox waits (bounded) until h has shared everything it queued.
func waitOutbox(h *fleetHost, limit time.Duration) error {
	var last api.FleetStatus
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := h.d.client.FleetStatus(ctx)
		cancel()
		if err == nil && st.Connected && st.Outbox == 0 {
			return nil
		}
		last = st
	}
	return fmt.Errorf("%s still has %d decisions to share after %s (last error %q)", h.name, last.Outbox, limit, last.Error)
}
