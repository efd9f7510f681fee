package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"
	"github.com/snare-dev/snare/internal/netlab"

	"github.com/snare-dev/snare/bpf"
	"github.com/snare-dev/snare/internal/testutil"
)

// buildSnared compiles this command for the process-level tests.
func buildSnared(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "snared")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func waitSocket(t *testing.T, c *api.Client, p *netlab.Proc) {
	t.Helper()
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if _, err := c.Status(context.Background()); err == nil {
			return
		}
		if exited, _ := p.Exited(); exited {
			t.Fatalf("snared exited:\n%s", p.Output())
		}
	}
	t.Fatalf("snared did not answer in 15s:\n%s", p.Output())
}

// hostSnared is the snared binary set to run on the host of a lab with an attacker peer, its
// state, socket (state/snare.sock) and pins in fresh directories.
type hostSnared struct {
	lab                    *netlab.Lab
	bin, state, sock, pins string
	args                   []string // --state-dir, --socket, --bpffs and an --iface for each host interface
	att                    *netlab.Node
	reaches                func() bool // whether the attacker's ping reaches the host
	c                      *api.Client
}

func newHostSnared(t *testing.T) *hostSnared {
	t.Helper()
	s := &hostSnared{lab: testutil.NewLab(t, "attacker"), bin: buildSnared(t), state: t.TempDir()}
	s.pins = filepath.Join(testutil.TempBPFFS(t), "pins")
	s.sock = filepath.Join(s.state, "snare.sock")
	s.args = []string{"--state-dir", s.state, "--socket", s.sock, "--bpffs", s.pins}
	for _, i := range s.lab.HostIfaceNames() {
		s.args = append(s.args, "--iface", i)
	}
	s.att = s.lab.Attacker()
	dst := s.lab.HostIface("attacker").Addr4.Addr()
	s.reaches = func() bool { return s.lab.Ping(s.att.NS, dst, 300*time.Millisecond) == nil }
	s.c = api.NewClient(s.sock)
	return s
}

// start starts snared with s.args in the host's namespace.
func (s *hostSnared) start() (*netlab.Proc, error) {
	return s.lab.StartShared(s.lab.Host.NS, s.bin, s.args...)
}

// run runs snared with the extra arguments (a subcommand, a flag) before s.args, in the host's
// namespace, to its end.
func (s *hostSnared) run(extra ...string) (string, error) {
	return s.lab.RunShared(s.lab.Host.NS, s.bin, append(extra, s.args...)...)
}

