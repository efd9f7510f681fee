package control_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
)

// upload is an import sent by hand on the daemon's socket, a piece at a time, as a slow or
// stalled client sends it.
type upload struct {
	t    *testing.T
	conn net.Conn
	body string
	sent int
}

func startUpload(t *testing.T, socket, name, body string) *upload {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	u := &upload{t: t, conn: conn, body: body}
	u.write(fmt.Sprintf("POST /v1/import?name=%s HTTP/1.1\r\nHost: snare\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n", name, len(body)))
	return u
}

func (u *upload) write(s string) {
	u.t.Helper()
	u.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(u.conn, s); err != nil {
		u.t.Fatalf("send: %v", err)
	}
}

// send sends the body's next n bytes.
func (u *upload) send(n int) {
	u.t.Helper()
	u.write(u.body[u.sent : u.sent+n])
	u.sent += n
}

// answer reads the daemon's answer (waiting at most 10 s): its status and body.
func (u *upload) answer() (int, string) {
	u.t.Helper()
	u.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(u.conn), nil)
	if err != nil {
		u.t.Fatalf("read the answer to the import: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		u.t.Fatalf("read the answer to the import: %v", err)
	}
	return resp.StatusCode, string(b)
}

// listOf is one line per address, 198.19.net.1 to 198.19.net.n.
func listOf(net, n int) (lines []string, prefixes []string) {
	for i := 1; i <= n; i++ {
		a := fmt.Sprintf("198.19.%d.%d", net, i)
		lines = append(lines, a+"\n")
		prefixes = append(prefixes, a+"/32")
	}
	return lines, prefixes
}

