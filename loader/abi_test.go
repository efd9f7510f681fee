package loader

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/snare-dev/snare/bpf"
)

// pinnedIDs returns the kernel id of every map pinned in dir, by pin name.
func pinnedIDs(t *testing.T, dir string) map[string]ebpf.MapID {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]ebpf.MapID{}
	for _, e := range entries {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			t.Fatalf("open pin %s: %v", e.Name(), err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		id, ok := info.ID()
		if !ok {
			t.Fatalf("no id for map %s", e.Name())
		}
		ids[e.Name()] = id
	}
	return ids
}

// pinVersion pins, as the abi pin in dir, an array map holding v.
func pinVersion(t *testing.T, dir string, v uint32) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), v); err != nil {
		t.Fatal(err)
	}
	pin := filepath.Join(dir, abiPin)
	os.Remove(pin)
	if err := m.Pin(pin); err != nil {
		t.Fatal(err)
	}
}

func readVersion(t *testing.T, dir string) uint32 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, abiPin), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var v uint32
	if err := m.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// Maps pinned by a newer snare are refused with a message naming both ABIs and the way out, and
// nothing in the pin directory changes; so is an abi pin that is not a version map.
func TestNewerABIRefused(t *testing.T) {
	x := newUnattached(t, 1024)
	block(t, x, "198.18.1.1/32", time.Hour)
	x.Close()
	if got := readVersion(t, x.pinDir); got != abi {
		t.Fatalf("abi pin holds %d after a fresh load, want %d", got, abi)
	}

	pinVersion(t, x.pinDir, abi+1)
	before := pinnedIDs(t, x.pinDir)
	y := &XDP{log: testLogger(t), pinDir: x.pinDir, capacity: 4096} // a capacity change would migrate
	err := y.load(4096)
	want := fmt.Sprintf("pinned maps at %s were made by a newer snare (ABI %d, this snared understands up to %d): run `snared uninstall` or the newer snared", x.pinDir, abi+1, abi)
	if !errors.Is(err, ErrNewerABI) || err.Error() != want {
		t.Fatalf("load over a newer ABI: %v\nwant: %s", err, want)
	}
	if after := pinnedIDs(t, x.pinDir); !maps.Equal(before, after) {
		t.Fatalf("pins changed by a refused load:\nbefore %v\nafter  %v", before, after)
	}
	if got := readVersion(t, x.pinDir); got != abi+1 {
		t.Fatalf("abi pin holds %d after a refused load, want %d", got, abi+1)
	}

	// An abi pin of another shape is not read as a version.
	os.Remove(filepath.Join(x.pinDir, abiPin))
	h, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Pin(filepath.Join(x.pinDir, abiPin)); err != nil {
		t.Fatal(err)
	}
	before = pinnedIDs(t, x.pinDir)
	err = y.load(4096)
	if err == nil || !strings.Contains(err.Error(), "is not a u32 array (Hash, key 4, value 8 bytes)") {
		t.Fatalf("load with a hash map as abi pin: %v", err)
	}
	if after := pinnedIDs(t, x.pinDir); !maps.Equal(before, after) {
		t.Fatalf("pins changed by a refused load:\nbefore %v\nafter  %v", before, after)
	}
}

// Maps pinned under an older ABI are migrated: a map whose meaning changed at the same size (the
// scan state in ABI 2) is replaced by an empty one, never reused; the others are reused; the
// program works on the result. A load at the same ABI then reuses every pin.
func TestOlderABIMigrates(t *testing.T) {
	for _, old := range []string{"no abi pin", "abi 1"} {
		t.Run(old, func(t *testing.T) {
			x := newUnattached(t, 1024)
			block(t, x, "198.18.1.1/32", time.Hour)
			stale := bpf.SnareScanState{FirstNs: 1, Nports: 1, Reported: 2} // ABI 1: bit 2 = blocked
			stale.Ports[0] = 6<<16 | 31337
			if err := x.objs.Scan.Put(bpf.SnareAddr6{Addr: [16]byte{15: 9}}, stale); err != nil {
				t.Fatal(err)
			}
			x.Close()
			if old == "no abi pin" {
				os.Remove(filepath.Join(x.pinDir, abiPin)) // pins from before the abi pin
			} else {
				pinVersion(t, x.pinDir, 1)
			}
			before := pinnedIDs(t, x.pinDir)

			y := &XDP{log: testLogger(t), pinDir: x.pinDir, capacity: 1024}
			if err := y.load(1024); err != nil {
				t.Fatal(err)
			}
			defer y.Close()
			after := pinnedIDs(t, x.pinDir)
			if after[bpf.SnareMapScan] == before[bpf.SnareMapScan] {
				t.Fatalf("scan map reused across the ABI change (id %d)", after[bpf.SnareMapScan])
			}
			var k bpf.SnareAddr6
			var v bpf.SnareScanState
			if it := y.objs.Scan.Iterate(); it.Next(&k, &v) {
				t.Fatalf("migrated scan map holds %v: %+v", k, v)
			}
			if after[bpf.SnareMapBlock4] != before[bpf.SnareMapBlock4] {
				t.Fatalf("block4 recreated (id %d, was %d): its layout did not change", after[bpf.SnareMapBlock4], before[bpf.SnareMapBlock4])
			}
			if got := readVersion(t, x.pinDir); got != abi {
				t.Fatalf("abi pin holds %d after migration, want %d", got, abi)
			}
			if got := run(t, y, frame(t, pkt{src: "198.18.1.1", dst: host4, proto: "icmp"})); got != "drop" {
				t.Fatalf("blocked source after migration: %s", got)
			}
			setTrap(t, y, trapConfig(1, time.Minute))
			if got := run(t, y, frame(t, pkt{src: "198.18.2.2", dst: host4, proto: "tcp", dport: 31337, flags: "S"})); got != "drop" {
				t.Fatalf("trap probe after migration: %s", got)
			}
			y.Close()

			z := &XDP{log: testLogger(t), pinDir: x.pinDir, capacity: 1024}
			if err := z.load(1024); err != nil {
				t.Fatal(err)
			}
			defer z.Close()
			if again := pinnedIDs(t, x.pinDir); !maps.Equal(after, again) {
				t.Fatalf("pins not reused at the same ABI:\nbefore %v\nafter  %v", after, again)
			}
		})
	}
}
