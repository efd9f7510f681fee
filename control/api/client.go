package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"syscall"
)

// Client talks to snared over its Unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}
	return &Client{
		socket: socket,
		http:   &http.Client{Transport: &http.Transport{DialContext: dial, DisableCompression: true}},
	}
}

// APIError is an error the daemon answered with (bad input, refused target, ...), as opposed
// to a failure to reach the daemon.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode answer to %s %s: %w", method, path, err)
	}
	return nil
}

// send performs the request and turns a non-2xx answer into an *APIError.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://snared"+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.roundTrip(req)
}

// roundTrip performs req and turns a non-2xx answer into an *APIError.
func (c *Client) roundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.dialError(err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e ErrorResponse
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("daemon answered %s", resp.Status)
		}
		return nil, &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	return resp, nil
}

// ErrUnreachable is wrapped by every error that means the daemon could not be reached at all
// (as opposed to an *APIError, where it answered), so callers can tell the two apart.
var ErrUnreachable = errors.New("cannot reach snared")

// dialError explains the common reasons the daemon cannot be reached.
func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w: socket %s does not exist (is snared running? see --socket)", ErrUnreachable, c.socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: nothing listens on %s (stale socket? is snared running?)", ErrUnreachable, c.socket)
	case errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%w: permission denied on %s (run as root)", ErrUnreachable, c.socket)
	}
	return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.socket, err)
}

// Block blocks targets.
func (c *Client) Block(ctx context.Context, req BlockRequest) (BlockResponse, error) {
	var out BlockResponse
	return out, c.do(ctx, http.MethodPost, "/v1/block", req, &out)
}

// Unblock removes blocks.
func (c *Client) Unblock(ctx context.Context, req UnblockRequest) (UnblockResponse, error) {
	var out UnblockResponse
	return out, c.do(ctx, http.MethodPost, "/v1/unblock", req, &out)
}

// List returns every active block.
func (c *Client) List(ctx context.Context) (ListResponse, error) {
	out := ListResponse{Entries: []Entry{}}
	err := c.listEach(ctx, func(n int) { out.Entries = make([]Entry, 0, n) }, func(e *Entry) error {
		out.Entries = append(out.Entries, *e)
		return nil
	})
	return out, err
}