// A slow import upload holds up nothing: blocks, unblocks and allowlist changes answer at once
// while the list trickles in. A list that stops arriving is cut off after the daemon's idle
// timeout with an error saying so, and imports nothing; so does one that an allowlist change
// made while it was sent would break.
func TestImportSlowUpload(t *testing.T) {
	dl := newDaemonLab(t)
	dl.importIdle = time.Second
	dl.start()
	attacker := dl.lab.Attacker()
	target := attacker.Addr4().String()

	// quick runs op, which must answer within 500 ms (a round trip takes about 1 ms).
	quick := func(what string, op func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		t0 := time.Now()
		err := op(ctx)
		if took := time.Since(t0); err != nil || took > 500*time.Millisecond {
			t.Fatalf("%s while an import is sent: took %v, %v", what, took, err)
		}
	}
	block := func(ctx context.Context) error {
		_, err := dl.client.Block(ctx, api.BlockRequest{Targets: []string{target}, TTL: "1h"})
		return err
	}
	unblock := func(ctx context.Context) error {
		_, err := dl.client.Unblock(ctx, api.UnblockRequest{Targets: []string{target}})
		return err
	}
	allow := func(add bool, prefix string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			change := dl.client.AllowDel
			if add {
				change = dl.client.AllowAdd
			}
			_, err := change(ctx, api.AllowRequest{Targets: []string{prefix}})
			return err
		}
	}
	// nothing checks that none of prefixes is stored or in the kernel.
	nothing := func(what string, prefixes []string) {
		t.Helper()
		es := dl.entries()
		rules, err := dl.enf.Rules(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		kernel := map[string]bool{}
		for _, r := range rules {
			kernel[r.Prefix.String()] = true
		}
		for _, p := range prefixes {
			if _, ok := es[p]; ok || kernel[p] {
				t.Fatalf("%s: %s stored %v, in the kernel %v; want neither", what, p, ok, kernel[p])
			}
		}
	}

	// A list trickling in, a line every 100 ms: the control path answers meanwhile, and the
	// list imports once complete.
	lines, prefixes := listOf(1, 16)
	u := startUpload(t, dl.cfg.Socket, "slow.list", strings.Join(lines, ""))
	for i, l := range lines {
		u.send(len(l))
		switch i {
		case 2:
			quick("block", block)
			if dl.reaches(attacker, false) {
				t.Fatal("a block made while an import was sent does not drop")
			}
		case 5:
			quick("unblock", unblock)
		case 8:
			quick("allow add", allow(true, "198.19.200.0/24"))
		case 11:
			quick("allow del", allow(false, "198.19.200.0/24"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	status, body := u.answer()
	var resp api.ImportResponse
	if err := json.Unmarshal([]byte(body), &resp); err != nil || status != http.StatusOK || resp.Imported != len(lines) {
		t.Fatalf("slow import: %d %s", status, body)
	}
	es := dl.entries()
	for _, p := range prefixes {
		if _, ok := es[p]; !ok {
			t.Fatalf("slow import: %s not stored", p)
		}
	}
	if !dl.reaches(attacker, false) {
		t.Fatal("unblocked while an import was sent, still dropped")
	}

	// An address of the list allowlisted while the list is sent: the import is refused whole
	// (the allowlist always wins).
	lines, prefixes = listOf(2, 8)
	u = startUpload(t, dl.cfg.Socket, "late.list", strings.Join(lines, ""))
	u.send(len(lines[0]) + len(lines[1]))
	// Time for the daemon to start reading. Had it not (a loaded machine), it reads the list
	// with the new allowlist: the lines are refused as bad ones then, also nothing imported.
	time.Sleep(300 * time.Millisecond)
	quick("allow add", allow(true, "198.19.2.4/30"))
	u.send(len(u.body) - u.sent)
	status, body = u.answer()
	late := "198.19.2.4/32 overlaps 198.19.2.4/30, allowlisted (manual) while the list was being sent; nothing imported"
	early := "line 4: 198.19.2.4 is allowlisted (manual 198.19.2.4/30): refused"
	if status != http.StatusBadRequest || !strings.Contains(body, late) && !strings.Contains(body, early) {
		t.Fatalf("import of a list allowlisted in part while it was sent: %d %s; want 400 %q", status, body, late)
	}
	nothing("import refused by a late allowlist change", prefixes)

	// A list that stops arriving halfway: cut off after the idle timeout, nothing imported;
	// the control path answers meanwhile.
	lines, prefixes = listOf(3, 8)
	u = startUpload(t, dl.cfg.Socket, "stalled.list", strings.Join(lines, ""))
	u.send(len(lines[0]) * 4)
	stalled := time.Now()
	quick("block", block)
	quick("unblock", unblock)
	status, body = u.answer()
	took := time.Since(stalled)
	if want := "the upload sent nothing for 1s: cut off, nothing imported"; status != http.StatusBadRequest || !strings.Contains(body, want) {
		t.Fatalf("stalled import: %d %s; want 400 %q", status, body, want)
	}
	if took < 900*time.Millisecond || took > 5*time.Second {
		t.Fatalf("stalled import cut off after %v; want the idle timeout, 1 s", took)
	}
	nothing("stalled import", prefixes)

	// A list that trickles, a byte every 300 ms (never idle for 1 s): cut off once it has run
	// for 4 idle periods at under 1 KiB a second; the control path answers meanwhile.
	lines, prefixes = listOf(4, 8)
	u = startUpload(t, dl.cfg.Socket, "trickled.list", strings.Join(lines, ""))
	trickling := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; i < 40 && i < len(u.body); i++ { // 12 s at most, then it stalls
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			u.conn.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := io.WriteString(u.conn, u.body[i:i+1]); err != nil {
				return // cut off
			}
		}
	}()
	quick("block", block)
	quick("unblock", unblock)
	status, body = u.answer()
	took = time.Since(trickling)
	if want := "under 1024 bytes a second: cut off, nothing imported"; status != http.StatusBadRequest || !strings.Contains(body, want) {
		t.Fatalf("trickled import: %d %s; want 400 %q", status, body, want)
	}
	if took < 3900*time.Millisecond || took > 6*time.Second {
		t.Fatalf("trickled import cut off after %v; want 4 idle periods, 4 s", took)
	}
	nothing("trickled import", prefixes)
}
