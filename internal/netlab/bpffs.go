package netlab

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// BPFFSRoot is where bpffs is conventionally mounted.
const BPFFSRoot = "/sys/fs/bpf"

// IsBPFFS reports whether path lies on a bpf filesystem (statfs magic BPF_FS_MAGIC).
func IsBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC, nil
}

// EnsureBPFFS mounts bpffs at BPFFSRoot unless a bpffs is already mounted there, and checks
// afterwards that it really is one. bpffs is per mount namespace: a process started with
// `ip netns exec` gets a fresh /sys without it (see Lab.Start and Lab.StartShared).
func EnsureBPFFS() error {
	ok, err := IsBPFFS(BPFFSRoot)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	if ok {
		return nil
	}
	if err := os.MkdirAll(BPFFSRoot, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", BPFFSRoot, err)
	}
	if err := unix.Mount("bpf", BPFFSRoot, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", BPFFSRoot, err)
	}
	if ok, err := IsBPFFS(BPFFSRoot); err != nil || !ok {
		return fmt.Errorf("%s is not bpffs after mounting it (err %v)", BPFFSRoot, err)
	}
	return nil
}
