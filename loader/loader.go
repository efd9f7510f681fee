package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/bpf"
)

// XDP is the XDP enforcement back-end: the loaded program, its pinned maps and one pinned link
// per interface. It implements backend.Enforcer.
type XDP struct {
	log    *slog.Logger
	pinDir string
	lock   *os.File

	// objs stays referenced for the daemon's lifetime: the GC would close unreferenced fds.
	objs bpf.SnareObjects

	mu       sync.Mutex // serialises writes to the settings map and CIDR bookkeeping
	ifaces   []ifaceLink
	capacity int

	// windowBufs keeps the window buffers (*byMap) between the calls of a load that comes in
	// chunks (a big import hands the loader its rules 64K at a time): made afresh for every
	// call they faulted in about 12 MB a call. The pool lets them go once loads stop.
	windowBufs sync.Pool
}

type ifaceLink struct {
	name  string
	index int    // ifindex: picks the interface's counter slot
	mode  string // "native" or "generic"
	link  link.Link
}

// dataMaps are the maps whose contents must survive an upgrade that changes their size.
var dataMaps = []string{
	bpf.SnareMapBlock4, bpf.SnareMapBlock6, bpf.SnareMapCidr4, bpf.SnareMapCidr6,
	bpf.SnareMapAllow4, bpf.SnareMapAllow6, bpf.SnareMapScan, bpf.SnareMapTrapPorts,
	bpf.SnareMapSettings,
}

