package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// A reload with a broken config file (SIGHUP, as `systemctl reload` sends it) changes nothing:
// the error is logged, the old trap ports, TTL and blocks stay in force, and the daemon keeps
// running; a good config reloaded afterwards applies.
func TestReloadFailureKeepsConfig(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{})
		d := e.d
		d.mustCtl(t, "block", e.attacker4().String())
		trap := d.status(t).Trap
		for i, tc := range []struct{ name, config, want string }{
			{"not YAML", "trap: [79\n", "yaml"},
			{"bad TTL", "block:\n  ttl: -3h\n", "-3h"},
			{"bad trap port", "trap:\n  tcp_ports: \"79,70000\"\n", "70000"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if err := os.WriteFile(d.config, []byte(tc.config), 0o600); err != nil {
					t.Fatal(err)
				}
				d.hup(t, "reload failed", tc.want)
				if exited, err := d.proc.Exited(); exited {
					t.Fatalf("snared exited after a failed reload (%v):\n%s", err, d.proc.Output())
				}
				if got := d.status(t).Trap; got != trap {
					t.Errorf("trap settings after a failed reload: %+v, want %+v", got, trap)
				}
				// The old TTL (the suite's 1h) still applies to a new block.
				a := fmt.Sprintf("198.18.50.%d", i+1)
				d.mustCtl(t, "block", a)
				if en := find(d.list(t), a+"/32"); en == nil || time.Until(en.Expires) < 59*time.Minute || time.Until(en.Expires) > time.Hour {
					t.Errorf("block of %s after a failed reload: %+v, want the old TTL (1h)", a, en)
				}
				e.dropped(t, e.attackerV4Peer())
				e.served(t, e.clientV4Peer())
			})
		}
		// The trap ports in the kernel are the old ones: a probe of one still blocks.
		trapHit(e, e.attackerV6Peer(), 111)
		listedByTrap(t, d, attackerV6)
		e.dropped(t, e.attackerV6Peer())

		// Reload is not just ignored: a good config applies.
		cfg := baseConfig()
		cfg["trap.tcp_ports"] = "79,4444"
		d.writeConfig(cfg)
		d.hup(t, "configuration reloaded")
		if got := d.status(t).Trap.TCPPorts; got != "79,4444" {
			t.Errorf("trap tcp ports after a good reload: %q, want 79,4444", got)
		}
	})
}

