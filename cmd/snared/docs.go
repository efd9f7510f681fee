package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// synopsis and description are shared by the markdown page and the man page.
const (
	synopsis    = "snared [flags]\nsnared uninstall [flags]"
	description = `snared is snare's daemon. It loads snare's XDP program and attaches it to the configured
interfaces (native XDP where the driver supports it, else generic), or, where XDP cannot run,
enforces the same blocks with ipset and iptables. It pins its maps and links under --bpffs, so
blocks keep being enforced while it restarts or upgrades; keeps every block in a durable store
under --state-dir and restores it on start (deadlines hold across reboots); blocks scanners that
probe trap ports in the kernel itself; expires blocks on time; logs every event as JSON lines;
serves its API on --socket (for snarectl) and Prometheus metrics on metrics.listen.

Every flag is also a config key and a SNARE_* environment variable (shown in brackets);
precedence: flags, then environment, then drop-ins in --conf-dir, then --config, then the
embedded defaults. With no config file at all the embedded defaults run a sensible daemon.

"snared uninstall" removes the XDP program from every interface, the pins, and snare's iptables
chains and ipset sets; the store in --state-dir is kept.

A damaged store (a failing disk, a stray write) is found by a check of every page and record at
start: snared then refuses to start, with one message naming the file and the ways to recover,
and the blocks already in the kernel stay enforced. "snared --recover-store" (same flags, snared
stopped) copies every readable entry into a fresh store, keeps the damaged file as
snare.db.corrupt-TIME, prints what was saved and what was lost, and exits; on a sound store it
changes nothing.

Signals: SIGTERM and SIGINT stop the daemon and leave enforcement in place; SIGHUP reloads the
configuration and reopens the event log.

Exit codes: 0 success, 1 error (bad configuration, attach failure, another snared on the same
--bpffs, a damaged store), 2 usage error.`
)

// genDocs writes snared's reference page (markdown) and man page from its flag definitions.
func genDocs(dir string) error {
	var o options
	fs := newFlagSet(&o, io.Discard)
	flags := fs.FlagUsages()
	md := fmt.Sprintf("## snared\n\nsnare's daemon: XDP (or ipset + iptables) enforcement, durable blocks, trap ports, API and metrics.\n\n### Synopsis\n\n```\n%s\n```\n\n%s\n\n### Options\n\n```\n%s```\n\n### See also\n\n* [snarectl](snarectl.md)\n* [operations](operations.md)\n",
		synopsis, description, flags)
	var man strings.Builder
	man.WriteString(".TH SNARED 8 \"\" \"snare\" \"snare manual\"\n.SH NAME\nsnared \\- snare's daemon: drop port scanners and abusive sources in XDP\n.SH SYNOPSIS\n.nf\n")
	man.WriteString(synopsis + "\n.fi\n.SH DESCRIPTION\n")
	for _, para := range strings.Split(description, "\n\n") {
		man.WriteString(".PP\n" + manEscape(strings.ReplaceAll(para, "\n", " ")) + "\n")
	}
	man.WriteString(".SH OPTIONS\n.nf\n" + manEscape(flags) + ".fi\n.SH SEE ALSO\nsnarectl(1)\n")
	if err := os.MkdirAll(filepath.Join(dir, "man"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "snared.md"), []byte(md), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "man", "snared.8"), []byte(man.String()), 0o644)
}

// manEscape keeps roff from reading text as requests or escapes.
func manEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "\n.", "\n\\&.")
	s = strings.ReplaceAll(s, "\n'", "\n\\&'")
	return strings.ReplaceAll(s, "-", `\-`)
}