// The real binary: runs on the lab host's interfaces, a second one on the same pins is refused
// with a clear error and a non-zero exit, SIGHUP reloads, SIGTERM stops cleanly leaving the
// blocks enforced, kill -9 loses nothing, and uninstall removes the program and pins.
func TestSnaredProcess(t *testing.T) {
	lab := testutil.NewLab(t, "attacker")
	bin := buildSnared(t)
	state := t.TempDir()
	pins := filepath.Join(testutil.TempBPFFS(t), "pins")
	sock := filepath.Join(state, "run", "snare.sock")
	cfgFile := filepath.Join(state, "snare.yaml")
	if err := os.WriteFile(cfgFile, []byte("trap:\n  tcp_ports: \"31337\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", cfgFile, "--state-dir", state, "--socket", sock, "--bpffs", pins}
	for _, i := range lab.HostIfaceNames() {
		args = append(args, "--iface", i)
	}
	att := lab.Attacker()
	dst := lab.HostIface("attacker").Addr4.Addr()
	reaches := func() bool { return lab.Ping(att.NS, dst, 300*time.Millisecond) == nil }
	c := api.NewClient(sock)
	ctx := context.Background()

	// systemd's notify socket: READY=1 must come once the daemon answers.
	notifyPath := filepath.Join(state, "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	t.Setenv("NOTIFY_SOCKET", notifyPath)

	p, err := lab.StartShared(lab.Host.NS, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	notify.SetReadDeadline(time.Now().Add(15 * time.Second))
	buf := make([]byte, 256)
	n, err := notify.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("sd_notify: %q, %v\n%s", buf[:n], err, p.Output())
	}
	if _, err := c.Status(ctx); err != nil {
		t.Fatalf("READY=1 sent before the API answers: %v", err)
	}
	waitSocket(t, c, p)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if _, err := c.Block(ctx, api.BlockRequest{Targets: []string{att.Addr4().String()}}); err != nil {
		t.Fatal(err)
	}
	if reaches() {
		t.Fatal("blocked attacker reaches the host")
	}
	// Metrics on the default loopback address of the host's namespace count the manual block.
	var scrape []byte
	err = lab.Do(lab.Host.NS, func() error {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:9477", 2*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte("GET /metrics HTTP/1.0\r\nHost: snared\r\n\r\n")); err != nil {
			return err
		}
		scrape, err = io.ReadAll(conn)
		return err
	})
	if err != nil || !strings.Contains(string(scrape), `snare_blocks_total{origin="manual"} 1`) {
		t.Errorf("metrics scrape (%v):\n%.2000s", err, scrape)
	}

	// Metrics are served on the namespace's loopback by default and count the manual block.
	var metrics string
	err = lab.Do(lab.Host.NS, func() error {
		// Dial here: http.Transport dials on goroutines that are not in the namespace.
		conn, err := net.DialTimeout("tcp", "127.0.0.1:9477", 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
			return err
		}
		b, err := io.ReadAll(conn)
		metrics = string(b)
		return err
	})
	if err != nil {
		t.Fatalf("scrape metrics: %v\n%s", err, p.Output())
	}
	if want := `snare_interface_packets_total{action="drop",interface="` + lab.HostIfaceNames()[0] + `",reason="exact"}`; !strings.Contains(metrics, want) {
		t.Errorf("metrics lack %s", want)
	}
	if !strings.Contains(metrics, `snare_blocks_total{origin="manual"} 1`) {
		t.Errorf("metrics lack the manual block:\n%s", metrics)
	}

	// A second daemon on the same pins (own state dir and socket) is refused.
	state2 := t.TempDir()
	args2 := []string{"--state-dir", state2, "--socket", filepath.Join(state2, "s.sock"), "--bpffs", pins, "--iface", lab.HostIfaceNames()[0]}
	out, err := lab.RunShared(lab.Host.NS, bin, args2...)
	if err == nil || !strings.Contains(out, "locked by another snared") {
		t.Errorf("second snared: err %v, output:\n%s", err, out)
	}

	// SIGHUP reloads the config file.
	if err := os.WriteFile(cfgFile, []byte("trap:\n  tcp_ports: \"4444,5555\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(unix.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var ports string
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ports = st.Trap.TCPPorts; ports == "4444,5555" {
			break
		}
	}
	if ports != "4444,5555" {
		t.Errorf("trap ports after SIGHUP: %q", ports)
	}

	// SIGTERM: clean exit, socket gone, still dropping.
	if err := p.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(10 * time.Second); err != nil {
		t.Fatalf("snared after SIGTERM: %v\n%s", err, p.Output())
	}
	if reaches() {
		t.Fatal("attacker reaches the host after snared stopped")
	}

	// Restart, then kill -9: nothing lost.
	p, err = lab.StartShared(lab.Host.NS, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	waitSocket(t, c, p)
	if _, err := c.Block(ctx, api.BlockRequest{Targets: []string{"198.18.77.7"}, Reason: "before kill"}); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.Wait(5 * time.Second)
	p, err = lab.StartShared(lab.Host.NS, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	waitSocket(t, c, p)
	l, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, e := range l.Entries {
		got[e.Prefix] = true
	}
	if !got[att.Addr4().String()+"/32"] || !got["198.18.77.7/32"] {
		t.Errorf("after kill -9 and restart the list is %v", l.Entries)
	}
	if reaches() {
		t.Fatal("attacker reaches the host after kill -9 and restart")
	}

	// Uninstall refuses while the daemon runs, then removes everything.
	if out, err := lab.RunShared(lab.Host.NS, bin, append([]string{"uninstall"}, args...)...); err == nil || !strings.Contains(out, "stop it first") {
		t.Errorf("uninstall with snared running: %v\n%s", err, out)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	out, err = lab.RunShared(lab.Host.NS, bin, append([]string{"uninstall"}, args...)...)
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if !reaches() {
		t.Fatal("attacker still dropped after uninstall")
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pin directory still there after uninstall: %v", err)
	}
	// It says what it removed: the program from the lab's interfaces, and the pins.
	detachedLine := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "detached the XDP program") {
			detachedLine = l
		}
	}
	for _, name := range lab.HostIfaceNames() {
		if !strings.Contains(detachedLine, name) {
			t.Errorf("uninstall does not say it detached the program from %s:\n%s", name, out)
		}
	}
	if !strings.Contains(out, "removed pins") || strings.Contains(out, "nothing attached") {
		t.Errorf("uninstall output does not say what it removed:\n%s", out)
	}
	// A second uninstall finds nothing, and says so instead of claiming a removal.
	out, err = lab.RunShared(lab.Host.NS, bin, append([]string{"uninstall"}, args...)...)
	if err != nil {
		t.Fatalf("second uninstall: %v\n%s", err, out)
	}
	if !strings.Contains(out, "XDP program: nothing attached") || !strings.Contains(out, "no pins to remove") ||
		strings.Contains(out, "detached") || strings.Contains(out, "removed pins") {
		t.Errorf("uninstall with nothing installed claims a removal:\n%s", out)
	}
}

// A damaged store (a data page in the middle, or both meta pages): snared refuses to start with
// one message naming the file and the recovery, no Go trace, exit 1, and the pinned program
// keeps dropping meanwhile. --recover-store salvages the readable entries; after a reboot (pins
// gone) the next start restores them into the kernel.
func TestSnaredDamagedStore(t *testing.T) {
	s := newHostSnared(t)
	db := filepath.Join(s.state, "snare.db")
	ctx := context.Background()

	p, err := s.start()
	if err != nil {
		t.Fatal(err)
	}
	waitSocket(t, s.c, p)
	if _, err := s.c.Block(ctx, api.BlockRequest{Targets: []string{s.att.Addr4().String()}}); err != nil {
		t.Fatal(err)
	}
	// Enough rules for a store of many pages: 198.19.0.0 - 198.19.78.31.
	const n = 20000
	var list strings.Builder
	for i := range n {
		fmt.Fprintf(&list, "198.19.%d.%d\n", i>>8, i&255)
	}
	if r, err := s.c.ImportStream(ctx, strings.NewReader(list.String()), int64(list.Len()), api.ImportRequest{}); err != nil || r.Imported != n {
		t.Fatalf("import: %+v %v", r, err)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if s.reaches() {
		t.Fatal("blocked attacker reaches the host")
	}
	sound, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	// The record of 198.19.39.16 inside its segment: key length, family, address, bits.
	middle := []byte{6, 4, 198, 19, 39, 16, 32}

	for _, damage := range []string{"meta pages", "data page"} {
		if err := os.WriteFile(db, sound, 0o600); err != nil {
			t.Fatal(err)
		}
		if damage == "meta pages" {
			testutil.DamageStoreMeta(t, db)
		} else {
			testutil.DamageStorePage(t, db, middle)
		}
		out, err := s.run()
		t.Logf("%s: %s", damage, out)
		if err == nil || !strings.Contains(err.Error(), "exit status 1") {
			t.Errorf("%s: snared did not exit 1: %v", damage, err)
		}
		for _, want := range []string{"Error: open store " + db + ": store file is corrupt", "snared --recover-store", "kernel stay enforced"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: output lacks %q:\n%s", damage, want, out)
			}
		}
		if strings.Contains(out, "panic") || strings.Contains(out, "goroutine") || strings.Count(out, "\n") != 1 {
			t.Errorf("%s: want one line of message, no Go trace:\n%s", damage, out)
		}
		if s.reaches() {
			t.Fatalf("%s: the attacker reaches the host after the refused start", damage)
		}
	}

	out, err := s.run("--recover-store")
	t.Logf("--recover-store: %s", out)
	if err != nil {
		t.Fatalf("--recover-store: %v", err)
	}
	var salvaged int
	if _, err := fmt.Sscanf(out[strings.Index(out, "salvaged into a fresh store: "):], "salvaged into a fresh store: %d rules", &salvaged); err != nil ||
		salvaged <= n-300 || salvaged > n || !strings.Contains(out, "lost: rules after 198.19.") || !strings.Contains(out, db+".corrupt-") {
		t.Fatalf("--recover-store salvaged %d of %d (%v):\n%s", salvaged, n+1, err, out)
	}
	if out, err := s.run("--recover-store"); err != nil || !strings.Contains(out, "nothing to recover") {
		t.Errorf("second --recover-store: %v\n%s", err, out)
	}

	// A reboot: the pins go, and the start rebuilds the kernel from the salvaged store.
	if out, err := s.run("uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if !s.reaches() {
		t.Fatal("attacker still dropped with no program attached")
	}
	p, err = s.start()
	if err != nil {
		t.Fatal(err)
	}
	waitSocket(t, s.c, p)
	defer func() {
		p.Stop()
		s.run("uninstall")
	}()
	l, err := s.c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Entries) != salvaged {
		t.Errorf("restored %d entries, salvaged %d", len(l.Entries), salvaged)
	}
	if s.reaches() {
		t.Error("the salvaged block of the attacker is not enforced after the start")
	}
}

// Pins made by a newer snare (a downgrade): snared refuses to start, exit 1, with one message
// naming the pin directory, both ABIs and the way out; it does not fall back to iptables, and
// the pinned program keeps dropping what it held.
func TestSnaredRefusesNewerPins(t *testing.T) {
	s := newHostSnared(t)

	p, err := s.start()
	if err != nil {
		t.Fatal(err)
	}
	waitSocket(t, s.c, p)
	if _, err := s.c.Block(context.Background(), api.BlockRequest{Targets: []string{s.att.Addr4().String()}}); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}

	newer := uint32(bpf.SnareAbiSNARE_ABI + 1)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), newer); err != nil {
		t.Fatal(err)
	}
	abiPin := filepath.Join(s.pins, "abi")
	if err := os.Remove(abiPin); err != nil {
		t.Fatalf("no abi pin beside the maps: %v", err)
	}
	if err := m.Pin(abiPin); err != nil {
		t.Fatal(err)
	}

	out, err := s.run()
	if err == nil || !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("snared over a newer snare's pins did not exit 1: %v", err)
	}
	want := fmt.Sprintf("pinned maps at %s were made by a newer snare (ABI %d, this snared understands up to %d): run `snared uninstall` or the newer snared", s.pins, newer, bpf.SnareAbiSNARE_ABI)
	if !strings.Contains(out, want) || strings.Contains(out, "fallback") {
		t.Errorf("snared's message:\n%s\nwant it to say: %s (and no fallback)", out, want)
	}
	if s.reaches() {
		t.Error("the pinned program stopped dropping the blocked attacker")
	}
}
