package control_test

import (
	"testing"

	"github.com/snare-dev/snare/internal/testutil"
)

// The daemon drives enforcement only through backend.Enforcer: cmd/snared picks the back-end.
func TestNoBackendLinked(t *testing.T) {
	testutil.RequireNoDeps(t, "github.com/snare-dev/snare/control",
		"github.com/snare-dev/snare/loader", "github.com/snare-dev/snare/iptables-fallback",
		"github.com/snare-dev/snare/bpf", "github.com/cilium/ebpf")
}
