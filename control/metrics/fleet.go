package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/snare-dev/snare/control/api"
)

// FleetCollector exports the fleet's counters (snarectl fleet status), read at scrape time.
// Register it only on a host in a fleet.
type FleetCollector struct {
	status    func() api.FleetStatus
	connected *prometheus.Desc
	outbox    *prometheus.Desc
	decisions *prometheus.Desc
	peers     *prometheus.Desc
	lag       *prometheus.Desc
}

// NewFleetCollector reads status (the daemon's FleetStatus) on every scrape.
func NewFleetCollector(status func() api.FleetStatus) *FleetCollector {
	return &FleetCollector{status: status,
		connected: prometheus.NewDesc("snare_fleet_connected", "1 when this host is connected to the fleet's bucket.", nil, nil),
		outbox:    prometheus.NewDesc("snare_fleet_outbox", "Local decisions waiting to be shared with the fleet.", nil, nil),
		decisions: prometheus.NewDesc("snare_fleet_decisions_total",
			"Fleet decisions: published (shared by this host), received (applied here), refused (bad values from the engine), shed (trap blocks over fleet.max_publish_per_second), allowlisted (not enforced here), stale (unblocks not shared: blocked again since).",
			[]string{"kind"}, nil),
		peers: prometheus.NewDesc("snare_fleet_peers", "Other nodes this host has received decisions from.", nil, nil),
		lag:   prometheus.NewDesc("snare_fleet_lag_seconds", "From decision to arrival here, of the last remote block.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *FleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.connected, c.outbox, c.decisions, c.peers, c.lag} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *FleetCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	connected := 0.0
	if st.Connected {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, connected)
	ch <- prometheus.MustNewConstMetric(c.outbox, prometheus.GaugeValue, float64(st.Outbox))
	for kind, n := range map[string]uint64{"published": st.Published, "received": st.Received, "refused": st.Refused,
		"shed": st.Shed, "allowlisted": st.Allowlisted, "stale": st.Stale} {
		ch <- prometheus.MustNewConstMetric(c.decisions, prometheus.CounterValue, float64(n), kind)
	}
	ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(len(st.Peers)))
	ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, st.LagMs/1000)
}
