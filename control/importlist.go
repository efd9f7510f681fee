package control

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/snare-dev/snare/control/input"

	"github.com/snare-dev/snare/control/api"
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
func ParseBlockList(content string, rules input.TargetRules, now time.Time) (good []ImportLine, errs []api.LineError, bad int) {
	good = make([]ImportLine, 0, strings.Count(content, "\n")+1)
	p := newListParser(rules, now)
	p.chunk(content, func(l ImportLine) { good = append(good, l) })
	return good, p.errs, p.bad
}

// pieceSize is how much of a list readPieces reads at a time.
const pieceSize = 256 << 10

// maxListLine is the longest line readPieces takes (1 MB, as snarectl's check): a body of one
// endless line would otherwise grow its buffer up to the request limit.
const maxListLine = 1 << 20

// readPieces reads r in pieces of whole lines and calls parse for each with the piece's text and
// the number of its first line (from 1). With workers > 1 the pieces are parsed on that many
// goroutines at once, while the next ones are read; parse then runs concurrently with itself.
// room, if not nil, is called on the reading goroutine, in order, with each piece's first line
// and line count before the piece is parsed: where a parser can put what it finds (an error
// stops the read and is returned). The text is a view of a buffer that is reused once parse
// returns. It returns how many lines r held.
func readPieces(r io.Reader, workers int, room func(first, lines int) error, parse func(text string, first int)) (int, error) {
	free := make(chan []byte, workers+1)
	for range workers + 1 {
		free <- make([]byte, pieceSize)
	}
	type piece struct {
		buf         []byte
		size, first int
	}
	work := make(chan piece)
	var wg sync.WaitGroup
	if workers > 1 {
		for range workers {
			wg.Go(func() {
				for p := range work {
					parse(unsafe.String(&p.buf[0], p.size), p.first)
					free <- p.buf
				}
			})
		}
	}
	buf, n, line := <-free, 0, 1 // n: bytes in buf, the start of a line cut by the last read first
	for {
		var rerr error
		for n < len(buf) && rerr == nil {
			var m int
			m, rerr = r.Read(buf[n:])
			n += m
		}
		last := rerr != nil
		cut := n
		if !last {
			cut = bytes.LastIndexByte(buf[:n], '\n') + 1
			if cut == 0 { // one line fills the buffer: make room for the rest of it
				if len(buf) >= maxListLine {
					close(work)
					wg.Wait()
					return line - 1, userErrorf("line %d is longer than %d bytes: not a block list", line, maxListLine)
				}
				buf = append(buf, make([]byte, len(buf))...)
				continue
			}
		}
		lines := bytes.Count(buf[:cut], []byte{'\n'})
		if cut > 0 && buf[cut-1] != '\n' {
			lines++ // the list's last line, without its newline
		}
		var next []byte
		if !last {
			next = <-free
			for len(next) < n-cut {
				next = append(next, make([]byte, len(next))...)
			}
			copy(next, buf[cut:n])
		}
		if room != nil {
			if err := room(line, lines); err != nil {
				close(work)
				wg.Wait()
				return line - 1, err
			}
		}
		switch {
		case cut == 0:
			free <- buf
		case workers > 1:
			work <- piece{buf, cut, line}
		default:
			parse(unsafe.String(&buf[0], cut), line)
			free <- buf
		}
		line += lines
		if last {
			close(work)
			wg.Wait()
			if rerr == io.EOF { // not io.ErrUnexpectedEOF: that is an upload cut off
				return line - 1, nil
			}
			return line - 1, fmt.Errorf("read line %d: %w", line, rerr)
		}
		buf, n = next, n-cut
	}
}

// listParser parses block-list lines, numbering them across chunks.
type listParser struct {
	rules input.TargetRules
	today time.Time
	n     int
	errs  []api.LineError
	bad   int
	dates map[string]dateParse // blocked.list files hold few distinct dates
}

type dateParse struct {
	d   time.Time
	msg string
}

func newListParser(rules input.TargetRules, now time.Time) *listParser {
	return &listParser{rules: rules, today: now.Local(), dates: map[string]dateParse{}}
}

func (p *listParser) fail(line int, text, msg string) {
	p.bad++
	if len(p.errs) < maxImportLineErrors {
		// A line may be a megabyte long; its start is enough to find it.
		p.errs = append(p.errs, api.LineError{Line: line, Text: strings.Clone(text[:min(len(text), MaxLineErrorText)]), Error: msg})
	}
}

// MaxLineErrorText bounds the text of a bad line kept in a LineError.
const MaxLineErrorText = 256

// chunk parses whole lines of content (the last one may lack its newline).
func (p *listParser) chunk(content string, fn func(ImportLine)) {
	for len(content) > 0 {
		raw := content
		if i := strings.IndexByte(content, '\n'); i >= 0 {
			raw, content = content[:i], content[i+1:]
		} else {
			content = ""
		}
		p.n++
		p.line(raw, fn)
	}
}

func isListSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\r' || b == '\v' || b == '\f' }

func (p *listParser) line(raw string, fn func(ImportLine)) {
	n := p.n
	raw = strings.TrimSuffix(raw, "\r")
	text := raw
	if i := strings.IndexAny(text, "#;"); i >= 0 {
		text = text[:i]
	}
	var fields [3]string
	nf := 0
	for i := 0; i < len(text); {
		if isListSpace(text[i]) {
			i++
			continue
		}
		j := i
		for j < len(text) && !isListSpace(text[j]) {
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
		p.fail(n, raw, fmt.Sprintf("%d fields: want \"ADDRESS\" or \"ADDRESS YYYYMMDD\"", nf))
		return
	}
	target := fields[0]
	pfx, addr, perr := input.ParseTargetAddr(target, p.rules)
	if perr != nil {
		p.fail(n, raw, perr.Error())
		return
	}
	il := ImportLine{Line: n, Target: target, Prefix: pfx, Addr: addr, Single: addr.IsValid()}
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
			p.fail(n, raw, dp.msg)
			return
		}
		il.Date = dp.d
	}
	fn(il)
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
