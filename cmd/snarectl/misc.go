package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func (c *cli) completionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "Print a shell completion script",
		Long: `Print the completion script for a shell. Install it once:

    bash   snarectl completion bash > /etc/bash_completion.d/snarectl
    zsh    snarectl completion zsh > "${fpath[1]}/_snarectl"
    fish   snarectl completion fish > ~/.config/fish/completions/snarectl.fish`,
		Example:   "  source <(snarectl completion bash)",
		ValidArgs: []string{"bash", "zsh", "fish"},
		Args:      exactArgs(1, "shell (bash, zsh or fish)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(c.stdout, true)
			case "zsh":
				return root.GenZshCompletion(c.stdout)
			case "fish":
				return root.GenFishCompletion(c.stdout, true)
			}
			return usagef("unknown shell %q: want bash, zsh or fish", args[0])
		},
	}
}

// version is set at build time (-ldflags "-X main.version=v1.2.3"); otherwise the module
// version from the build info is used.
var version = ""

func snarectlVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func (c *cli) versionCommand() *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of snarectl and of the running snared",
		Long: `Print snarectl's version, then the running daemon's (unless --client). A daemon that cannot
be reached is reported, not an error: the exit code is 0 either way.`,
		Example: "  snarectl version\n  snarectl version --client",
		Args:    noArgs,
		RunE: c.verb(func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(c.stdout, "snarectl %s (%s, %s/%s)\n", snarectlVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			if clientOnly {
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			st, err := c.client().Status(ctx)
			if err != nil {
				fmt.Fprintf(c.stdout, "snared   unknown (%v)\n", err)
				return nil
			}
			fmt.Fprintf(c.stdout, "snared   %s\n", orDash(st.Version))
			return nil
		}),
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print snarectl's version only")
	return cmd
}

func (c *cli) genDocsCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "gen-docs [DIR]",
		Short:  "Write markdown and man pages for snarectl into DIR (default docs)",
		Hidden: true,
		Args:   cobra.MaximumNArgs(1),
		RunE: c.verb(func(cmd *cobra.Command, args []string) error {
			dir := "docs"
			if len(args) == 1 {
				dir = args[0]
			}
			return genDocs(cmd.Root(), dir)
		}),
	}
}

// genDocs writes DIR/snarectl*.md and DIR/man/snarectl*.1. The man pages' date comes from
// SOURCE_DATE_EPOCH when set (reproducible builds), else today.
func genDocs(root *cobra.Command, dir string) error {
	root.DisableAutoGenTag = true // no generation date in the markdown: regenerating changes nothing
	man := filepath.Join(dir, "man")
	if err := os.MkdirAll(man, 0o755); err != nil {
		return fmt.Errorf("create docs directory: %w", err)
	}
	if err := doc.GenMarkdownTree(root, dir); err != nil {
		return fmt.Errorf("write markdown docs: %w", err)
	}
	header := &doc.GenManHeader{Section: "1", Source: "snare", Manual: "snare manual"}
	if err := doc.GenManTree(root, header, man); err != nil {
		return fmt.Errorf("write man pages: %w", err)
	}
	return nil
}
