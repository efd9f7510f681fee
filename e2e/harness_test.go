package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/snare-dev/snare/internal/netlab"
	"github.com/snare-dev/snare/internal/testutil"
)

// The lab every test gets (see netlab.Lab for the veth star):
//
//	attacker 198.18.1.2, 2001:db8:1::2 and 2001:db8:1:1::2  ->  host 198.18.1.1, 2001:db8:1::1
//	client   198.18.2.2, 2001:db8:2::2                      ->  host 198.18.2.1, 2001:db8:2::1
//
// The attacker's extra IPv6 address lives in a /64 of its own: an IPv6 block covers the source's
// /64 (block.ipv6_prefix), and 2001:db8:1::/64 holds the host's own address, which is allowlisted.
// The host has a default gateway (198.18.1.254, 2001:db8:1::fe) on the attacker link, so the
// daemon's implicit allowlist has a gateway to protect; the gateway does not exist, and nothing
// routed to it can leave the lab. 198.18.1.253 plays the host's resolver (allowlisted in config:
// the daemon runs in the machine's mount namespace, so its /etc/resolv.conf is the machine's own).
const (
	webPort      = 8080
	trapTCPPorts = "79,111,143,31337"
	trapUDPPorts = "7,9,69,161"
)

var (
	attackerV6 = netip.MustParseAddr("2001:db8:1:1::2")
	gatewayV4  = netip.MustParseAddr("198.18.1.254")
	gatewayV6  = netip.MustParseAddr("2001:db8:1::fe")
	resolverV4 = netip.MustParseAddr("198.18.1.253")
)

// backends are the enforcement back-ends the whole suite runs against.
var backends = []string{"xdp", "iptables"}

// forEachBackend runs fn as one subtest per back-end.
func forEachBackend(t *testing.T, fn func(t *testing.T, backend string)) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			if b == "iptables" {
				requireFallback(t)
			}
			fn(t, b)
		})
	}
}

// requireFallback skips (fails in CI) while the ipset+iptables back-end is not in the tree or
// not wired into snared.
func requireFallback(tb testing.TB) {
	tb.Helper()
	if !hasCode("../iptables-fallback/*.go", "func New(") || !hasCode("../cmd/snared/*.go", "fallback.New(") {
		prerequisite(tb, "the iptables back-end (iptables-fallback, fallback.New wired into cmd/snared) is not merged yet: iptables run skipped")
	}
}

// hasCode reports whether a non-test Go file matching glob has a line, not a comment, containing s.
func hasCode(glob, s string) bool {
	files, _ := filepath.Glob(glob)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if l := strings.TrimSpace(line); strings.Contains(l, s) && !strings.HasPrefix(l, "//") {
				return true
			}
		}
	}
	return false
}

// labEnv is one test's world: the lab, a web server on the host, and one snared.
type labEnv struct {
	t       *testing.T
	lab     *netlab.Lab
	backend string
	dir     string // scratch: config, state, socket
	config  map[string]any
	d       *daemon
}

// options shape newEnv.
type options struct {
	// config are config keys (dotted, e.g. "block.ttl") over the suite's base config.
	config map[string]any
	// noStart leaves the daemon stopped (the test starts it itself).
	noStart bool
}

// baseConfig is the suite's config file: small trap port lists so scans stay short, the lab's
// resolver allowlisted, and sweeps rare so that expiry is seen to be exact without one.
func baseConfig() map[string]any {
	return map[string]any{
		"allow":          []string{resolverV4.String()},
		"block.ttl":      "1h",
		"trap.tcp_ports": trapTCPPorts,
		"trap.udp_ports": trapUDPPorts,
		"sweep.interval": "1h",
		"metrics.listen": "", // not under test here; the suite needs no TCP port on the host
	}
}

