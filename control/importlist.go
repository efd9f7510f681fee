package control

import (
	"bufio"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// ImportLine is one good line of a block list.
type ImportLine struct {
	Line   int
	Target string
	Prefix netip.Prefix
	Addr   netip.Addr // the address given, for a single-address line
	Single bool       // an address, not a CIDR
	// Date is the blocked.list date ("IP YYYYMMDD"): the day the block was made, local time.
	// Zero for plain lines.
	Date time.Time
}

// maxImportLineErrors bounds the errors reported for one import; the count of bad lines stays exact.
const maxImportLineErrors = 1000

// ParseBlockList parses a block list: the seed's blocked.list lines ("198.18.0.7 20260101") or
// plain IP/CIDR lines, with comments from '#' or ';' to the end of a line and blank lines
// ignored. It returns the good lines and one LineError per bad line (line numbers from 1),
// plus the total count of bad lines. Dates in the future are bad (a block cannot have been made
// tomorrow); so are prefixes ParseTarget refuses.
func ParseBlockList(content string, rules TargetRules, now time.Time) (good []ImportLine, errs []LineError, bad int) {
	good = make([]ImportLine, 0, strings.Count(content, "\n")+1)
	n := 0
	fail := func(line int, text, msg string) {
		bad++
		if len(errs) < maxImportLineErrors {
			errs = append(errs, LineError{Line: line, Text: text, Error: msg})
		}
	}
	today := now.Local()
	for len(content) > 0 {
		n++
		raw := content
		if i := strings.IndexByte(content, '\n'); i >= 0 {
			raw, content = content[:i], content[i+1:]
		} else {
			content = ""
		}
		raw = strings.TrimSuffix(raw, "\r")
		text := raw
		if i := strings.IndexAny(text, "#;"); i >= 0 {
			text = text[:i]
		}
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		if len(fields) > 2 {
			fail(n, raw, fmt.Sprintf("%d fields: want \"ADDRESS\" or \"ADDRESS YYYYMMDD\"", len(fields)))
			continue
		}
		target := fields[0]
		p, perr := ParseTarget(target, rules)
		if perr != nil {
			fail(n, raw, perr.Error())
			continue
		}
		il := ImportLine{Line: n, Target: target, Prefix: p, Single: !strings.Contains(target, "/")}
		if il.Single {
			il.Addr = netip.MustParseAddr(target).Unmap()
		}
		if len(fields) == 2 {
			d, derr := time.ParseInLocation("20060102", fields[1], time.Local)
			if derr != nil || len(fields[1]) != 8 {
				fail(n, raw, fmt.Sprintf("%q is not a date in YYYYMMDD form", fields[1]))
				continue
			}
			if d.After(today) {
				fail(n, raw, fmt.Sprintf("date %s is in the future", fields[1]))
				continue
			}
			il.Date = d
		}
		good = append(good, il)
	}
	return good, errs, bad
}

// Export formats.
const (
	FormatBlockedList = "blocked-list"
	FormatPlain       = "plain"
)

// exportLine writes one rule in format: blocked-list is "ADDRESS YYYYMMDD" with the day the block
// was made (as the seed's scripts wrote it); plain is the address or CIDR alone. Single addresses
// are written without their /32 (/128), so the output imports again as-is.
func exportLine(w *bufio.Writer, format string, r Rule) error {
	p := r.Prefix
	if p.IsSingleIP() {
		w.WriteString(p.Addr().String())
	} else {
		w.WriteString(p.String())
	}
	if format == FormatBlockedList {
		w.WriteByte(' ')
		w.WriteString(r.Created.Local().Format("20060102"))
	}
	return w.WriteByte('\n')
}
