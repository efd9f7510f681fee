package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/snare-dev/snare/control/api"

	"github.com/spf13/cobra"
)

func (c *cli) eventsCommand() *cobra.Command {
	var output *choice
	var follow bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show the event log (scans, blocks, unblocks, expiries)",
		Long: `Show the daemon's event log, oldest first: scans caught on trap ports, blocks, unblocks,
expiries, evictions, allowlist changes, daemon start and stop. With -f, keep printing new
events as they happen until interrupted.

-o json prints one JSON object per line (JSON lines), as the daemon stores them.`,
		Example: `  snarectl events
  snarectl events -f
  snarectl events -o json | jq -c 'select(.event == "scan")'`,
		Args: noArgs,
		RunE: c.verb(func(cmd *cobra.Command, _ []string) error {
			enc := json.NewEncoder(c.stdout)
			header := false
			err := c.client().Events(cmd.Context(), follow, func(ev api.Event) error {
				if output.value == "json" {
					return enc.Encode(ev)
				}
				// Fixed-width columns rather than a tabwriter, so that followed events print as
				// they arrive.
				if !header {
					fmt.Fprintf(c.stdout, "%-23s  %-8s  %-20s  %-7s  %s\n", "TIME", "EVENT", "ADDRESS", "SOURCE", "DETAILS")
					header = true
				}
				_, err := fmt.Fprintf(c.stdout, "%-23s  %-8s  %-20s  %-7s  %s\n", timeText(ev.Time, c.loc), printable(ev.Event),
					printable(orDash(shortPrefix(ev.Address))), printable(orDash(ev.Source)), printable(eventDetails(ev)))
				return err
			})
			if err != nil && !(follow && errors.Is(err, context.Canceled)) {
				return fmt.Errorf("events: %w", err)
			}
			return nil
		}),
	}
	output = outputFlag(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events until interrupted")
	return cmd
}

// eventDetails joins what an event carries besides its time, kind, address and source.
func eventDetails(ev api.Event) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	if ev.Proto != "" || len(ev.Ports) > 0 {
		add("scan", strings.TrimSpace(ev.Proto+" "+portsText(ev.Ports)))
	}
	add("flags", ev.TCPFlags)
	add("action", ev.Action)
	add("ttl", ev.TTL)
	if ev.Offences > 1 {
		add("offence", fmt.Sprint(ev.Offences))
	}
	if ev.Reason != "" {
		add("reason", fmt.Sprintf("%q", ev.Reason))
	}
	if ev.Detail != "" {
		add("detail", fmt.Sprintf("%q", ev.Detail))
	}
	return orDash(strings.Join(parts, " "))
}
