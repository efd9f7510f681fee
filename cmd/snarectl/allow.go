package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/snare-dev/snare/control/api"

	"github.com/spf13/cobra"
)

func (c *cli) allowCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "allow",
		Short: "Manage the allowlist (sources that are never blocked)",
		Long: `Manage the allowlist. Allowlisted sources always pass and can never be blocked, by hand or by
a trap. Besides the entries added here and the config's allow list, the daemon allowlists
loopback, the host's own addresses, its default gateways and its resolvers by itself
(allow_implicit); 'allow list' shows them all with their source.`,
		Example: `  snarectl allow add 198.18.10.0/24
  snarectl allow del 198.18.10.0/24
  snarectl allow list`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, args []string) error {
			return usagef("missing subcommand: add, del or list")
		},
	}
	cmd.AddCommand(c.allowChangeCommand("add"), c.allowChangeCommand("del"), c.allowListCommand())
	return cmd
}

func (c *cli) allowChangeCommand(verb string) *cobra.Command {
	short, example := "Add addresses or networks to the allowlist", "  snarectl allow add 198.18.10.0/24 2001:db8:1::/48"
	if verb == "del" {
		short, example = "Remove addresses or networks from the allowlist", "  snarectl allow del 198.18.10.0/24"
	}
	output := (*choice)(nil)
	cmd := &cobra.Command{
		Use:     verb + " ADDR|CIDR...",
		Short:   short,
		Example: example,
		Args:    minArgs(1, "address or CIDR"),
		RunE: c.verb(func(cmd *cobra.Command, args []string) error {
			if err := checkAllowTargets(args); err != nil {
				return err
			}
			req := api.AllowRequest{Targets: args}
			var resp api.AllowResponse
			var err error
			if verb == "add" {
				resp, err = c.client().AllowAdd(cmd.Context(), req)
			} else {
				resp, err = c.client().AllowDel(cmd.Context(), req)
			}
			if err != nil {
				return fmt.Errorf("allow %s: %w", verb, err)
			}
			return c.allowOutput(resp, output.value)
		}),
	}
	output = outputFlag(cmd)
	if verb == "del" {
		cmd.Aliases = []string{"rm"}
		cmd.ValidArgsFunction = c.completeAllowed
	}
	return cmd
}

func (c *cli) allowListCommand() *cobra.Command {
	var output *choice
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "Show the whole allowlist, implicit entries included",
		Example: "  snarectl allow list\n  snarectl allow list -o json",
		Args:    noArgs,
		RunE: c.verb(func(cmd *cobra.Command, _ []string) error {
			resp, err := c.client().AllowList(cmd.Context())
			if err != nil {
				return fmt.Errorf("allow list: %w", err)
			}
			return c.allowOutput(resp, output.value)
		}),
	}
	output = outputFlag(cmd)
	return cmd
}

func (c *cli) allowOutput(resp api.AllowResponse, format string) error {
	if format == "json" {
		return writeJSON(c.stdout, resp)
	}
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "PREFIX\tSOURCE")
	for _, e := range resp.Entries {
		fmt.Fprintf(tw, "%s\t%s\n", printable(e.Prefix), printable(e.Source))
	}
	return tw.Flush()
}

// completeAllowed completes allow del's arguments with the entries that can be removed (the
// implicit ones cannot), asking the daemon briefly; no daemon, no suggestions.
func (c *cli) completeAllowed(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
	defer cancel()
	resp, err := c.client().AllowList(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, e := range resp.Entries {
		if e.Source == api.AllowManual && !slices.Contains(args, e.Prefix) {
			out = append(out, printable(e.Prefix))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