// Open loads the XDP program, re-using the maps pinned in opts.PinDir (so blocks survive a daemon
// restart or upgrade), and attaches it to every interface, updating pinned links in place so that
// enforcement never stops. Pins of an older map layout (ABI) are migrated; pins of a newer one are
// refused and left untouched.
func Open(opts Options) (*XDP, error) {
	if len(opts.Interfaces) == 0 {
		return nil, errors.New("no interface to attach to")
	}
	if opts.Capacity <= 0 {
		return nil, fmt.Errorf("capacity must be positive, got %d", opts.Capacity)
	}
	switch opts.Mode {
	case "", "auto", "native", "generic":
	default:
		return nil, fmt.Errorf("unknown xdp mode %q (want auto, native or generic)", opts.Mode)
	}
	if opts.PinDir == "" {
		return nil, errors.New("no pin directory")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := ensureBPFFS(opts.PinDir); err != nil {
		return nil, err
	}
	lock, err := lockDir(opts.PinDir)
	if err != nil {
		return nil, err
	}
	x := &XDP{log: log, pinDir: opts.PinDir, lock: lock, capacity: opts.Capacity}
	if err := x.load(opts.Capacity); err != nil {
		lock.Close()
		return nil, err
	}
	for _, name := range opts.Interfaces {
		if err := x.attach(name, opts.Mode); err != nil {
			x.Close()
			return nil, err
		}
	}
	if err := x.detachStale(opts.Interfaces); err != nil {
		log.Warn("detach stale links", "err", err)
	}
	return x, nil
}

// Spec returns the program's collection spec with the block maps sized for capacity entries.
// LRU maps evict before they are full: each CPU keeps up to 128 free elements of its own
// (LOCAL_FREE_TARGET in the kernel's bpf_lru_list.c), and the shared list refills it by evicting
// once it holds fewer than that. The maps get that much per CPU and a quarter more, so the
// blocks the daemon keeps within capacity are never evicted.
func Spec(capacity int) (*ebpf.CollectionSpec, error) {
	spec, err := bpf.LoadSnare()
	if err != nil {
		return nil, fmt.Errorf("load program spec: %w", err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count possible cpus: %w", err)
	}
	size := uint32(capacity + capacity/4 + (cpus+1)*128)
	spec.Maps[bpf.SnareMapBlock4].MaxEntries = size
	spec.Maps[bpf.SnareMapBlock6].MaxEntries = size
	return spec, nil
}

func (x *XDP) load(capacity int) error {
	spec, err := Spec(capacity)
	if err != nil {
		return err
	}
	// Checked before anything is opened or pinned: pins of a newer layout are left as they are.
	pinned, found, err := pinnedABI(x.pinDir, spec)
	if err != nil {
		return err
	}
	if pinned > abi {
		return fmt.Errorf("pinned maps at %s were %w (ABI %d, this snared understands up to %d): run `snared uninstall` or the newer snared", x.pinDir, ErrNewerABI, pinned, abi)
	}
	relaid := relaidOut(pinned)
	if len(relaid) > 0 {
		x.log.Warn("pinned maps have an older layout; replacing the changed ones with empty maps", "abi", pinned, "want", abi, "maps", relaid)
	}
	replace := map[string]*ebpf.Map{}
	migrate := map[string]*ebpf.Map{} // incompatible pins whose contents move to new maps
	defer func() {
		for _, m := range replace {
			m.Close()
		}
		for _, m := range migrate {
			m.Close()
		}
	}()
	for name, ms := range spec.Maps {
		if strings.HasPrefix(name, ".") || slices.Contains(relaid, name) {
			continue // .rodata, .bss: not state; relaid: pinned afresh below
		}
		pin := filepath.Join(x.pinDir, name)
		m, err := ebpf.LoadPinnedMap(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", pin, err)
		}
		if err := ms.Compatible(m); err != nil {
			x.log.Warn("pinned map has another layout or size; migrating its contents", "map", name, "reason", err)
			migrate[name] = m
			continue
		}
		replace[name] = m
	}

	fresh, err := createBlockMaps(spec, replace)
	if err != nil {
		return err
	}
	defer func() {
		for _, m := range fresh {
			m.Close() // the collection holds its own clones
		}
	}()
	given := make(map[string]*ebpf.Map, len(replace)+len(fresh))
	for name, m := range replace {
		given[name] = m
	}
	for name, m := range fresh {
		given[name] = m
	}

	var objs bpf.SnareObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: given})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load xdp program: %+v", ve)
		}
		return fmt.Errorf("load xdp program: %w", err)
	}
	x.objs = objs

	for name, old := range migrate {
		if name == bpf.SnareMapSettings {
			if err := copySettings(old, x.objs.Settings); err != nil {
				x.log.Warn("could not carry over settings; the daemon writes them again", "err", err)
			}
			continue
		}
		if err := copyMap(old, x.mapByName(name)); err != nil {
			x.log.Warn("could not carry over map contents; the daemon restores blocks from its store", "map", name, "err", err)
		}
	}
	// Pin every map that is not pinned yet (new or migrated). A migrated map is pinned under a
	// temporary name and renamed over the old pin, so the pin path never disappears.
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue
		}
		if _, ok := replace[name]; ok {
			continue
		}
		m := x.mapByName(name)
		final := filepath.Join(x.pinDir, name)
		tmp := filepath.Join(x.pinDir, "tmp_"+name) // bpffs refuses names with dots
		os.Remove(tmp)
		if err := m.Pin(tmp); err != nil {
			return fmt.Errorf("pin map %s at %s: %w", name, tmp, err)
		}
		if err := os.Rename(tmp, final); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	// Last: until every map has the new layout, the old version makes the next load migrate again.
	if !found || pinned != abi {
		if err := pinABI(x.pinDir); err != nil {
			return err
		}
	}
	// The trap stops inserting blocks at capacity; the maps' headroom above it is what keeps the
	// LRU from evicting the daemon's blocks.
	return x.updateSettings(func(c *bpf.SnareConfig) {
		if c.V6Mask == ([2]uint64{}) {
			c.V6Mask = v6Mask(backend.DefaultIPv6Prefix) // a fresh settings map; trap off until SetTrap
		}
		c.BlockLimit = uint64(capacity)
	})
}

// copySettings carries the settings of an older program over to a newer one: struct config only
// ever grows at its end, so the old value is the start of the new one (new fields stay zero).
func copySettings(src, dst *ebpf.Map) error {
	if src.ValueSize() > dst.ValueSize() {
		return fmt.Errorf("settings shrank from %d to %d bytes", src.ValueSize(), dst.ValueSize())
	}
	old := make([]byte, src.ValueSize())
	if err := src.Lookup(uint32(0), &old); err != nil {
		return fmt.Errorf("read old settings: %w", err)
	}
	val := make([]byte, dst.ValueSize())
	copy(val, old)
	if err := dst.Put(uint32(0), val); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	return nil
}

// createBlockMaps creates the exact-address maps that have no compatible pin, side by side. The
// kernel preallocates every LRU element when it creates the map (1.25M of them for a 1M capacity),
// which is most of a cold start's load time; LoadAndAssign would create them one after the other.
func createBlockMaps(spec *ebpf.CollectionSpec, pinned map[string]*ebpf.Map) (map[string]*ebpf.Map, error) {
	var names []string
	for _, name := range []string{bpf.SnareMapBlock4, bpf.SnareMapBlock6} {
		if _, ok := pinned[name]; !ok {
			names = append(names, name)
		}
	}
	maps := make([]*ebpf.Map, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			maps[i], errs[i] = ebpf.NewMap(spec.Maps[name])
			if errs[i] != nil {
				errs[i] = fmt.Errorf("create map %s: %w", name, errs[i])
			}
		}()
	}
	wg.Wait()
	fresh := map[string]*ebpf.Map{}
	for i, m := range maps {
		if m != nil {
			fresh[names[i]] = m
		}
	}
	if err := errors.Join(errs...); err != nil {
		for _, m := range fresh {
			m.Close()
		}
		return nil, err
	}
	return fresh, nil
}

