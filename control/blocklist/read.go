package blocklist

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"unsafe"
)

// pieceSize is how much of a list Read reads at a time.
const pieceSize = 256 << 10

// maxListLine is the longest line Read takes (1 MB): a body of one endless line would otherwise
// grow its buffer up to the request limit.
const maxListLine = 1 << 20

// ErrNotList is what Read returns (wrapped, naming the line) for a line longer than a block list
// ever holds.
var ErrNotList = errors.New("not a block list")

// Read reads r in pieces of whole lines and calls parse for each with the piece's text and
// the number of its first line (from 1). With workers > 1 the pieces are parsed on that many
// goroutines at once, while the next ones are read; parse then runs concurrently with itself.
// reserve, if not nil, is called on the reading goroutine, in order, with each piece's first
// line and line count before the piece is parsed, to make room for what a parser finds (an error
// stops the read and is returned). The text is a view of a buffer that is reused once parse
// returns (a view, not a copy: no string per piece). It returns how many lines r held. Its
// pieces on every CPU keep the 1M import under 1 s (see readImport in package control).
func Read(r io.Reader, workers int, reserve func(first, lines int) error, parse func(text string, first int)) (int, error) {
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
					return line - 1, fmt.Errorf("line %d is longer than %d bytes: %w", line, maxListLine, ErrNotList)
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
		if reserve != nil {
			if err := reserve(line, lines); err != nil {
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
