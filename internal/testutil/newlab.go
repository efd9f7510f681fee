package testutil

import (
	"testing"

	"github.com/snare-dev/snare/internal/netlab"
)

// NewLab builds a netlab lab for a test (peers as in netlab.Config.Peers) and tears it down when
// the test ends, failed or not. It requires root (see RequireRoot).
func NewLab(tb testing.TB, peers ...string) *netlab.Lab {
	tb.Helper()
	RequireRoot(tb)
	lab, err := netlab.New(netlab.Config{Peers: peers})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := lab.Close(); err != nil {
			tb.Errorf("tear down lab: %v", err)
		}
	})
	tb.Logf("lab:\n%s", lab)
	return lab
}
