package loader

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// lockDir takes an exclusive flock on dir so that two daemons cannot fight over the same pins.
// The lock is released when the returned file is closed or the process dies.
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open %s for locking: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return f, nil
}

// ensureBPFFS makes sure dir lives on a bpffs, mounting one at /sys/fs/bpf if nothing is mounted
// there yet, and creates dir.
func ensureBPFFS(dir string) error {
	const root = "/sys/fs/bpf"
	if !isBPFFS(root) {
		if err := os.MkdirAll(root, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", root, err)
		}
		if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", root, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	if !isBPFFS(dir) {
		return fmt.Errorf("pin directory %s is not on a bpffs (mount one there or use --bpffs /sys/fs/bpf/snare)", dir)
	}
	return nil
}

func isBPFFS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC
}