// newEnv builds the lab, the web server and (unless opts.noStart) a running snared for backend.
func newEnv(t *testing.T, backend string, opts options) *labEnv {
	t.Helper()
	requireLab(t)
	lab := testutil.NewLab(t, "attacker", "client")
	e := &labEnv{t: t, lab: lab, backend: backend, dir: t.TempDir(), config: baseConfig()}
	maps.Copy(e.config, opts.config)
	for k, v := range e.config {
		if v == nil {
			delete(e.config, k)
		}
	}
	e.setupAddresses()
	e.startWeb(lab.Host.NS)
	e.d = e.newDaemon("snared")
	if !opts.noStart {
		e.d.start()
	}
	return e
}

// requireLab skips (or fails in CI) unless a lab with real daemons can run: no -short, root, the
// binaries built, bpffs mounted.
func requireLab(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test (real daemon, netns lab, scanners): skipped with -short")
	}
	testutil.RequireRoot(t)
	requireBinaries(t)
	if err := netlab.EnsureBPFFS(); err != nil {
		t.Fatal(err)
	}
}

// setupAddresses adds the attacker's own /64, the host's default gateway and routes to them.
func (e *labEnv) setupAddresses() {
	e.t.Helper()
	att := e.lab.Attacker().Ifaces[0].Name
	hostAtt := e.lab.HostIface("attacker").Name
	steps := [][]string{
		{e.lab.Attacker().NS, "ip", "-6", "addr", "add", attackerV6.String() + "/64", "dev", att, "nodad"},
		{e.lab.Host.NS, "ip", "-6", "route", "add", netip.PrefixFrom(attackerV6, 64).Masked().String(), "dev", hostAtt},
		{e.lab.Host.NS, "ip", "route", "add", "default", "via", gatewayV4.String(), "dev", hostAtt},
		{e.lab.Host.NS, "ip", "-6", "route", "add", "default", "via", gatewayV6.String(), "dev", hostAtt},
	}
	for _, s := range steps {
		if _, err := e.lab.Run(s[0], s[1], s[2:]...); err != nil {
			e.t.Fatalf("lab setup: %v", err)
		}
	}
}

// startWeb serves HTTP on [::]:webPort inside namespace ns.
func (e *labEnv) startWeb(ns string) {
	e.t.Helper()
	var ln net.Listener
	if err := e.lab.Do(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", webPort))
		return err
	}); err != nil {
		e.t.Fatalf("web server in namespace %s: %v", ns, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "snare-e2e ok\n")
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	e.t.Cleanup(func() { srv.Close() })
}

// Addresses.

func (e *labEnv) attacker4() netip.Addr { return e.lab.Attacker().Addr4() }
func (e *labEnv) client4() netip.Addr   { return e.lab.Client().Addr4() }
func (e *labEnv) client6() netip.Addr   { return e.lab.Client().Addr6() }

// hostFor is the host's address on the link of the peer with the given role.
func (e *labEnv) hostFor(role string, v6 bool) netip.Addr {
	ifc := e.lab.HostIface(role)
	if v6 {
		return ifc.Addr6.Addr()
	}
	return ifc.Addr4.Addr()
}

// Traffic.

