package testutil

import (
	"os"
	"testing"

	"github.com/snare-dev/snare/internal/netlab"
)

// TempBPFFS returns a fresh, empty directory on bpffs (mounting bpffs at /sys/fs/bpf first if
// needed), removed with everything pinned in it when the test ends.
func TempBPFFS(tb testing.TB) string {
	tb.Helper()
	if err := netlab.EnsureBPFFS(); err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp(netlab.BPFFSRoot, "snare-test-")
	if err != nil {
		tb.Fatalf("create a directory on bpffs: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("remove %s: %v", dir, err)
		}
	})
	if ok, err := netlab.IsBPFFS(dir); err != nil || !ok {
		tb.Fatalf("%s is not on bpffs (err %v)", dir, err)
	}
	return dir
}
