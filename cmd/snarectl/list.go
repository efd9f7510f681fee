package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control/api"

	"github.com/spf13/cobra"
)

func (c *cli) listCommand() *cobra.Command {
	var output, sortBy *choice
	cmd := &cobra.Command{
		Use:     "list [ADDR|CIDR...]",
		Aliases: []string{"ls"},
		Short:   "List active blocks",
		Long: `List every active block: address or CIDR, reason, origin (manual, trap, import), when it was
created and when it expires, how many packets it dropped (hits) and when the last one came.
Hits are counted without locking on the XDP fast path: when several CPUs drop packets from
the same source at the same instant a few may go uncounted (the drop totals in status are
exact).

With addresses or CIDRs, list only the blocks that cover or overlap them: "is this address
blocked, and by what?" (a single IPv6 address is shown blocked by its /64).

--sort orders the rows: address (default), hits (most first), expires (soonest first,
permanent last) or created (newest first). -o json prints the daemon's answer
({"entries": [...]}, times in RFC 3339) in the same order, for scripts.`,
		Example: `  snarectl list
  snarectl list --sort hits
  snarectl list 198.18.0.7 2001:db8::1
  snarectl list -o json | jq -r '.entries[].prefix'`,
		Args: cobra.ArbitraryArgs,
		RunE: c.verb(func(cmd *cobra.Command, args []string) error {
			var only []netip.Prefix
			for _, a := range args {
				p, err := input.ParseAllowPrefix(a)
				if err != nil {
					return inputf("bad address to look for: %v", err)
				}
				only = append(only, p)
			}
			resp, err := c.client().List(cmd.Context())
			if err != nil {
				return fmt.Errorf("list: %w", err)
			}
			if len(only) > 0 {
				resp.Entries = slices.DeleteFunc(resp.Entries, func(e api.Entry) bool {
					p, err := netip.ParsePrefix(e.Prefix)
					return err != nil || !slices.ContainsFunc(only, p.Overlaps)
				})
			}
			sortEntries(resp.Entries, sortBy.value)
			if output.value == "json" {
				return writeListJSON(c.stdout, resp.Entries)
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
			hit := slices.DeleteFunc(resp.Entries, func(e api.Entry) bool { return e.Hits == 0 })
			sortEntries(hit, "hits")
			if limit > 0 && len(hit) > limit {
				hit = hit[:limit]
			}
			resp.Entries = hit
			if output.value == "json" {
				return writeListJSON(c.stdout, resp.Entries)
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

// entryTable prints entries as the list table: the layout of newTable, but with the column
// widths measured in a first pass instead of tabwriter buffering every cell of a
// million-row list.
func (c *cli) entryTable(entries []api.Entry) error {
	now := c.now()
	header := []string{"ADDRESS", "REASON", "ORIGIN", "CREATED", "EXPIRES", "HITS", "LAST HIT"}
	var cells [7]string
	row := func(e *api.Entry) []string {
		cells = [7]string{printable(shortPrefix(e.Prefix)), printable(orDash(e.Reason)), printable(orDash(e.Origin)), relative(now, e.Created),
			expiresText(*e, now), strconv.FormatUint(e.Hits, 10), relative(now, e.LastHit)}
		return cells[:]
	}
	var width [6]int
	measure := func(cs []string) {
		for i := range width {
			width[i] = max(width[i], utf8.RuneCountInString(cs[i]))
		}
	}
	measure(header)
	for i := range entries {
		measure(row(&entries[i]))
	}
	bw := bufio.NewWriterSize(c.stdout, 256<<10)
	line := func(cs []string) {
		for i, s := range cs {
			bw.WriteString(s)
			if i < len(width) {
				for n := utf8.RuneCountInString(s); n < width[i]+2; n++ {
					bw.WriteByte(' ')
				}
			}
		}
		bw.WriteByte('\n')
	}
	line(header)
	for i := range entries {
		line(row(&entries[i]))
	}
	return bw.Flush()
}

// writeListJSON writes {"entries": [...]} exactly as writeJSON would, but entry by entry: a
// million entries are not first built into one buffer of a few hundred MB.
func writeListJSON(w io.Writer, entries []api.Entry) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	if len(entries) == 0 {
		bw.WriteString("{\n  \"entries\": []\n}\n")
		return bw.Flush()
	}
	bw.WriteString("{\n  \"entries\": [")
	for i := range entries {
		if i > 0 {
			bw.WriteByte(',')
		}
		bw.WriteString("\n    ")
		b, err := json.MarshalIndent(&entries[i], "    ", "  ")
		if err != nil {
			return err
		}
		if _, err := bw.Write(b); err != nil {
			return err
		}
	}
	bw.WriteString("\n  ]\n}\n")
	return bw.Flush()
}

// sortEntries orders entries for list and top; every order falls back to the address so the
// output is stable. Addresses are parsed once, not per comparison: lists can hold a million
// entries.
func sortEntries(entries []api.Entry, by string) {
	type keyed struct {
		api.Entry
		prefix netip.Prefix // invalid if the daemon sent something unparsable: sorts last
	}
	keys := make([]keyed, len(entries))
	for i, e := range entries {
		p, _ := netip.ParsePrefix(e.Prefix)
		keys[i] = keyed{e, p}
	}
	// IPv4 before IPv6, then by address, then by length.
	byAddr := func(a, b keyed) int {
		if !a.prefix.IsValid() || !b.prefix.IsValid() {
			return cmp.Or(cmp.Compare(boolInt(!a.prefix.IsValid()), boolInt(!b.prefix.IsValid())), cmp.Compare(a.Prefix, b.Prefix))
		}
		return cmp.Or(a.prefix.Addr().Compare(b.prefix.Addr()), cmp.Compare(a.prefix.Bits(), b.prefix.Bits()))
	}
	var primary func(a, b keyed) int
	switch by {
	case "hits":
		primary = func(a, b keyed) int {
			return cmp.Or(cmp.Compare(b.Hits, a.Hits), b.LastHit.Compare(a.LastHit))
		}
	case "expires":
		// Soonest first, permanent last.
		primary = func(a, b keyed) int {
			return cmp.Or(cmp.Compare(boolInt(a.Permanent), boolInt(b.Permanent)), a.Expires.Compare(b.Expires))
		}
	case "created":
		primary = func(a, b keyed) int { return b.Created.Compare(a.Created) }
	default:
		primary = func(keyed, keyed) int { return 0 }
	}
	order := func(a, b keyed) int { return cmp.Or(primary(a, b), byAddr(a, b)) }
	if slices.IsSortedFunc(keys, order) { // the daemon sends address order
		return
	}
	slices.SortFunc(keys, order)
	for i := range keys {
		entries[i] = keys[i].Entry
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// countText is n with thousands separators: 1234567 → "1,234,567".
func countText(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
