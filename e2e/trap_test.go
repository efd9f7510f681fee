package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
)

// scan is one nmap scan type and what its trap event must say.
type scan struct {
	name  string
	flags []string // nmap's scan-type flags
	proto string   // "tcp" or "udp"
	v6    bool
	// tcpFlags: the event's tcp_flags must contain every flag of one of these spellings.
	tcpFlags [][]string
	// seesOpen: the scan type can tell an open port (a SYN-ACK), so nmap must not report the
	// web port open: the trap port comes first (-r) and the block lands before the web port's
	// probe.
	seesOpen bool
}

var scans = []scan{
	{name: "connect", flags: []string{"-sT"}, proto: "tcp", tcpFlags: [][]string{{"SYN"}}, seesOpen: true},
	{name: "syn", flags: []string{"-sS"}, proto: "tcp", tcpFlags: [][]string{{"SYN"}}, seesOpen: true},
	{name: "fin", flags: []string{"-sF"}, proto: "tcp", tcpFlags: [][]string{{"FIN"}}},
	{name: "null", flags: []string{"-sN"}, proto: "tcp", tcpFlags: [][]string{{"NULL"}}},
	{name: "xmas", flags: []string{"-sX"}, proto: "tcp", tcpFlags: [][]string{{"FIN", "PSH", "URG"}, {"XMAS"}}},
	{name: "udp", flags: []string{"-sU"}, proto: "udp"},
	{name: "syn-ipv6", flags: []string{"-6", "-sS"}, proto: "tcp", v6: true, tcpFlags: [][]string{{"SYN"}}, seesOpen: true},
}