func (x *XDP) mapByName(name string) *ebpf.Map {
	switch name {
	case bpf.SnareMapBlock4:
		return x.objs.Block4
	case bpf.SnareMapBlock6:
		return x.objs.Block6
	case bpf.SnareMapCidr4:
		return x.objs.Cidr4
	case bpf.SnareMapCidr6:
		return x.objs.Cidr6
	case bpf.SnareMapAllow4:
		return x.objs.Allow4
	case bpf.SnareMapAllow6:
		return x.objs.Allow6
	case bpf.SnareMapScan:
		return x.objs.Scan
	case bpf.SnareMapTrapPorts:
		return x.objs.TrapPorts
	case bpf.SnareMapSettings:
		return x.objs.Settings
	case bpf.SnareMapStats:
		return x.objs.Stats
	case bpf.SnareMapEventBucket:
		return x.objs.EventBucket
	case bpf.SnareMapEvents:
		return x.objs.Events
	}
	panic("unknown map " + name)
}

// copyMap copies every entry of src into dst when their key and value sizes agree (a capacity
// change); other layout changes are left to the daemon's restore from the store.
func copyMap(src, dst *ebpf.Map) error {
	if src.KeySize() != dst.KeySize() || src.ValueSize() != dst.ValueSize() || src.Type() != dst.Type() {
		return fmt.Errorf("key/value layout changed")
	}
	if src.Type() == ebpf.RingBuf || src.Type() == ebpf.PerCPUArray {
		return nil // events and per-CPU counters start afresh
	}
	var key, val []byte
	it := src.Iterate()
	for it.Next(&key, &val) {
		if err := dst.Put(key, val); err != nil {
			return fmt.Errorf("copy entry: %w", err)
		}
	}
	return it.Err()
}

func linkPin(dir, iface string) string { return filepath.Join(dir, "link_"+iface) }

// attach attaches the program to iface. A pinned link from an earlier daemon is updated in place
// (no gap); otherwise native mode is tried first in "auto".
func (x *XDP) attach(iface, mode string) error {
	nl, err := netlink.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("attach xdp to %s: %w", iface, err)
	}
	pin := linkPin(x.pinDir, iface)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		cur := attachedMode(iface)
		if mode == "" || mode == "auto" || mode == cur {
			if err := l.Update(x.objs.SnareXdp); err != nil {
				l.Close()
				return fmt.Errorf("update xdp link on %s: %w", iface, err)
			}
			x.ifaces = append(x.ifaces, ifaceLink{name: iface, index: nl.Attrs().Index, mode: cur, link: l})
			x.log.Info("xdp program updated in place", "iface", iface, "mode", cur)
			return nil
		}
		// Another mode was asked for: the kernel allows one mode at a time, so this is the one
		// case with a brief gap.
		x.log.Warn("re-attaching in another xdp mode", "iface", iface, "from", cur, "to", mode)
		l.Unpin()
		l.Close()
	}

	try := []string{mode}
	if mode == "" || mode == "auto" {
		try = []string{"native", "generic"}
	}
	var errs []error
	for _, m := range try {
		flags := link.XDPDriverMode
		if m == "generic" {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: x.objs.SnareXdp, Interface: nl.Attrs().Index, Flags: flags})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w%s", m, err, attachHint(err)))
			continue
		}
		os.Remove(pin)
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin xdp link of %s: %w", iface, err)
		}
		x.ifaces = append(x.ifaces, ifaceLink{name: iface, index: nl.Attrs().Index, mode: m, link: l})
		if len(errs) > 0 {
			x.log.Warn("native xdp not available, using generic", "iface", iface, "reason", errors.Join(errs...))
		}
		x.log.Info("xdp program attached", "iface", iface, "mode", m)
		return nil
	}
	return fmt.Errorf("attach xdp to %s: %w", iface, errors.Join(errs...))
}

