package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control/api"

	"github.com/spf13/cobra"
)

func (c *cli) blockCommand() *cobra.Command {
	var ttl, reason string
	var output *choice
	cmd := &cobra.Command{
		Use:   "block ADDR|CIDR...",
		Short: "Block addresses or networks",
		Long: `Block one or more IPv4/IPv6 addresses or CIDRs. Packets from them are dropped until the TTL
runs out (the daemon's block.ttl, 5 days by default, unless --ttl says otherwise).

A single IPv6 address is blocked as its /64 (block.ipv6_prefix); an IPv4-mapped IPv6 address is
the IPv4 address. Blocking a source again extends its expiry and counts a repeat offence, which
may lengthen the TTL (block.escalation.*). Allowlisted addresses (loopback, the host's own
addresses, its gateways and resolvers, the configured allowlist) are refused, as are 0.0.0.0/0,
::/0, prefixes wider than block.min_prefix_v4/v6, and link-local (169.254.0.0/16, fe80::/10) and
multicast (224.0.0.0/4, ff00::/8) addresses and CIDRs that overlap them: a single IPv6 address
is blocked as its /64, and fe80::/64 holds the host's own link-local addresses.

--reason is at most 256 bytes of text without control characters (newlines, tabs, terminal
escapes, bidirectional overrides); list, top and events show it.

Every target is checked before anything is sent: if one is bad, nothing is blocked.
-o json prints the entries as stored after the change ({"entries": [...]}).`,
		Example: `  snarectl block 198.18.0.7
  snarectl block 198.18.0.0/24 2001:db8::1 --ttl 12h --reason "ssh brute force"
  snarectl block 198.18.3.4 --ttl permanent`,
		Args: minArgs(1, "address or CIDR to block"),
		RunE: c.verb(func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("ttl") {
				if err := checkTTL(ttl); err != nil {
					return err
				}
			}
			if err := input.CheckReason(reason); err != nil {
				return inputf("bad --reason: %v", err)
			}
			if err := checkBlockTargets(args); err != nil {
				return err
			}
			resp, err := c.client().Block(cmd.Context(), api.BlockRequest{Targets: args, TTL: ttl, Reason: reason})
			if err != nil {
				return fmt.Errorf("block: %w", err)
			}
			if output.value == "json" {
				return writeJSON(c.stdout, resp)
			}
			now := c.now()
			for _, e := range resp.Entries {
				fmt.Fprintf(c.stdout, "blocked %s %s\n", printable(shortPrefix(e.Prefix)), blockedUntil(e, now, c.loc))
			}
			return nil
		}),
	}
	cmd.Flags().StringVar(&ttl, "ttl", "", "how long the block lasts: `DURATION` such as 5d, 12h, 90m, or permanent (default: the daemon's block.ttl)")
	cmd.Flags().StringVar(&reason, "reason", "", "why, kept with the block and shown by list and events (at most 256 bytes, no control characters)")
	output = outputFlag(cmd)
	return cmd
}

func (c *cli) unblockCommand() *cobra.Command {
	var output *choice
	cmd := &cobra.Command{
		Use:   "unblock ADDR|CIDR...",
		Short: "Remove blocks",
		Long: `Remove the blocks on one or more addresses or CIDRs, written as they were blocked (a single
IPv6 address stands for the /64 it was blocked as).

Targets that were not blocked are named on stderr and make the exit code 1; the others are
still unblocked. -o json prints {"removed": [...], "not_found": [...]}.`,
		Example: `  snarectl unblock 198.18.0.7
  snarectl unblock 198.18.0.0/24 2001:db8::1`,
		Args:              minArgs(1, "address or CIDR to unblock"),
		ValidArgsFunction: c.completeBlocked,
		RunE: c.verb(func(cmd *cobra.Command, args []string) error {
			if err := checkUnblockTargets(args); err != nil {
				return err
			}
			resp, err := c.client().Unblock(cmd.Context(), api.UnblockRequest{Targets: args})
			if err != nil {
				return fmt.Errorf("unblock: %w", err)
			}
			if output.value == "json" {
				if err := writeJSON(c.stdout, resp); err != nil {
					return err
				}
			} else {
				for _, r := range resp.Removed {
					fmt.Fprintf(c.stdout, "unblocked %s\n", printable(shortPrefix(r)))
				}
			}
			if len(resp.NotFound) > 0 {
				return fmt.Errorf("not blocked: %s", printable(strings.Join(resp.NotFound, ", ")))
			}
			return nil
		}),
	}
	output = outputFlag(cmd)
	return cmd
}

// completeBlocked completes unblock's arguments with what is blocked now (as the addresses are
// written in list), asking the daemon briefly; no daemon, no suggestions.
func (c *cli) completeBlocked(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
	defer cancel()
	resp, err := c.client().List(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	sortEntries(resp.Entries, "address")
	var out []string
	for _, e := range resp.Entries {
		if t := shortPrefix(e.Prefix); !slices.Contains(args, t) {
			out = append(out, printable(t)+"\t"+printable(orDash(e.Reason)))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
