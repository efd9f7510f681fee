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

// Lab, Node, Config and New are netlab's under the names control's tests use, so that splitting
// control/ into packages (which rewrites those tests) and this package's split do not edit the
// same lines. Once control's tests import netlab themselves, these go.
type (
	Lab    = netlab.Lab
	Node   = netlab.Node
	Config = netlab.Config
)

// New is netlab.New; see Lab.
func New(cfg Config) (*Lab, error) { return netlab.New(cfg) }
