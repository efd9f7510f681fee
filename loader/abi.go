package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/snare-dev/snare/bpf"
)

// abi is the layout of the maps this loader pins (SNARE_ABI in snare.h). It is pinned beside
// them as a one-entry array map named abiPin, since bpffs holds pins and no regular files.
const (
	abi    = uint32(bpf.SnareAbiSNARE_ABI)
	abiPin = "abi"
)

// relaidOut names the maps whose layout or meaning changed after ABI from without a change of
// key or value size. MapSpec.Compatible cannot see such a change, so their pins are replaced by
// empty maps, never reused or copied; the daemon restores what matters from its store. Changes
// of size need no entry here: load migrates every incompatible pin.
func relaidOut(from uint32) []string {
	var names []string
	if from < 2 {
		// scan_state.reported bit 2 meant "blocked in this window", now "allowlisted reported".
		// (struct config also grew in ABI 2: a change of size, carried over by copySettings.)
		names = append(names, bpf.SnareMapScan)
	}
	return names
}

// pinnedABI returns the ABI of the maps pinned in dir. A directory without an abi pin holds
// maps from before the pin existed (ABI 1: every release up to the growth of struct config),
// or none at all (then this loader's ABI: there is nothing to migrate).
func pinnedABI(dir string, spec *ebpf.CollectionSpec) (v uint32, found bool, err error) {
	pin := filepath.Join(dir, abiPin)
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		for name := range spec.Maps {
			if strings.HasPrefix(name, ".") {
				continue
			}
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				return 1, false, nil
			}
		}
		return abi, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("open pinned abi version %s: %w", pin, err)
	}
	defer m.Close()
	if m.Type() != ebpf.Array || m.KeySize() != 4 || m.ValueSize() != 4 {
		return 0, false, fmt.Errorf("pinned abi version %s is not a u32 array (%s, key %d, value %d bytes)", pin, m.Type(), m.KeySize(), m.ValueSize())
	}
	if err := m.Lookup(uint32(0), &v); err != nil {
		return 0, false, fmt.Errorf("read pinned abi version %s: %w", pin, err)
	}
	return v, true, nil
}

// pinABI records this loader's ABI in dir. The new pin is renamed over the old one, so the
// version is never missing once maps exist.
func pinABI(dir string) error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: abiPin, Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create abi version map: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), abi); err != nil {
		return fmt.Errorf("write abi version: %w", err)
	}
	tmp := filepath.Join(dir, "tmp_"+abiPin)
	os.Remove(tmp)
	if err := m.Pin(tmp); err != nil {
		return fmt.Errorf("pin abi version at %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, abiPin)); err != nil {
		return fmt.Errorf("pin abi version: %w", err)
	}
	return nil
}
