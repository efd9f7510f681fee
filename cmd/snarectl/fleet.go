package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/api"

	"github.com/spf13/cobra"
)

func (c *cli) fleetCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Show how this host shares its decisions with the fleet",
		Long: `Show how this host shares its blocks and unblocks with the other hosts of the fleet
(the config's fleet section: NATS JetStream).`,
		Example: `  snarectl fleet status
  snarectl fleet status -o json`,
		Args: cobra.ArbitraryArgs,
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown fleet command %q (want: status)", args[0])
			}
			return usagef("missing fleet command (want: status)")
		},
	}
	var output *choice
	status := &cobra.Command{
		Use:   "status",
		Short: "Show this host in the fleet",
		Long: `Show this host in the fleet: its node name, the NATS servers, whether it is connected
(and why not, or the last thing the engine refused since), the embedded server if it runs one,
how many local decisions wait in the outbox, the decisions published, received (with the lag of
the last remote block: from its decision to its arrival here), refused (bad values from the
engine), shed (trap blocks over fleet.max_publish_per_second), kept out by the local allowlist,
the unblocks not shared because the fleet blocked the address again since (stale), and the other
nodes seen and when.

-o json prints the daemon's answer as is ("connected": true|false).`,
		Example: `  snarectl fleet status
  snarectl fleet status -o json | jq .connected`,
		Args: noArgs,
		RunE: c.verb(func(cmd *cobra.Command, _ []string) error {
			st, err := c.client().FleetStatus(cmd.Context())
			if err != nil {
				return fmt.Errorf("fleet status: %w", err)
			}
			if output.value == "json" {
				return writeJSON(c.stdout, st)
			}
			return c.fleetTable(st)
		}),
	}
	output = outputFlag(status)
	cmd.AddCommand(status)
	return cmd
}

func (c *cli) fleetTable(st api.FleetStatus) error {
	tw := newTable(c.stdout)
	row := func(k, format string, a ...any) {
		fmt.Fprintf(tw, "%s:\t%s\n", k, printable(fmt.Sprintf(format, a...)))
	}
	if !st.Enabled {
		row("fleet", "not configured (no fleet.servers, no fleet.embedded.listen)")
		return tw.Flush()
	}
	row("node", "%s", st.Node)
	row("servers", "%s", orDash(strings.Join(st.Servers, ", ")))
	row("bucket", "%s", st.Bucket)
	conn := "yes"
	if !st.Connected {
		conn = "no"
		if st.Error != "" {
			conn += " (" + st.Error + ")"
		}
	}
	row("connected", "%s", conn)
	if st.Connected && st.Error != "" {
		// Connected, yet the engine refused something since (a permission, a publication).
		row("last error", "%s", st.Error)
	}
	if e := st.Embedded; e != nil {
		row("embedded server", "%s, listening on %s, %d routes, store %s", map[bool]string{true: "running", false: "stopped"}[e.Running], e.ClientURL, e.Routes, e.StoreDir)
	}
	row("outbox", "%d", st.Outbox)
	row("published", "%s", countText(st.Published))
	row("received", "%s (last lag %.1f ms)", countText(st.Received), st.LagMs)
	row("refused", "%s", countText(st.Refused))
	row("shed", "%s", countText(st.Shed))
	row("allowlisted", "%s", countText(st.Allowlisted))
	row("stale unblocks", "%s", countText(st.Stale))
	var peers []string
	now := c.now()
	for _, p := range st.Peers {
		peers = append(peers, fmt.Sprintf("%s (%s ago)", p.Node, now.Sub(p.LastSeen).Round(time.Second)))
	}
	row("peers", "%s", orDash(strings.Join(peers, ", ")))
	return tw.Flush()
}
