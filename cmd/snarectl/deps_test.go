package main

import (
	"testing"

	"github.com/snare-dev/snare/internal/testutil"
)

// snarectl talks to the daemon over its socket only: it links the API, the input checks and the
// list parser, none of the daemon, its store, metrics or BPF.
func TestLinksOnlyTheAPI(t *testing.T) {
	testutil.RequireNoDeps(t, "github.com/snare-dev/snare/cmd/snarectl",
		"github.com/cilium/ebpf", "go.etcd.io/bbolt", "github.com/prometheus/client_golang",
		"github.com/snare-dev/snare/loader", "github.com/snare-dev/snare/bpf",
		"github.com/snare-dev/snare/iptables-fallback", "github.com/snare-dev/snare/control/store",
		"github.com/snare-dev/snare/control/config", "github.com/snare-dev/snare/control/metrics")
}