// httpGet fetches the web page from namespace ns, from src (the kernel's choice when invalid)
// to dst. A dropped SYN shows up as a timeout.
func (e *labEnv) httpGet(ns string, src, dst netip.Addr) error {
	const timeout = 1500 * time.Millisecond
	var conn net.Conn
	err := e.lab.Do(ns, func() error {
		d := net.Dialer{Timeout: timeout}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		var err error
		conn, err = d.Dial("tcp", netip.AddrPortFrom(dst, webPort).String())
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\nHost: host\r\n\r\n"); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if !bytes.Contains(b, []byte("snare-e2e ok")) {
		return fmt.Errorf("unexpected response %q", b)
	}
	return nil
}

// peer is a traffic source of the lab.
type peer struct {
	name string
	ns   string
	src  netip.Addr // invalid: the kernel's choice
	dst  netip.Addr
}

func (e *labEnv) attackerV4Peer() peer {
	return peer{"attacker (IPv4)", e.lab.Attacker().NS, e.attacker4(), e.hostFor("attacker", false)}
}
func (e *labEnv) attackerV6Peer() peer {
	return peer{"attacker (IPv6)", e.lab.Attacker().NS, attackerV6, e.hostFor("attacker", true)}
}
func (e *labEnv) clientV4Peer() peer {
	return peer{"client (IPv4)", e.lab.Client().NS, e.client4(), e.hostFor("client", false)}
}
func (e *labEnv) clientV6Peer() peer {
	return peer{"client (IPv6)", e.lab.Client().NS, e.client6(), e.hostFor("client", true)}
}

// served fails the test unless p gets the web page.
func (e *labEnv) served(t *testing.T, p peer) {
	t.Helper()
	if err := e.httpGet(p.ns, p.src, p.dst); err != nil {
		t.Errorf("%s %s -> %s: not served, want served: %v", p.name, p.src, p.dst, err)
	}
}

// dropped fails the test unless p's connection attempt times out (a RST or refusal would
// mean the packets got through).
func (e *labEnv) dropped(t *testing.T, p peer) {
	t.Helper()
	err := e.httpGet(p.ns, p.src, p.dst)
	var nerr net.Error
	switch {
	case err == nil:
		t.Errorf("%s %s -> %s: served, want dropped", p.name, p.src, p.dst)
	case !errors.As(err, &nerr) || !nerr.Timeout():
		t.Errorf("%s %s -> %s: failed with %v, want a timeout (packets dropped)", p.name, p.src, p.dst, err)
	}
}

// pings reports whether an ICMP echo from the peer's namespace to dst is answered.
func (e *labEnv) pings(p peer) bool {
	return e.lab.Ping(p.ns, p.dst, time.Second) == nil
}

// The daemon.

// daemon is one snared process (restartable) with its namespace, interfaces and paths.
type daemon struct {
	e        *labEnv
	name     string
	ns       string   // network namespace it runs in
	ifaces   []string // what it attaches to (--iface)
	backend  string   // --backend: the lab's, unless the test gives this daemon its own
	stateDir string
	socket   string
	bpffs    string
	config   string
	extra    []string // more snared flags
	proc     *netlab.Proc
}

// newDaemon prepares paths and the config file of a daemon in the lab's host namespace, on
// all its interfaces, and registers its teardown.
func (e *labEnv) newDaemon(name string) *daemon {
	e.t.Helper()
	return e.newDaemonIn(name, e.lab.Host.NS, e.lab.HostIfaceNames())
}

// newDaemonIn is newDaemon for a daemon in namespace ns on the interfaces ifaces.
func (e *labEnv) newDaemonIn(name, ns string, ifaces []string) *daemon {
	e.t.Helper()
	d := &daemon{
		e:        e,
		name:     name,
		ns:       ns,
		ifaces:   ifaces,
		backend:  e.backend,
		stateDir: filepath.Join(e.dir, name+"-state"),
		// Unix socket paths are limited to 107 bytes; t.TempDir paths can be long.
		socket: filepath.Join(shortTempDir(e.t), "snare.sock"),
		bpffs:  filepath.Join(netlab.BPFFSRoot, "snare-e2e-"+e.lab.Suffix+"-"+name),
		config: filepath.Join(e.dir, name+".yaml"),
	}
	d.writeConfig(e.config)
	e.t.Cleanup(d.teardown)
	return d
}

// shortTempDir is a temp directory under /tmp (short enough for a socket path), removed at the end.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "snare-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// writeConfig writes cfg (dotted keys) as the daemon's YAML config file.
func (d *daemon) writeConfig(cfg map[string]any) {
	d.e.t.Helper()
	b, err := yaml.Marshal(cfg)
	if err != nil {
		d.e.t.Fatal(err)
	}
	if err := os.WriteFile(d.config, b, 0o600); err != nil {
		d.e.t.Fatal(err)
	}
}

// args is snared's command line for this daemon.
func (d *daemon) args(extra ...string) []string {
	a := []string{"--config", d.config, "--backend", d.backend, "--state-dir", d.stateDir,
		"--socket", d.socket, "--bpffs", d.bpffs}
	for _, ifc := range d.ifaces {
		a = append(a, "--iface", ifc)
	}
	a = append(a, d.extra...)
	return append(a, extra...)
}

// launch starts snared in its namespace and returns the process without waiting. snared
// runs with nsenter --net (testutil's StartShared), not `ip netns exec`: the latter gives the
// process a private /sys without the bpffs mount, and pins made there would die with it.
func (d *daemon) launch() *netlab.Proc {
	d.e.t.Helper()
	argv := append([]string{bins.snared}, d.args()...)
	p, err := d.e.lab.StartShared(d.ns, "env", append(cleanEnv(), argv...)...)
	if err != nil {
		d.e.t.Fatal(err)
	}
	return p
}

// cleanEnv is `env -i`-style arguments: the test's environment without SNARE_* variables, so a
// stray setting in the caller's shell cannot change what the test runs.
func cleanEnv() []string {
	out := []string{"-i"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SNARE_") {
			out = append(out, kv)
		}
	}
	return out
}

