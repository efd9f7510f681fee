package testutil

import (
	"errors"
	"fmt"
	"os"
	"testing"

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

// TempBPFFS returns a fresh, empty directory on bpffs (mounting bpffs at /sys/fs/bpf first if
// needed), removed with everything pinned in it when the test ends.
func TempBPFFS(tb testing.TB) string {
	tb.Helper()
	if err := EnsureBPFFS(); err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp(BPFFSRoot, "snare-test-")
	if err != nil {
		tb.Fatalf("create a directory on bpffs: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("remove %s: %v", dir, err)
		}
	})
	if ok, err := IsBPFFS(dir); err != nil || !ok {
		tb.Fatalf("%s is not on bpffs (err %v)", dir, err)
	}
	return dir
}
