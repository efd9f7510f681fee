package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/snare-dev/snare/control/api"

	"github.com/spf13/cobra"
)

func (c *cli) statusCommand() *cobra.Command {
	var output *choice
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show how snared is enforcing",
		Long: `Show the daemon's state: the back-end in use (xdp or iptables, and why it fell back), the
XDP mode per interface, entries against capacity, packets passed and dropped (by reason),
LRU evictions, the allowlist size, the trap ports in force with their threshold and mode,
scan-state entries and trap events suppressed by the rate limit.

-o json prints the daemon's answer as is, for scripts and monitoring.`,
		Example: `  snarectl status
  snarectl status -o json | jq .dropped`,
		Args: noArgs,
		RunE: c.verb(func(cmd *cobra.Command, _ []string) error {
			st, err := c.client().Status(cmd.Context())
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			if output.value == "json" {
				return writeJSON(c.stdout, st)
			}
			return c.statusTable(st)
		}),
	}
	output = outputFlag(cmd)
	return cmd
}

func (c *cli) statusTable(st api.StatusResponse) error {
	now := c.now()
	tw := newTable(c.stdout)
	// Values hold what the daemon sent (interface names, versions, reasons): escaped.
	row := func(k, format string, a ...any) {
		fmt.Fprintf(tw, "%s:\t%s\n", k, printable(fmt.Sprintf(format, a...)))
	}

	backend := st.Backend
	if st.Fallback != "" {
		backend += " (fallback: " + st.Fallback + ")"
	}
	if st.DryRun {
		backend += ", DRY RUN: nothing is dropped"
	}
	row("backend", "%s", backend)
	var ifaces []string
	for _, i := range st.Interfaces {
		ifaces = append(ifaces, fmt.Sprintf("%s (%s)", i.Name, i.Mode))
	}
	row("interfaces", "%s", orDash(strings.Join(ifaces, ", ")))
	row("entries", "%s of %s (%s full)", countText(uint64(st.Entries)), countText(uint64(st.Capacity)), fillText(st.Entries, st.Capacity))
	pass, drop, other := splitReasons(st.ByReason)
	row("passed", "%s packets%s", countText(st.Passed), reasonsText(pass))
	row("dropped", "%s packets%s", countText(st.Dropped), reasonsText(drop))
	if len(other) > 0 {
		row("other counters", "%s", strings.TrimSuffix(strings.TrimPrefix(reasonsText(other), " ("), ")"))
	}
	row("evictions", "%s", countText(st.Evictions))
	row("allowlist", "%d %s", st.Allowlist, plural(st.Allowlist, "entry", "entries"))
	t := st.Trap
	row("trap tcp ports", "%s (%s)", orDash(t.TCPPorts), orDash(t.TCPMode))
	row("trap udp ports", "%s (%s)", orDash(t.UDPPorts), orDash(t.UDPMode))
	row("trap trigger", "%d distinct %s within %s", t.Threshold, plural(t.Threshold, "port", "ports"), orDash(t.Window))
	row("trap hits", "%s (%s blocks)", countText(t.Hits), countText(t.Blocks))
	row("scan entries", "%d", t.ScanEntries)
	row("events suppressed", "%s", countText(t.Suppressed))
	if !st.StartedAt.IsZero() {
		row("started", "%s (%s)", timeText(st.StartedAt, c.loc), relative(now, st.StartedAt))
	}
	row("version", "%s", orDash(st.Version))
	return tw.Flush()
}

// fillText is entries/capacity as a percentage: "0.3%".
func fillText(entries, capacity int) string {
	if capacity <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(entries)/float64(capacity))
}

// splitReasons sorts the enforcer's per-reason packet counters ("pass_allow", "drop_exact",
// "dry_run", ...) into passes and drops, named without their prefix, and the rest; zero
// counters are left out.
func splitReasons(by map[string]uint64) (pass, drop, other map[string]uint64) {
	pass, drop, other = map[string]uint64{}, map[string]uint64{}, map[string]uint64{}
	for k, v := range by {
		switch {
		case v == 0:
		case k == "pass":
			pass["not blocked"] = v
		case strings.HasPrefix(k, "pass_"):
			pass[strings.TrimPrefix(k, "pass_")] = v
		case strings.HasPrefix(k, "drop_"):
			drop[strings.TrimPrefix(k, "drop_")] = v
		default:
			other[k] = v
		}
	}
	return pass, drop, other
}

// reasonsText lists packet counts by reason: " (cidr: 2, exact: 10)".
func reasonsText(by map[string]uint64) string {
	if len(by) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(by)) {
		parts = append(parts, fmt.Sprintf("%s: %s", k, countText(by[k])))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}