// start launches snared and waits until its API answers.
func (d *daemon) start() {
	d.e.t.Helper()
	d.proc = d.launch()
	d.waitReady(d.proc)
}

// waitReady waits for the API, failing the test with the daemon's output if it exits first.
func (d *daemon) waitReady(p *netlab.Proc) {
	d.e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	c := api.NewClient(d.socket)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Status(ctx)
		cancel()
		if err == nil {
			return
		}
		if exited, werr := p.Exited(); exited {
			d.e.t.Fatalf("%s exited before its API answered (%v):\n%s", d.name, werr, p.Output())
		}
		if time.Now().After(deadline) {
			d.e.t.Fatalf("%s: API on %s not answering after 30s (%v):\n%s", d.name, d.socket, err, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() {
	d.e.t.Helper()
	if err := d.proc.Signal(unix.SIGTERM); err != nil {
		d.e.t.Fatalf("SIGTERM to %s (pid %d): %v", d.name, d.proc.PID, err)
	}
	if err := d.proc.Wait(10 * time.Second); err != nil {
		d.e.t.Errorf("%s did not exit cleanly on SIGTERM: %v\n%s", d.name, err, d.proc.Output())
	}
}

// kill9 kills the daemon with SIGKILL: no chance to flush or clean up anything.
func (d *daemon) kill9() {
	d.e.t.Helper()
	if err := d.proc.Signal(unix.SIGKILL); err != nil {
		d.e.t.Fatalf("SIGKILL to %s (pid %d): %v", d.name, d.proc.PID, err)
	}
	d.proc.Wait(10 * time.Second)
	if exited, _ := d.proc.Exited(); !exited {
		d.e.t.Fatalf("%s (pid %d) still running after SIGKILL", d.name, d.proc.PID)
	}
}

// teardown stops the daemon (by its PID) and runs `snared uninstall` in its namespace,
// which detaches the program from the lab's interfaces and removes every pin (and the fallback's
// chains and sets). The lab's own cleanup (registered earlier, so it runs later) then deletes the
// namespaces, which takes anything left on the veths and in the namespace's netfilter with it.
func (d *daemon) teardown() {
	t := d.e.t
	if d.proc == nil {
		return
	}
	if t.Failed() {
		t.Logf("%s output:\n%s", d.name, d.proc.Output())
	}
	if err := d.proc.Stop(); err != nil {
		t.Errorf("stop %s: %v", d.name, err)
	}
	if d.bpffs == "" {
		return // it never owned anything (see the second-daemon test)
	}
	if r := runIn(d.ns, bins.snared, append([]string{"uninstall"}, d.args()...)...); r.code != 0 {
		t.Errorf("%v", r)
	}
	if names := readDirNames(d.bpffs); len(names) > 0 {
		t.Errorf("snared uninstall left pins in %s: %v", d.bpffs, names)
	}
	if err := os.RemoveAll(d.bpffs); err != nil {
		t.Errorf("remove %s: %v", d.bpffs, err)
	}
}

// The CLI.

// result is one snarectl or snared run.
type result struct {
	args   []string
	stdout string
	stderr string
	code   int
}

func (r result) String() string {
	return fmt.Sprintf("`%s` exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code,
		strings.TrimSpace(r.stdout), strings.TrimSpace(r.stderr))
}

// runBin runs a binary from the test's namespace with a bounded time.
func runBin(bin string, args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cleanEnv()[1:]
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: append([]string{filepath.Base(bin)}, args...), stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		r.code = -1
		r.stderr += "\n(run failed: " + err.Error() + ")"
	}
	return r
}

// runIn runs a binary in namespace ns, keeping the mount namespace (bpffs), like snared itself.
func runIn(ns, bin string, args ...string) result {
	r := runBin("nsenter", append([]string{"--net=/run/netns/" + ns, "--", bin}, args...)...)
	r.args = append([]string{filepath.Base(bin)}, args...)
	return r
}

// ctl runs snarectl against this daemon's socket.
func (d *daemon) ctl(args ...string) result {
	return runBin(bins.snarectl, append([]string{"--socket", d.socket}, args...)...)
}

// mustCtl runs snarectl and fails the test unless it succeeds.
func (d *daemon) mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	r := d.ctl(args...)
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	return r.stdout
}

// list is `snarectl list -o json`, decoded.
func (d *daemon) list(t *testing.T) []api.Entry {
	t.Helper()
	out := d.mustCtl(t, "list", "-o", "json")
	entries, err := decodeEntries(out)
	if err != nil {
		t.Fatalf("snarectl list -o json: %v\n%s", err, out)
	}
	return entries
}

// decodeEntries accepts the list as a ListResponse object or a bare array of entries.
func decodeEntries(out string) ([]api.Entry, error) {
	s := strings.TrimSpace(out)
	if strings.HasPrefix(s, "[") {
		var entries []api.Entry
		err := json.Unmarshal([]byte(s), &entries)
		return entries, err
	}
	var lr api.ListResponse
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	err := dec.Decode(&lr)
	return lr.Entries, err
}

// status is `snarectl status -o json`, decoded.
func (d *daemon) status(t *testing.T) api.StatusResponse {
	t.Helper()
	out := d.mustCtl(t, "status", "-o", "json")
	var st api.StatusResponse
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("snarectl status -o json: %v\n%s", err, out)
	}
	return st
}