// listEach calls fn with every active block, in prefix order, as the daemon streams them (JSON
// lines); the entry passed to fn is reused. expect, if set, is told how many entries the daemon
// announced.
func (c *Client) listEach(ctx context.Context, expect func(int), fn func(*Entry) error) error {
	resp, err := c.send(ctx, http.MethodGet, "/v1/list?stream=1", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if n, err := strconv.Atoi(resp.Header.Get("X-Snare-Entries")); err == nil && n > 0 && n <= 1<<26 && expect != nil {
		expect(n)
	}
	var e Entry
	var lineErr error // what the line or fn said, as opposed to a failed read
	err = readLines(resp.Body, 256<<10, func(line []byte) error {
		lineErr = listLine(line, &e, fn)
		return lineErr
	})
	switch {
	case lineErr != nil:
		return lineErr
	case err != nil:
		return fmt.Errorf("read list: %w", err)
	}
	return nil
}

// listLine decodes one line of a streamed list into e and passes it to fn.
func listLine(line []byte, e *Entry, fn func(*Entry) error) error {
	if bytes.HasPrefix(line, []byte(`{"error":`)) {
		var er ErrorResponse
		if json.Unmarshal(line, &er) == nil {
			return fmt.Errorf("list cut short: %s", er.Error)
		}
	}
	*e = Entry{} // fields a line leaves out must not keep the last entry's values
	if err := json.Unmarshal(line, e); err != nil {
		return fmt.Errorf("decode list entry: %w", err)
	}
	return fn(e)
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (StatusResponse, error) {
	var out StatusResponse
	return out, c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
}

// FleetStatus returns this host's state in the fleet.
func (c *Client) FleetStatus(ctx context.Context) (FleetStatus, error) {
	var out FleetStatus
	return out, c.do(ctx, http.MethodGet, "/v1/fleet", nil, &out)
}

// AllowAdd adds configured allowlist entries.
func (c *Client) AllowAdd(ctx context.Context, req AllowRequest) (AllowResponse, error) {
	var out AllowResponse
	return out, c.do(ctx, http.MethodPost, "/v1/allow/add", req, &out)
}

// AllowDel removes configured allowlist entries.
func (c *Client) AllowDel(ctx context.Context, req AllowRequest) (AllowResponse, error) {
	var out AllowResponse
	return out, c.do(ctx, http.MethodPost, "/v1/allow/del", req, &out)
}

// AllowList returns the whole allowlist, implicit entries included.
func (c *Client) AllowList(ctx context.Context) (AllowResponse, error) {
	var out AllowResponse
	return out, c.do(ctx, http.MethodGet, "/v1/allow", nil, &out)
}

// ImportStream sends a block list read from body as it is read (req.Content is ignored): the
// daemon parses it while it arrives. size is body's length, or -1 if unknown. If body fails
// (returns an error other than io.EOF), the upload is cut off and the daemon imports nothing.
func (c *Client) ImportStream(ctx context.Context, body io.Reader, size int64, req ImportRequest) (ImportResponse, error) {
	q := url.Values{}
	for k, v := range map[string]string{"ttl": req.TTL, "reason": req.Reason, "name": req.Name} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if req.SkipBad {
		q.Set("skip_bad", "true")
	}
	br := &errReader{r: body}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://snared/v1/import?"+q.Encode(), io.NopCloser(br))
	if err != nil {
		return ImportResponse{}, err
	}
	hreq.Header.Set("Content-Type", "text/plain; charset=utf-8")
	hreq.ContentLength = size
	if size == 0 {
		hreq.Body = http.NoBody
	}
	resp, err := c.roundTrip(hreq)
	if err != nil {
		if br.err != nil {
			return ImportResponse{}, fmt.Errorf("upload cut off: %w", br.err)
		}
		return ImportResponse{}, err
	}
	defer resp.Body.Close()
	var out ImportResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return out, fmt.Errorf("decode answer to POST /v1/import: %w", err)
	}
	return out, nil
}

// Export writes the block list in format ("blocked-list" or "plain") to w.
func (c *Client) Export(ctx context.Context, format string, w io.Writer) error {
	resp, err := c.send(ctx, http.MethodGet, "/v1/export?format="+url.QueryEscape(format), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// Events calls fn for each event in the log, oldest first; with follow it then keeps streaming
// new events until ctx ends or fn returns an error.
func (c *Client) Events(ctx context.Context, follow bool, fn func(Event) error) error {
	path := "/v1/events"
	if follow {
		path += "?follow=1"
	}
	resp, err := c.send(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var lineErr error // what the line or fn said, as opposed to a failed read
	err = readLines(resp.Body, 64<<10, func(line []byte) error {
		var ev Event
		if lineErr = json.Unmarshal(line, &ev); lineErr != nil {
			lineErr = fmt.Errorf("decode event: %w", lineErr)
			return lineErr
		}
		lineErr = fn(ev)
		return lineErr
	})
	switch {
	case lineErr != nil:
		return lineErr
	case err != nil && ctx.Err() == nil:
		return fmt.Errorf("read events: %w", err)
	}
	return nil
}

// readLines calls fn with each non-empty line of r, without its newline, until r ends or fn
// fails. A line is never too long: one that does not fit the buffer (size bytes) is gathered
// whole, so that no entry the daemon holds can break a listing. The line passed to fn is
// reused once fn returns.
func readLines(r io.Reader, size int, fn func([]byte) error) error {
	br := bufio.NewReaderSize(r, size)
	var long []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long, chunk...)
			continue
		}
		line := chunk
		if long != nil {
			line = append(long, chunk...)
			long = nil
		}
		if line = bytes.TrimSuffix(line, []byte{'\n'}); len(line) > 0 {
			if ferr := fn(line); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// errReader remembers the error its reader failed with (other than io.EOF).
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}
