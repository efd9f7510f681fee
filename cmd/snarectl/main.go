// Command snarectl manages snared, the snare daemon, over its Unix socket: block and unblock
// addresses, list blocks, show status and events, manage the allowlist, import and export
// block lists.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/snare-dev/snare/control/api"

	"github.com/spf13/cobra"
)

// Exit codes, documented in the root command's help.
const (
	exitOK          = 0
	exitError       = 1 // the daemon refused the request or failed
	exitUsage       = 2 // bad command line or input: unknown command or flag, bad address, TTL or file
	exitUnreachable = 3 // snared cannot be reached on its socket
)

const defaultSocket = "/run/snare/snare.sock"

// env is everything snarectl takes from the outside world, so that tests run every verb
// in-process with their own streams, environment and clock.
type env struct {
	ctx            context.Context
	args           []string
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
	loc            *time.Location // times in tables are shown in this zone
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(env{
		ctx:    ctx,
		args:   os.Args[1:],
		stdin:  os.Stdin,
		stdout: os.Stdout,
		stderr: os.Stderr,
		getenv: os.Getenv,
		now:    time.Now,
		loc:    time.Local,
	})
	stop()
	os.Exit(code)
}

// usageError is a mistake in the command line itself (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// inputError is bad input found by snarectl itself, before anything changes: a malformed
// address or TTL, an unreadable or broken import file (exit code 2, like a usage error, but
// without the pointer to --help: the message already names the bad value).
type inputError struct{ err error }

func (e inputError) Error() string { return e.err.Error() }
func (e inputError) Unwrap() error { return e.err }

func inputf(format string, a ...any) error { return inputError{fmt.Errorf(format, a...)} }

// run executes one snarectl command line and returns its exit code. Errors are printed as a
// single "Error: ..." line on stderr.
func run(e env) int {
	c := &cli{env: e}
	root := c.rootCommand()
	root.SetArgs(e.args)
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)

	cmd, err := root.ExecuteContextC(e.ctx)
	if err == nil {
		return exitOK
	}
	code := exitCode(err, c.started)
	msg := err.Error()
	var ie inputError
	if code == exitUsage && cmd != nil && !errors.As(err, &ie) {
		msg += fmt.Sprintf(" (see '%s --help')", cmd.CommandPath())
	}
	// The message may quote the daemon or a file name: escaped, but its own lines kept.
	lines := strings.Split(msg, "\n")
	for i, l := range lines {
		lines[i] = printable(l)
	}
	fmt.Fprintln(e.stderr, "Error:", strings.Join(lines, "\n"))
	return code
}

// exitCode classifies err. Everything cobra rejects before a verb starts (unknown command or
// flag, bad flag value, wrong number of arguments) is a usage error.
func exitCode(err error, verbStarted bool) int {
	var ue usageError
	var ie inputError
	switch {
	case errors.As(err, &ue) || errors.As(err, &ie) || !verbStarted:
		return exitUsage
	case errors.Is(err, api.ErrUnreachable):
		return exitUnreachable
	}
	return exitError
}

// cli holds the state of one run: the environment and the global flags.
type cli struct {
	env
	socket  string
	root    *cobra.Command
	started bool // a verb's RunE began: errors from here on are not usage errors
}

// socketPath is --socket if given, else $SNARE_SOCKET, else the default. The environment is
// read here rather than as the flag's default so that help and generated docs show the
// real default.
func (c *cli) socketPath() string {
	if f := c.root.PersistentFlags().Lookup("socket"); f != nil && f.Changed {
		return c.socket
	}
	if s := c.getenv("SNARE_SOCKET"); s != "" {
		return s
	}
	return c.socket
}

func (c *cli) client() *api.Client { return api.NewClient(c.socketPath()) }

// verb wraps a RunE so that exitCode knows argument parsing is over.
func (c *cli) verb(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c.started = true
		return fn(cmd, args)
	}
}

const rootLong = `snarectl manages snared, the snare daemon, over its Unix socket.

snared drops packets from blocked sources in XDP (or iptables where XDP cannot run), blocks
port scanners when they touch trap ports, and expires blocks by themselves. snarectl blocks and
unblocks addresses by hand, shows what is blocked and what is still hitting, and moves block
lists in and out.

The socket is --socket, else $SNARE_SOCKET, else ` + defaultSocket + `.

Durations: Go durations plus days, e.g. 90m, 12h, 5d, 1d12h; TTLs also accept "permanent".

Exit codes:

    0  success
    1  the daemon refused the request (e.g. an allowlisted target) or failed
    2  bad command line or input, refused before anything changes: unknown command or
       flag, missing or extra arguments, a malformed address or CIDR, a prefix out of
       range, 0.0.0.0/0 or ::/0, a link-local, multicast or loopback address, a bad or
       negative TTL, a --reason over 256 bytes or with control characters, an unreadable
       import file or one with bad lines (refused whole, each bad line named)
    3  snared cannot be reached (socket missing, nothing listening, permission denied)`

func (c *cli) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "snarectl",
		Short: "Manage snared, the snare port-scan blocker",
		Long:  rootLong,
		Example: `  snarectl block 198.18.0.7 2001:db8::/64 --ttl 12h --reason "ssh brute force"
  snarectl list --sort hits
  snarectl status -o json
  SNARE_SOCKET=/tmp/snare.sock snarectl events -f`,
		Version:           snarectlVersion(),
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		Args:              cobra.ArbitraryArgs,
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q", args[0])
			}
			return usagef("missing command")
		},
	}
	c.root = root
	root.PersistentFlags().StringVar(&c.socket, "socket", defaultSocket, "`path` of snared's Unix socket (env SNARE_SOCKET)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	root.AddCommand(
		c.blockCommand(),
		c.unblockCommand(),
		c.listCommand(),
		c.topCommand(),
		c.statusCommand(),
		c.allowCommand(),
		c.importCommand(),
		c.exportCommand(),
		c.eventsCommand(),
		c.fleetCommand(),
		c.completionCommand(),
		c.versionCommand(),
		c.genDocsCommand(),
	)
	return root
}

// Argument checks that report usage errors.

func minArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) < n {
			return usagef("missing %s", what)
		}
		return nil
	}
}

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		switch {
		case len(args) < n:
			return usagef("missing %s", what)
		case len(args) > n:
			return usagef("too many arguments: want %s, got %q", what, args)
		}
		return nil
	}
}

func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	return nil
}