// events reads the event log through the API (the structured view of `snarectl events`).
func (d *daemon) events(t *testing.T) []api.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var evs []api.Event
	err := api.NewClient(d.socket).Events(ctx, false, func(ev api.Event) error {
		evs = append(evs, ev)
		return nil
	})
	if err != nil {
		t.Fatalf("read events: %v", err)
	}
	return evs
}

// find returns the entry for prefix (or nil).
func find(entries []api.Entry, prefix string) *api.Entry {
	for i := range entries {
		if entries[i].Prefix == prefix {
			return &entries[i]
		}
	}
	return nil
}

// prefixes are the entries' prefixes, sorted.
func prefixes(entries []api.Entry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Prefix)
	}
	slices.Sort(out)
	return out
}

// snapshot is what "nothing changed" compares: every entry's prefix, expiry and reason.
func snapshot(entries []api.Entry) string {
	var lines []string
	for _, e := range entries {
		lines = append(lines, fmt.Sprintf("%s exp=%s perm=%v reason=%q offences=%d",
			e.Prefix, e.Expires.UTC().Format(time.RFC3339Nano), e.Permanent, e.Reason, e.Offences))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// host32 is addr as the single-address prefix the daemon lists it under (IPv4: /32).
func host32(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// net64 is the /64 an IPv6 source is blocked as.
func net64(a netip.Addr) string { return netip.PrefixFrom(a, 64).Masked().String() }

// eventually polls cond every 100ms until it returns nil or timeout passes, and returns the
// last error.
func eventually(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readDirNames lists a directory (nil if it does not exist).
func readDirNames(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return names
}