// SIGHUP reopens the event log: after logrotate moved events.jsonl away, the next events go to a
// fresh events.jsonl, not to the moved file, even when the reload itself fails.
func TestSIGHUPReopensEventLog(t *testing.T) {
	e := newEnv(t, "xdp", options{})
	d := e.d
	logFile := d.eventsFile()
	for i, broken := range []bool{false, true} {
		before, after := fmt.Sprintf("198.18.51.%d", 2*i+1), fmt.Sprintf("198.18.51.%d", 2*i+2)
		d.mustCtl(t, "block", before)
		rotated := fmt.Sprintf("%s.%d", logFile, i+1)
		if err := os.Rename(logFile, rotated); err != nil {
			t.Fatal(err)
		}
		if broken {
			if err := os.WriteFile(d.config, []byte("trap: [79\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			d.hup(t, "reload failed")
		} else {
			d.hup(t, "configuration reloaded")
		}
		d.mustCtl(t, "block", after)
		fresh := blockEventsIn(t, logFile)
		old := blockEventsIn(t, rotated)
		if !fresh[after] || fresh[before] {
			t.Errorf("reload (broken config: %v): fresh %s has blocks %v, want %s and not %s", broken, logFile, fresh, after, before)
		}
		if !old[before] || old[after] {
			t.Errorf("reload (broken config: %v): moved %s has blocks %v, want %s and not %s", broken, rotated, old, before, after)
		}
	}
	d.writeConfig(e.config) // the teardown's snared uninstall reads it
}

// hup sends SIGHUP to the daemon's process and waits until its output, after what it said before,
// has every one of want (what it logs when the reload is done).
func (d *daemon) hup(t *testing.T, want ...string) {
	t.Helper()
	seen := len(d.proc.Output())
	if err := d.proc.Signal(unix.SIGHUP); err != nil {
		t.Fatalf("SIGHUP to %s (pid %d): %v", d.name, d.proc.PID, err)
	}
	if err := eventually(10*time.Second, func() error {
		if out := d.proc.Output()[seen:]; !containsAll(out, want...) {
			return fmt.Errorf("%s's output after SIGHUP lacks %q:\n%s", d.name, want, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// blockEventsIn reads a JSON-lines event log file and returns the addresses it has block events
// for (bare addresses for single-address blocks).
func blockEventsIn(t *testing.T, file string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("read event log: %v", err)
	}
	got := map[string]bool{}
	for _, ev := range decodeEventLines(t, file, b) {
		if ev.Event == "block" {
			got[strings.TrimSuffix(ev.Address, "/32")] = true
		}
	}
	return got
}

func decodeEventLines(t *testing.T, file string, b []byte) []api.Event {
	t.Helper()
	var evs []api.Event
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var ev api.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Errorf("%s line %d is not a JSON event: %v: %q", file, i+1, err, line)
			continue
		}
		evs = append(evs, ev)
	}
	return evs
}

// trapHit sends one TCP SYN from p to a trap port of the host (the dial is dropped: it times out).
func trapHit(e *labEnv, p peer, port int) {
	e.lab.Do(p.ns, func() error {
		dl := net.Dialer{Timeout: 300 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: p.src.AsSlice()}}
		c, err := dl.Dial("tcp", netip.AddrPortFrom(p.dst, uint16(port)).String())
		if err == nil {
			c.Close()
		}
		return nil
	})
}

// READY=1 (sd_notify) comes only once the blocks of a non-empty store are in the kernel: after a
// reboot-like start (snared uninstall removed every pin) the daemon is frozen the moment READY
// arrives, and the pinned map already holds every block and drops the attacker.
func TestReadyAfterRestore(t *testing.T) {
	e := newEnv(t, "xdp", options{})
	d := e.d
	const n = 100_000 // a restore that takes a while
	lines := make([]string, 0, n)
	for a, i := netip.MustParseAddr("198.18.64.0"), 0; i < n; a, i = a.Next(), i+1 { // to 198.19.250.159
		lines = append(lines, a.String())
	}
	list := filepath.Join(e.dir, "many.list")
	if err := os.WriteFile(list, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.mustCtl(t, "import", list)
	d.mustCtl(t, "block", e.attacker4().String())
	d.stop()
	if r := runIn(e.lab.Host.NS, bins.snared, append([]string{"uninstall"}, d.args()...)...); r.code != 0 {
		t.Fatalf("%v", r)
	}
	e.served(t, e.attackerV4Peer()) // nothing in the kernel now: the store alone holds the blocks

	notifyPath := filepath.Join(shortTempDir(t), "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	t.Setenv("NOTIFY_SOCKET", notifyPath) // inherited by snared (cleanEnv)
	d.proc = d.launch()
	notify.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 4096)
	for {
		m, err := notify.Read(buf)
		if err != nil {
			t.Fatalf("no READY=1 from snared: %v\n%s", err, d.proc.Output())
		}
		if slices.Contains(strings.Split(string(buf[:m]), "\n"), "READY=1") {
			break
		}
	}
	if err := d.proc.Signal(unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			d.proc.Signal(unix.SIGCONT)
		}
	}()
	pin := filepath.Join(d.bpffs, "block4")
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("at READY=1 the block map is not even pinned: %v", err)
	}
	if got := countKeys(t, pin); got != n+1 {
		t.Errorf("at READY=1 the kernel holds %d IPv4 blocks, want all %d of the store", got, n+1)
	}
	e.dropped(t, e.attackerV4Peer())
	e.served(t, e.clientV4Peer())
	if err := d.proc.Signal(unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	d.waitReady(d.proc)
}

// countKeys counts the keys of a pinned BPF map.
func countKeys(t *testing.T, pin string) int {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatalf("open pinned map: %v", err)
	}
	defer m.Close()
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	n := 0
	var prev any // nil: the first key
	for {
		err := m.NextKey(prev, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n
		}
		if err != nil {
			t.Fatalf("iterate %s: %v", pin, err)
		}
		n++
		copy(key, next)
		prev = key
	}
}

// Trap blocks of an address that is allowlisted now are lifted when the daemon starts: gone from
// the kernel (its packets pass) and the store (not listed), with an unblock event in the log.
func TestTrapBlocksAllowlistedAtStart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{})
		d := e.d
		trapHit(e, e.attackerV4Peer(), 79)
		listedByTrap(t, d, e.attacker4())
		e.dropped(t, e.attackerV4Peer())
		d.stop()
		if backend == "xdp" {
			// One made by the data path while no daemon runs: in the kernel only until the start
			// adopts it (the iptables back-end traps in user space: nothing while it is down).
			trapHit(e, e.attackerV6Peer(), 79)
			e.dropped(t, e.attackerV6Peer())
		}
		cfg := baseConfig()
		cfg["allow"] = []string{resolverV4.String(), e.attacker4().String(), netip.PrefixFrom(attackerV6, 64).Masked().String()}
		d.writeConfig(cfg)
		d.start()
		entries := d.list(t)
		if en := covering(entries, e.attacker4()); en != nil {
			t.Errorf("allowlisted %s still blocked after the start: %+v", e.attacker4(), *en)
		}
		e.served(t, e.attackerV4Peer())
		requireEvents(t, d, "unblock", host32(e.attacker4()))
		if backend == "xdp" {
			if en := covering(entries, attackerV6); en != nil {
				t.Errorf("allowlisted %s still blocked after the start: %+v", attackerV6, *en)
			}
			e.served(t, e.attackerV6Peer())
			requireEvents(t, d, "unblock", net64(attackerV6))
		}
		if len(entries) != 0 {
			t.Errorf("blocks after the start: %v, want none", prefixes(entries))
		}
	})
}