// attachHint explains the attach errors operators meet most.
func attachHint(err error) string {
	switch {
	case errors.Is(err, unix.ERANGE):
		return " (the MTU is too large for native XDP on this driver; lower it or use --xdp-mode generic)"
	case errors.Is(err, unix.EOPNOTSUPP):
		return " (the driver has no native XDP; use --xdp-mode generic or auto)"
	case errors.Is(err, unix.EBUSY):
		return " (another XDP program is attached to this interface; remove it first)"
	}
	return ""
}

// attachedMode reads the XDP mode in effect on iface from the kernel.
func attachedMode(iface string) string {
	nl, err := netlink.LinkByName(iface)
	if err != nil || nl.Attrs().Xdp == nil {
		return "unknown"
	}
	switch nl.Attrs().Xdp.AttachMode {
	case 1: // XDP_ATTACHED_DRV
		return "native"
	case 2: // XDP_ATTACHED_SKB
		return "generic"
	case 3:
		return "offload"
	}
	return "unknown"
}

// detachStale removes pinned links of interfaces no longer configured: the configuration is the
// truth about where snare enforces.
func (x *XDP) detachStale(keep []string) error {
	want := map[string]bool{}
	for _, k := range keep {
		want[k] = true
	}
	pins, err := filepath.Glob(filepath.Join(x.pinDir, "link_*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pins {
		name := strings.TrimPrefix(filepath.Base(p), "link_")
		if want[name] {
			continue
		}
		detached, err := unpinLink(p)
		switch {
		case err != nil:
			errs = append(errs, err)
		case detached:
			x.log.Info("detached xdp from interface no longer configured", "iface", name)
		default:
			x.log.Info("removed the pin of a link that is gone", "iface", name)
		}
	}
	return errors.Join(errs...)
}

// unpinLink removes a link pin; detached reports whether it held a live link, which goes with
// the pin (nothing else holds it once the daemon is gone).
func unpinLink(pin string) (detached bool, err error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		// A link whose interface is gone can't be opened as a link any more; drop the pin.
		if rmErr := os.Remove(pin); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
			return false, fmt.Errorf("remove %s: %w", pin, rmErr)
		}
		return false, nil
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return false, fmt.Errorf("unpin %s: %w", pin, err)
	}
	return true, nil
}

// Name implements backend.Enforcer.
func (x *XDP) Name() string { return "xdp" }

// Close releases the daemon's handles; the pinned program, links and maps keep enforcing.
func (x *XDP) Close() error {
	for _, l := range x.ifaces {
		l.link.Close()
	}
	err := x.objs.Close()
	if x.lock != nil {
		x.lock.Close()
	}
	return err
}

// Remove is Uninstall for callers that need no report.
func Remove(pinDir string, ifaces []string) error {
	_, err := Uninstall(pinDir, ifaces)
	return err
}

// Removed is what Uninstall took away.
type Removed struct {
	Detached []string // interfaces the XDP program was detached from
	Pins     int      // pins deleted (links, maps, program)
}

// Uninstall detaches snare's XDP program from every interface it is pinned on (and from ifaces,
// if attached there without a pin) and deletes all pins: the uninstall path. It reports what
// it removed, which may be nothing.
func Uninstall(pinDir string, ifaces []string) (Removed, error) {
	var out Removed
	var errs []error
	pins, _ := filepath.Glob(filepath.Join(pinDir, "link_*"))
	for _, p := range pins {
		detached, err := unpinLink(p)
		if err != nil {
			errs = append(errs, err)
		}
		if detached {
			out.Detached = append(out.Detached, strings.TrimPrefix(filepath.Base(p), "link_"))
		}
		if err == nil {
			out.Pins++
		}
	}
	for _, name := range ifaces {
		nl, err := netlink.LinkByName(name)
		if err != nil || nl.Attrs().Xdp == nil || !nl.Attrs().Xdp.Attached {
			continue
		}
		prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(nl.Attrs().Xdp.ProgId))
		if err != nil {
			continue
		}
		info, err := prog.Info()
		prog.Close()
		if err == nil && info.Name == bpf.SnareProgSnareXdp {
			if err := netlink.LinkSetXdpFd(nl, -1); err != nil {
				errs = append(errs, fmt.Errorf("detach xdp from %s: %w", name, err))
			} else if !slices.Contains(out.Detached, name) {
				out.Detached = append(out.Detached, name)
			}
		}
	}
	entries, err := os.ReadDir(pinDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if err := os.Remove(filepath.Join(pinDir, e.Name())); err != nil {
			errs = append(errs, err)
		} else {
			out.Pins++
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return out, errors.Join(errs...)
}
