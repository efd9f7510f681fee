package testutil

import (
	"errors"
	"os"
	"testing"

	"github.com/snare-dev/snare/internal/netlab"
)

func TestTempBPFFS(t *testing.T) {
	RequireRoot(t)
	var dir string
	t.Run("use", func(t *testing.T) {
		dir = TempBPFFS(t)
		ok, err := netlab.IsBPFFS(dir)
		if err != nil || !ok {
			t.Fatalf("%s not on bpffs: %v", dir, err)
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 0 {
			t.Fatalf("fresh dir has %d entries, %v", len(entries), err)
		}
	})
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s not removed: %v", dir, err)
	}
	if ok, _ := netlab.IsBPFFS(t.TempDir()); ok {
		t.Error("IsBPFFS says a temp dir is bpffs")
	}
}