// The resolvers in /etc/resolv.conf are allowlisted end to end: snared runs in a mount namespace
// of its own where a resolv.conf naming lab addresses is bound over /etc/resolv.conf (the path
// is fixed in the daemon); blocking them is refused, and a spoofed trap hit from one blocks
// nothing, while the same hit from an address next to it does block.
func TestResolversAllowlisted(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		requireTools(t, "hping3", "unshare")
		if fi, err := os.Stat("/etc/resolv.conf"); err != nil || !fi.Mode().IsRegular() {
			prerequisite(t, fmt.Sprintf("needs a regular file /etc/resolv.conf to bind a lab resolv.conf over (%v)", err))
		}
		resolver4, resolver6 := netip.MustParseAddr("198.18.1.77"), netip.MustParseAddr("2001:db8:77::53")
		other := netip.MustParseAddr("198.18.1.78")
		e := newEnv(t, backend, options{noStart: true})
		d := e.d
		resolv := filepath.Join(e.dir, "resolv.conf")
		content := "# lab\nsearch lab.invalid\nnameserver " + resolver4.String() + "\nnameserver " + resolver6.String() + "\n"
		if err := os.WriteFile(resolv, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		// unshare and sh exec what follows them: the process started is snared itself.
		argv := append([]string{"--mount", "--propagation", "private", "sh", "-c",
			`mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolv, "env"}, cleanEnv()...)
		argv = append(append(argv, bins.snared), d.args()...)
		p, err := e.lab.StartShared(e.lab.Host.NS, "unshare", argv...)
		if err != nil {
			t.Fatal(err)
		}
		d.proc = p
		d.waitReady(p)

		for _, r := range []netip.Addr{resolver4, resolver6} {
			if !allowHas(t, d, host32(r), "resolver") {
				t.Errorf("allowlist lacks %s (resolver)", r)
			}
			checkRefused(t, d.ctl("block", r.String()), r.String())
		}
		if b, err := os.ReadFile("/etc/resolv.conf"); err != nil || strings.Contains(string(b), resolver4.String()) {
			t.Fatalf("the machine's /etc/resolv.conf shows the lab's (%v): the bind mount leaked", err)
		}

		dst := e.hostFor("attacker", false).String()
		for _, src := range []netip.Addr{resolver4, other} {
			args := []string{"-q", "-c", "3", "-i", "u20000", "-a", src.String(), "-S", "-p", "79", dst}
			out, _ := e.lab.Run(e.lab.Attacker().NS, "hping3", args...) // non-zero: nothing answers
			t.Logf("hping3 %s: %s", strings.Join(args, " "), strings.TrimSpace(out))
		}
		listedByTrap(t, d, other) // the same hit from a source not listed in resolv.conf blocks it
		if en := covering(d.list(t), resolver4); en != nil {
			t.Errorf("resolver %s blocked by a spoofed trap hit: %+v", resolver4, *en)
		}
		if ev := findScan(d.events(t), resolver4); ev == nil || ev.Action != "allowlisted" {
			t.Errorf("scan event from the resolver %s: %+v, want one with action allowlisted", resolver4, ev)
		}
	})
}
