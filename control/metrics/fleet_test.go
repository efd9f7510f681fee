package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/snare-dev/snare/control/api"
)

func TestFleetCollector(t *testing.T) {
	st := api.FleetStatus{Enabled: true, Connected: true, Outbox: 3, Published: 10, Received: 20, Refused: 1, Shed: 4,
		Allowlisted: 2, Stale: 5, Peers: []api.FleetPeer{{Node: "b", LastSeen: time.Now()}}, LagMs: 1.5}
	reg := prometheus.NewRegistry()
	if err := reg.Register(NewFleetCollector(func() api.FleetStatus { return st })); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP snare_fleet_connected 1 when this host is connected to the fleet's bucket.
# TYPE snare_fleet_connected gauge
snare_fleet_connected 1
# HELP snare_fleet_outbox Local decisions waiting to be shared with the fleet.
# TYPE snare_fleet_outbox gauge
snare_fleet_outbox 3
# HELP snare_fleet_peers Other nodes this host has received decisions from.
# TYPE snare_fleet_peers gauge
snare_fleet_peers 1
# HELP snare_fleet_lag_seconds From decision to arrival here, of the last remote block.
# TYPE snare_fleet_lag_seconds gauge
snare_fleet_lag_seconds 0.0015
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "snare_fleet_connected", "snare_fleet_outbox", "snare_fleet_peers", "snare_fleet_lag_seconds"); err != nil {
		t.Error(err)
	}
	decisions := `
# HELP snare_fleet_decisions_total Fleet decisions: published (shared by this host), received (applied here), refused (bad values from the engine), shed (trap blocks over fleet.max_publish_per_second), allowlisted (not enforced here), stale (unblocks not shared: blocked again since).
# TYPE snare_fleet_decisions_total counter
snare_fleet_decisions_total{kind="allowlisted"} 2
snare_fleet_decisions_total{kind="published"} 10
snare_fleet_decisions_total{kind="received"} 20
snare_fleet_decisions_total{kind="refused"} 1
snare_fleet_decisions_total{kind="shed"} 4
snare_fleet_decisions_total{kind="stale"} 5
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(decisions), "snare_fleet_decisions_total"); err != nil {
		t.Error(err)
	}
}
