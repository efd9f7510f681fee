package main

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control/api"

	"github.com/spf13/cobra"
)

func (c *cli) importCommand() *cobra.Command {
	var ttl, reason string
	var skipBad bool
	cmd := &cobra.Command{
		Use:   "import FILE",
		Short: "Block every address in a block list file",
		Long: `Block every address or CIDR in FILE ('-' reads standard input). snarectl reads the file and
sends its content, so the daemon needs no access to it.

Two line formats are understood, mixed freely:

    198.18.0.7 20261120   the old blocked.list: the address and the day it was blocked
                          (YYYYMMDD); it expires at that day + TTL, skipped if already past
    198.18.0.0/24         a plain address or CIDR, blocked for the TTL from now

'#' and ';' start comments; blank lines are ignored.

The whole file is checked before anything is imported. A bad line (malformed address, prefix
out of range, 0.0.0.0/0 or ::/0, a link-local, multicast or loopback address, a bad date) is
reported with its line number and nothing is imported (exit code 2), unless --skip-bad is given:
then the good lines are imported and the bad ones listed.
--reason follows the rules of 'snarectl block --reason' (at most 256 bytes, no control characters).`,
		Example: `  snarectl import /var/lib/portsentry/blocked.list
  snarectl import bad-hosts.txt --ttl permanent --reason "abuse feed"
  curl -s https://example.org/feed.txt | snarectl import - --skip-bad`,
		Args: exactArgs(1, "FILE (or - for standard input)"),
		RunE: c.verb(func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("ttl") {
				if err := checkTTL(ttl); err != nil {
					return err
				}
			}
			if err := input.CheckReason(reason); err != nil {
				return inputf("bad --reason: %v", err)
			}
			name, content, err := c.readInput(args[0])
			if err != nil {
				return err
			}
			// The name goes into messages, events and the default reason: a file name may hold
			// anything but '/' and NUL, which the daemon would refuse.
			name = printable(name)
			// The daemon checks the whole list with the same parser before it imports anything,
			// so snarectl checks it only when the import did not go through: then its own check
			// tells a bad file (exit 2, also with snared unreachable) from a refusal that depends
			// on the daemon's configuration. Checking every file first cost a million-line
			// import a fifth of a second of the two CPUs the daemon needs.
			resp, err := c.client().ImportStream(cmd.Context(), bytes.NewReader(content), int64(len(content)), api.ImportRequest{
				TTL: ttl, Reason: reason, SkipBad: skipBad, Name: name,
			})
			if err != nil || len(resp.Errors) > 0 && !skipBad {
				errs, bad, cerr := checkBlockList(bytes.NewReader(content), c.now().In(c.loc))
				if cerr != nil {
					return inputf("%s: %v", name, cerr)
				}
				if bad > 0 && !skipBad {
					printLineErrors(c.stderr, name, errs, bad)
					return inputf("%s: %d bad %s, nothing imported (fix %s, or use --skip-bad to import the rest)", name, bad, plural(bad, "line", "lines"), plural(bad, "it", "them"))
				}
			}
			if err != nil {
				return fmt.Errorf("import: %w", err) // snared's messages name the file
			}
			printLineErrors(c.stderr, name, resp.Errors, resp.Skipped)
			if len(resp.Errors) > 0 && !skipBad {
				// The daemon found lines its configuration refuses (e.g. a prefix wider than
				// block.min_prefix_v4): it imported nothing.
				return fmt.Errorf("import %s: the daemon refused %d %s, nothing imported", name, len(resp.Errors), plural(len(resp.Errors), "line", "lines"))
			}
			fmt.Fprintf(c.stdout, "imported %d %s from %s", resp.Imported, plural(resp.Imported, "entry", "entries"), name)
			if resp.Expired > 0 {
				fmt.Fprintf(c.stdout, ", %d already expired", resp.Expired)
			}
			if resp.Skipped > 0 {
				fmt.Fprintf(c.stdout, ", %d bad %s skipped", resp.Skipped, plural(resp.Skipped, "line", "lines"))
			}
			fmt.Fprintln(c.stdout)
			return nil
		}),
	}
	cmd.Flags().StringVar(&ttl, "ttl", "", "block `DURATION` for every entry (5d, 12h, permanent; default: the daemon's block.ttl)")
	cmd.Flags().StringVar(&reason, "reason", "", "reason recorded with every entry, at most 256 bytes, no control characters (default: the daemon's, naming the file)")
	cmd.Flags().BoolVar(&skipBad, "skip-bad", false, "import the good lines even if some are bad (the bad ones are listed)")
	return cmd
}

// readInput reads a whole file, or standard input for "-".
func (c *cli) readInput(path string) (name string, content []byte, err error) {
	if path == "-" {
		b, err := io.ReadAll(c.stdin)
		if err != nil {
			return "", nil, inputf("read standard input: %v", err)
		}
		return "<stdin>", b, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, inputf("read block list: %v", err)
	}
	return path, b, nil
}

func (c *cli) exportCommand() *cobra.Command {
	var format *choice
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write the block list to standard output",
		Long: `Write every active block to standard output, in a form 'snarectl import' (and the old
scripts) read back:

    blocked-list   "ADDRESS YYYYMMDD", the day each block was made (the old blocked.list)
    plain          one address or CIDR per line`,
		Example: `  snarectl export > blocked.list
  snarectl export --format plain | wc -l`,
		Args: noArgs,
		RunE: c.verb(func(cmd *cobra.Command, _ []string) error {
			if err := c.client().Export(cmd.Context(), format.value, c.stdout); err != nil {
				return fmt.Errorf("export: %w", err)
			}
			return nil
		}),
	}
	format = choiceFlag(cmd, "format", "", "output format: blocked-list or plain", "blocked-list", "blocked-list", "plain")
	return cmd
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
