package main

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/snare-dev/snare/control"
)

func (c *cli) listCommand() *cobra.Command {
	var output, sortBy *choice
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List active blocks",
		Long: `List every active block: address or CIDR, reason, origin (manual, trap, import), when it was
created and when it expires, how many packets it dropped (hits) and when the last one came.

--sort orders the rows: address (default), hits (most first), expires (soonest first,
permanent last) or created (newest first). -o json prints the daemon's answer
({"entries": [...]}, times in RFC 3339) in the same order, for scripts.`,
		Example: `  snarectl list
  snarectl list --sort hits
  snarectl list -o json | jq -r '.entries[].prefix'`,
		Args: noArgs,
		RunE: c.verb(func(cmd *cobra.Command, _ []string) error {
			resp, err := c.client().List(cmd.Context())
			if err != nil {
				return fmt.Errorf("list: %w", err)
			}
			sortEntries(resp.Entries, sortBy.value)
			if output.value == "json" {
				return writeJSON(c.stdout, resp)
			}
			return c.entryTable(resp.Entries)
		}),
	}
	output = outputFlag(cmd)
	sortBy = choiceFlag(cmd, "sort", "", "row order: address, hits, expires or created", "address", "address", "hits", "expires", "created")
	return cmd
}

func (c *cli) topCommand() *cobra.Command {
	var output *choice
	var limit int
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Show the blocked sources still hitting hardest",
		Long: `Show the blocked sources that are still sending: entries with at least one dropped packet,
most hits first (ties: most recent hit first), at most --limit rows (0: all).`,
		Example: `  snarectl top
  snarectl top -n 50 -o json`,
		Args: noArgs,
		RunE: c.verb(func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return inputf("bad --limit %d: must be 0 (all) or more", limit)
			}
			resp, err := c.client().List(cmd.Context())
			if err != nil {
				return fmt.Errorf("top: %w", err)
			}
			hit := slices.DeleteFunc(resp.Entries, func(e control.Entry) bool { return e.Hits == 0 })
			sortEntries(hit, "hits")
			if limit > 0 && len(hit) > limit {
				hit = hit[:limit]
			}
			resp.Entries = hit
			if output.value == "json" {
				return writeJSON(c.stdout, resp)
			}
			if len(hit) == 0 {
				fmt.Fprintln(c.stdout, "no blocked source has sent anything since it was blocked")
				return nil
			}
			return c.entryTable(hit)
		}),
	}
	output = outputFlag(cmd)
	cmd.Flags().IntVarP(&limit, "limit", "n", 10, "show at most this many sources (0: all)")
	return cmd
}

// entryTable prints entries as the list table.
func (c *cli) entryTable(entries []control.Entry) error {
	now := c.now()
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "ADDRESS\tREASON\tORIGIN\tCREATED\tEXPIRES\tHITS\tLAST HIT")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n",
			shortPrefix(e.Prefix), orDash(e.Reason), orDash(e.Origin), relative(now, e.Created),
			expiresText(e, now), e.Hits, relative(now, e.LastHit))
	}
	return tw.Flush()
}

// sortEntries orders entries for list and top; every order falls back to the address so the
// output is stable.
func sortEntries(entries []control.Entry, by string) {
	byAddr := func(a, b control.Entry) int { return comparePrefixes(a.Prefix, b.Prefix) }
	var primary func(a, b control.Entry) int
	switch by {
	case "hits":
		primary = func(a, b control.Entry) int {
			return cmp.Or(cmp.Compare(b.Hits, a.Hits), b.LastHit.Compare(a.LastHit))
		}
	case "expires":
		primary = func(a, b control.Entry) int {
			switch {
			case a.Permanent != b.Permanent:
				return boolOrder(a.Permanent)
			case a.Permanent:
				return 0
			}
			return a.Expires.Compare(b.Expires)
		}
	case "created":
		primary = func(a, b control.Entry) int { return b.Created.Compare(a.Created) }
	default:
		primary = func(control.Entry, control.Entry) int { return 0 }
	}
	slices.SortStableFunc(entries, func(a, b control.Entry) int { return cmp.Or(primary(a, b), byAddr(a, b)) })
}

// boolOrder puts false before true.
func boolOrder(aTrue bool) int {
	if aTrue {
		return 1
	}
	return -1
}

// comparePrefixes orders IPv4 before IPv6, then by address, then by length; unparsable strings
// (which the daemon should never send) sort last, by text.
func comparePrefixes(a, b string) int {
	pa, errA := netip.ParsePrefix(a)
	pb, errB := netip.ParsePrefix(b)
	switch {
	case errA != nil && errB != nil:
		return cmp.Compare(a, b)
	case errA != nil:
		return 1
	case errB != nil:
		return -1
	}
	return cmp.Or(pa.Addr().Compare(pb.Addr()), cmp.Compare(pa.Bits(), pb.Bits()))
}

// countText is n with thousands separators: 1234567 → "1,234,567".
func countText(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
