// Package blocklist reads and writes block lists: the seed's blocked.list lines
// ("198.18.0.7 20260101", the day the block was made) and plain IP/CIDR lines, with comments from
// '#' or ';' to the end of a line and blank lines ignored. The daemon's import and snarectl's
// check of a file before it is sent use the same Parser, so both name the same bad lines with
// the same messages.
package blocklist

import (
	"bufio"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/control/input"
)

// Line is one good line of a block list.
type Line struct {
	Number int // from 1
	Target string
	Prefix netip.Prefix
	Addr   netip.Addr // the address given, for a single-address line
	Single bool       // an address, not a CIDR
	// Date is the blocked.list date: the day the block was made, local time. Zero for plain
	// lines.
	Date time.Time
}

// MaxErrors bounds the bad lines reported for one list; the count of bad lines stays exact.
const MaxErrors = 1000

// MaxErrorText bounds the text of a bad line kept in a LineError: a line may be a megabyte long,
// and its start is enough to find it.
const MaxErrorText = 256

// Parser parses the lines of a list, numbering them from first on (a piece of a list read by
// Read starts at its own line). A Parser is for one goroutine.
type Parser struct {
	rules input.TargetRules
	today time.Time
	n     int // the number of the last line parsed
	errs  []api.LineError
	bad   int
	dates map[string]dateParse // blocked.list files hold few distinct dates
}

type dateParse struct {
	d   time.Time
	msg string
}

// NewParser returns a parser of lines numbered from first, checking targets against rules and
// dates against now (a block cannot have been made tomorrow).
func NewParser(rules input.TargetRules, now time.Time, first int) *Parser {
	return &Parser{rules: rules, today: now.Local(), n: first - 1, dates: map[string]dateParse{}}
}

// Errors are the first MaxErrors bad lines, in order.
func (p *Parser) Errors() []api.LineError { return p.errs }

// Bad is the number of bad lines.
func (p *Parser) Bad() int { return p.bad }

// Fail counts a line as bad for msg: a parsed line its user refuses (an allowlisted target).
func (p *Parser) Fail(line int, text, msg string) {
	p.bad++
	if len(p.errs) < MaxErrors {
		p.errs = append(p.errs, api.LineError{Line: line, Text: strings.Clone(text[:min(len(text), MaxErrorText)]), Error: msg})
	}
}

// Parse parses the whole lines of text (the last one may lack its newline) and calls fn with
// each good one. Line's strings are views of text.
func (p *Parser) Parse(text string, fn func(Line)) {
	for len(text) > 0 {
		raw := text
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			raw, text = text[:i], text[i+1:]
		} else {
			text = ""
		}
		p.n++
		p.line(raw, fn)
	}
}

func isSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\r' || b == '\v' || b == '\f' }

func (p *Parser) line(raw string, fn func(Line)) {
	n := p.n
	raw = strings.TrimSuffix(raw, "\r")
	text := raw
	for _, c := range []byte{'#', ';'} { // two byte scans cost less than one IndexAny
		if i := strings.IndexByte(text, c); i >= 0 {
			text = text[:i]
		}
	}
	var fields [3]string
	nf := 0
	for i := 0; i < len(text); {
		if isSpace(text[i]) {
			i++
			continue
		}
		j := i
		for j < len(text) && !isSpace(text[j]) {
			j++
		}
		if nf < len(fields) {
			fields[nf] = text[i:j]
		}
		nf++
		i = j
	}
	if nf == 0 {
		return
	}
	if nf > 2 {
		p.Fail(n, raw, fmt.Sprintf("%d fields: want \"ADDRESS\" or \"ADDRESS YYYYMMDD\"", nf))
		return
	}
	target := fields[0]
	pfx, addr, err := input.ParseTargetAddr(target, p.rules)
	if err != nil {
		p.Fail(n, raw, err.Error())
		return
	}
	l := Line{Number: n, Target: target, Prefix: pfx, Addr: addr, Single: addr.IsValid()}
	if nf == 2 {
		dp, ok := p.dates[fields[1]]
		if !ok {
			d, derr := time.ParseInLocation("20060102", fields[1], time.Local)
			switch {
			case derr != nil || len(fields[1]) != 8:
				dp.msg = fmt.Sprintf("%s is not a date in YYYYMMDD form", input.QuoteInput(fields[1]))
			case d.After(p.today):
				dp.msg = fmt.Sprintf("date %s is in the future", fields[1])
			default:
				dp.d = d
			}
			p.dates[strings.Clone(fields[1])] = dp
		}
		if dp.msg != "" {
			p.Fail(n, raw, dp.msg)
			return
		}
		l.Date = dp.d
	}
	fn(l)
}

// Formats a list is written in.
const (
	FormatBlockedList = "blocked-list"
	FormatPlain       = "plain"
)

// WriteLine writes one block in format: blocked-list is "ADDRESS YYYYMMDD" with the day the block
// was made (as the seed's scripts wrote it); plain is the address or CIDR alone. Single addresses
// are written without their /32 (/128), so the output imports again as it is.
func WriteLine(w *bufio.Writer, format string, p netip.Prefix, made time.Time) error {
	if p.IsSingleIP() {
		w.WriteString(p.Addr().String())
	} else {
		w.WriteString(p.String())
	}
	if format == FormatBlockedList {
		w.WriteByte(' ')
		w.WriteString(made.Local().Format("20060102"))
	}
	return w.WriteByte('\n')
}