// A real nmap from the attacker trips a trap port: the scanner is blocked (listed, its packets
// to the real web port dropped), the client is still served, and the event log names the scan.
func TestTrapScans(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		for _, sc := range scans {
			t.Run(sc.name, func(t *testing.T) {
				requireTools(t, "nmap")
				e := newEnv(t, backend, options{})
				d := e.d
				att, src, dst := e.attackerV4Peer(), e.attacker4(), e.hostFor("attacker", false)
				if sc.v6 {
					att, src, dst = e.attackerV6Peer(), attackerV6, e.hostFor("attacker", true)
				}
				e.served(t, att) // reachable before the scan

				ports := "T:" + trapTCPPorts + "," + strconv.Itoa(webPort)
				if sc.proto == "udp" {
					ports = "U:" + trapUDPPorts
				}
				args := append([]string{"-n", "-Pn", "-r", "--max-retries", "1", "--host-timeout", "60s",
					"-p", ports}, sc.flags...)
				if sc.v6 {
					args = append(args, "-S", src.String(), "-e", e.lab.Attacker().Ifaces[0].Name)
				}
				args = append(args, dst.String())
				out, err := e.lab.Run(e.lab.Attacker().NS, "nmap", args...)
				t.Logf("nmap %s:\n%s", strings.Join(args, " "), out)
				if err != nil {
					t.Fatalf("nmap: %v", err)
				}
				// nmap aligns its columns: "8080/tcp  open   http-proxy".
				if sc.seesOpen && regexp.MustCompile(fmt.Sprintf(`(?m)^%d/tcp\s+open\s`, webPort)).MatchString(out) {
					t.Errorf("nmap saw the web port %d open: the scanner's probes got past the trap port it hit first", webPort)
				}

				// Listed (the event reaches user space asynchronously to the block itself).
				var en *api.Entry
				if err := eventually(5*time.Second, func() error {
					en = covering(d.list(t), src)
					if en == nil {
						return fmt.Errorf("scanner %s not in snarectl list: %v", src, prefixes(d.list(t)))
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if en.Origin != "trap" {
					t.Errorf("entry %+v: origin %q, want trap", *en, en.Origin)
				}
				if en.Expires.IsZero() || time.Until(en.Expires) < 50*time.Minute {
					t.Errorf("entry %+v: want the configured 1h TTL", *en)
				}

				e.dropped(t, att)
				e.served(t, e.clientV4Peer())
				e.served(t, e.clientV6Peer())

				// The event log names the scan: CLI text and the structured event.
				text := d.mustCtl(t, "events")
				if !strings.Contains(text, "scan") || !strings.Contains(text, src.String()) {
					t.Errorf("snarectl events does not name the scan by %s:\n%s", src, text)
				}
				ev := findScan(d.events(t), src)
				if ev == nil {
					t.Fatalf("no scan event for %s in the event log", src)
				}
				if ev.Proto != sc.proto || ev.Action != "blocked" || len(ev.Ports) == 0 {
					t.Errorf("scan event %+v: want proto %s, action blocked, trap ports hit", *ev, sc.proto)
				}
				for _, p := range ev.Ports {
					if !slices.Contains(strings.Split(trapPortsOf(sc.proto), ","), strconv.Itoa(int(p))) {
						t.Errorf("scan event names port %d, not a %s trap port (%s)", p, sc.proto, trapPortsOf(sc.proto))
					}
				}
				if len(sc.tcpFlags) > 0 && !slices.ContainsFunc(sc.tcpFlags, func(flags []string) bool {
					return containsAll(strings.ToUpper(ev.TCPFlags), flags...)
				}) {
					t.Errorf("scan event tcp_flags %q, want one of %v", ev.TCPFlags, sc.tcpFlags)
				}
				// The JSON-lines log on disk (the old scan.log) has it too.
				if !eventsFileHasScan(t, d, src) {
					t.Errorf("%s has no scan event for %s", d.eventsFile(), src)
				}
				if st := d.status(t); st.Trap.Blocks == 0 || st.Trap.Hits == 0 {
					t.Errorf("status trap counters: %+v, want hits and blocks", st.Trap)
				}
			})
		}
	})
}

// A flood from random spoofed sources at trap ports churns scan state but cannot touch a manual
// block; the daemon keeps answering and counts the events it had to suppress.
func TestTrapFloodSpoofed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		requireTools(t, "hping3", "xargs")
		e := newEnv(t, backend, options{config: map[string]any{
			"trap.events_per_second": 5,
			"trap.event_burst":       10,
			// Trap blocks whose events were suppressed are adopted from the kernel by the sweep.
			"sweep.interval": "2s",
		}})
		d := e.d
		d.mustCtl(t, "block", e.attacker4().String(), "--ttl", "2h", "--reason", "manual, must survive")
		first := find(d.list(t), host32(e.attacker4()))
		if first == nil {
			t.Fatalf("manual block not listed: %v", prefixes(d.list(t)))
		}
		manual := snapshot([]api.Entry{*first})

		// 300 distinct random sources in 198.19.0.0/16 (inside 198.18.0.0/15, outside the lab's
		// subnets), 3 SYNs each at a trap port, 24 hping3 processes at a time.
		seen := map[netip.Addr]bool{}
		var lines []string
		for len(lines) < 300 {
			a := netip.AddrFrom4([4]byte{198, 19, byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
			if !seen[a] {
				seen[a] = true
				lines = append(lines, a.String())
			}
		}
		dst := e.hostFor("attacker", false).String()
		script := fmt.Sprintf(`printf '%%s\n' %s | xargs -P 24 -I{} sh -c 'hping3 -q -S -c 3 -i u2000 -p 79 -a {} %s >/dev/null 2>&1; true'`,
			strings.Join(lines, " "), dst)
		flood, err := e.lab.Start(e.lab.Attacker().NS, "sh", "-c", script)
		if err != nil {
			t.Fatal(err)
		}

		// Responsive during the flood: every status call answers within its bound.
		for i := 0; i < 5; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := api.NewClient(d.socket).Status(ctx)
			cancel()
			if err != nil {
				t.Errorf("status during the flood: %v", err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err := flood.Wait(90 * time.Second); err != nil {
			t.Fatalf("flood: %v\n%s", err, flood.Output())
		}

		st := d.status(t)
		t.Logf("after the flood: trap %+v, entries %d", st.Trap, st.Entries)
		if st.Trap.Hits == 0 || st.Trap.Blocks == 0 {
			t.Errorf("trap counters %+v: the flood did not reach the trap", st.Trap)
		}
		if err := eventually(5*time.Second, func() error {
			if s := d.status(t).Trap.Suppressed; s == 0 {
				return fmt.Errorf("events_suppressed is 0 after %d trap hits at 5 events/s (burst 10)", d.status(t).Trap.Hits)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		en := find(d.list(t), host32(e.attacker4()))
		if en == nil {
			t.Fatalf("manual block of %s gone after the flood", e.attacker4())
		}
		if got := snapshot([]api.Entry{*en}); got != manual {
			t.Errorf("manual block changed by the flood:\n%s\nwant:\n%s", got, manual)
		}
		e.dropped(t, e.attackerV4Peer())
		e.served(t, e.clientV4Peer())

		// Every block the kernel made reaches the durable store, suppressed event or not.
		if err := eventually(10*time.Second, func() error {
			l := d.list(t)
			var missing []string
			for _, a := range lines {
				if find(l, a+"/32") == nil {
					missing = append(missing, a)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("%d of %d trap-blocked sources not in snarectl list (e.g. %s); status entries %d",
					len(missing), len(lines), missing[0], d.status(t).Entries)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})
}

// A spoofed scan whose source is the host's gateway or resolver blocks nothing: a scanner must
// never be able to cut the host off from them.
func TestTrapSpoofedGatewayResolver(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		requireTools(t, "hping3")
		e := newEnv(t, backend, options{})
		d := e.d

		allow, err := api.NewClient(d.socket).AllowList(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		sources := map[string]string{}
		for _, a := range allow.Entries {
			sources[a.Prefix] = a.Source
		}
		if sources[host32(gatewayV4)] != "gateway" || sources[host32(gatewayV6)] != "gateway" {
			t.Errorf("allowlist %v: want %s and %s as gateway", allow.Entries, gatewayV4, gatewayV6)
		}
		if sources[host32(resolverV4)] == "" {
			t.Errorf("allowlist %v: want the resolver %s (config)", allow.Entries, resolverV4)
		}

		dst := e.hostFor("attacker", false).String()
		for _, spoof := range []netip.Addr{gatewayV4, resolverV4} {
			for _, mode := range [][]string{{"-S", "-p", "79"}, {"-F", "-p", "111"}, {"-F", "-P", "-U", "-p", "143"}, {"--udp", "-p", "69"}} {
				args := append(append([]string{"-q", "-c", "3", "-i", "u20000", "-a", spoof.String()}, mode...), dst)
				// hping3 exits non-zero when nothing answers: expected here.
				out, _ := e.lab.Run(e.lab.Attacker().NS, "hping3", args...)
				t.Logf("hping3 %s: %s", strings.Join(args, " "), strings.TrimSpace(out))
			}
		}
		// Give the events time to arrive, then check that nothing was blocked.
		var evs []api.Event
		if err := eventually(5*time.Second, func() error {
			evs = d.events(t)
			for _, spoof := range []netip.Addr{gatewayV4, resolverV4} {
				if ev := findScan(evs, spoof); ev == nil {
					return fmt.Errorf("no scan event for %s (the event must say it was allowlisted)", spoof)
				}
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		for _, spoof := range []netip.Addr{gatewayV4, resolverV4} {
			for _, ev := range evs {
				if ev.Event == "scan" && ev.Address == spoof.String() && ev.Action != "allowlisted" {
					t.Errorf("scan event from %s: action %q, want allowlisted", spoof, ev.Action)
				}
			}
		}
		if l := d.list(t); len(l) != 0 {
			t.Errorf("blocked after spoofed scans from the gateway and resolver: %v", prefixes(l))
		}
		if st := d.status(t); st.Trap.Blocks != 0 {
			t.Errorf("trap blocks %d, want 0", st.Trap.Blocks)
		}
		// The real attacker, never blocked, is still served.
		e.served(t, e.attackerV4Peer())
	})
}

// covering returns the entry whose prefix contains a.
func covering(entries []api.Entry, a netip.Addr) *api.Entry {
	for i := range entries {
		if p, err := netip.ParsePrefix(entries[i].Prefix); err == nil && p.Contains(a) {
			return &entries[i]
		}
	}
	return nil
}

// findScan returns the latest scan event from a.
func findScan(evs []api.Event, a netip.Addr) *api.Event {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Event == "scan" && sameAddr(evs[i].Address, host32(a)) {
			return &evs[i]
		}
	}
	return nil
}

func trapPortsOf(proto string) string {
	if proto == "udp" {
		return trapUDPPorts
	}
	return trapTCPPorts
}

// eventsFile is the daemon's JSON-lines event log (events_file defaults to state_dir/events.jsonl).
func (d *daemon) eventsFile() string { return filepath.Join(d.stateDir, "events.jsonl") }

// eventsFileHasScan reports whether the event log file has a scan event from a; every line must
// be one JSON event.
func eventsFileHasScan(t *testing.T, d *daemon, a netip.Addr) bool {
	t.Helper()
	b, err := os.ReadFile(d.eventsFile())
	if err != nil {
		t.Errorf("read the event log: %v", err)
		return false
	}
	found := false
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var ev api.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Errorf("%s line %d is not a JSON event: %v: %q", d.eventsFile(), i+1, err, line)
			continue
		}
		if ev.Event == "scan" && sameAddr(ev.Address, host32(a)) {
			found = true
		}
	}
	return found
}

// A source is blocked when it touches trap.threshold distinct trap ports within trap.window, and
// not before.
func TestTrapThreshold(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		requireTools(t, "hping3")
		e := newEnv(t, backend, options{config: map[string]any{"trap.threshold": 3}})
		d := e.d
		dst := e.hostFor("attacker", false).String()
		probe := func(port string) {
			t.Helper()
			// Several SYNs to one port count once: distinct ports are what matters.
			out, _ := e.lab.Run(e.lab.Attacker().NS, "hping3", "-q", "-S", "-c", "3", "-i", "u20000", "-p", port, dst)
			t.Logf("hping3 -S -p %s: %s", port, strings.TrimSpace(out))
		}
		probe("79")
		probe("111")
		time.Sleep(500 * time.Millisecond) // an early (wrong) block would have been listed by now
		if l := d.list(t); len(l) != 0 {
			t.Fatalf("blocked after 2 of 3 trap ports: %v", prefixes(l))
		}
		e.served(t, e.attackerV4Peer())
		probe("143")
		listedByTrap(t, d, e.attacker4())
		e.dropped(t, e.attackerV4Peer())
		if ev := findScan(d.events(t), e.attacker4()); ev == nil || len(ev.Ports) != 3 {
			t.Errorf("scan event %+v: want the 3 trap ports hit", ev)
		}
	})
}
