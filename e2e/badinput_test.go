package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
)

// Every bad input a user can give gets a clear message naming the problem, a non-zero exit, and
// changes nothing.
func TestBadInput(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{config: map[string]any{
			"block.min_prefix_v4": 16,
			"block.min_prefix_v6": 48,
		}})
		d := e.d
		// Something to keep: "nothing changed" must be able to fail.
		d.mustCtl(t, "block", "198.18.99.9", "--ttl", "1h", "--reason", "keep me")
		d.mustCtl(t, "block", e.attacker4().String(), "--ttl", "2h") // "unchanged" in traffic too
		d.mustCtl(t, "block", "2001:db8:99::/64", "--ttl", "permanent")
		d.mustCtl(t, "allow", "add", "198.18.55.0/24")
		want := snapshot(d.list(t))
		wantAllow := d.mustCtl(t, "allow", "list")

		// unchanged fails the test if the block list or the allowlist moved.
		unchanged := func(t *testing.T) {
			t.Helper()
			if got := snapshot(d.list(t)); got != want {
				t.Errorf("block list changed:\n%s\nwant:\n%s", got, want)
			}
			if got := d.mustCtl(t, "allow", "list"); got != wantAllow {
				t.Errorf("allowlist changed:\n%s\nwant:\n%s", got, wantAllow)
			}
		}
		own4 := e.hostFor("attacker", false).String()
		own6 := e.hostFor("client", true).String()

		cases := []struct {
			name string
			args []string
			want []string // every one must appear in stderr (case-insensitive)
		}{
			{"malformed v4", []string{"block", "198.18.1.300"}, []string{"198.18.1.300"}},
			{"malformed word", []string{"block", "attacker"}, []string{"attacker"}},
			{"malformed among good", []string{"block", "198.18.98.1", "198.18.98.x"}, []string{"198.18.98.x"}},
			{"malformed v6", []string{"block", "2001:db8::1::2"}, []string{"2001:db8::1::2"}},
			{"prefix > 32", []string{"block", "198.18.0.0/33"}, []string{"198.18.0.0/33"}},
			{"prefix > 128", []string{"block", "2001:db8::/129"}, []string{"2001:db8::/129"}},
			{"negative prefix", []string{"block", "198.18.0.0/-1"}, []string{"198.18.0.0/-1"}},
			{"empty prefix", []string{"block", "198.18.0.0/"}, []string{"198.18.0.0/"}},
			{"all v4", []string{"block", "0.0.0.0/0"}, []string{"0.0.0.0/0"}},
			{"all v6", []string{"block", "::/0"}, []string{"::/0"}},
			{"unspecified", []string{"block", "0.0.0.0"}, []string{"0.0.0.0"}},
			{"wider than min v4", []string{"block", "198.18.0.0/15"}, []string{"198.18.0.0/15"}},
			{"wider than min v6", []string{"block", "2001:db8::/32"}, []string{"2001:db8::/32"}},
			{"own v4", []string{"block", own4}, []string{own4}},
			{"own v6", []string{"block", own6}, []string{own6}},
			{"own v4-mapped", []string{"block", "::ffff:" + own4}, []string{own4}},
			{"loopback", []string{"block", "127.0.0.1"}, []string{"127.0.0.1"}},
			{"loopback v6", []string{"block", "::1"}, []string{`"::1" is a loopback address`}},
			{"link-local v6", []string{"block", "fe80::5"}, []string{"fe80::5", "link-local", "fe80::/10"}},
			{"link-local v4 CIDR", []string{"block", "169.254.0.0/16"}, []string{"169.254.0.0/16", "link-local"}},
			{"multicast v6", []string{"block", "ff02::1"}, []string{"ff02::1", "multicast"}},
			{"multicast v4 among good", []string{"block", "198.18.98.1", "239.1.2.3"}, []string{"239.1.2.3", "multicast"}},
			{"reason too long", []string{"block", "198.18.98.1", "--reason", strings.Repeat("r", 257)}, []string{"reason is 257 bytes long", "at most 256"}},
			{"reason with newline", []string{"block", "198.18.98.1", "--reason", "ssh\n198.18.98.2 forged"}, []string{"reason", "control character"}},
			{"reason with escape", []string{"block", "198.18.98.1", "--reason", "\x1b[2J"}, []string{`\x1b[2J`, "control character"}},
			{"gateway", []string{"block", gatewayV4.String()}, []string{gatewayV4.String()}},
			{"gateway v6", []string{"block", gatewayV6.String()}, []string{gatewayV6.String()}},
			{"resolver (config allow)", []string{"block", resolverV4.String()}, []string{resolverV4.String()}},
			{"manual allow", []string{"block", "198.18.55.7"}, []string{"198.18.55.7"}},
			{"ttl garbage", []string{"block", "198.18.98.1", "--ttl", "5x"}, []string{"5x"}},
			{"ttl negative", []string{"block", "198.18.98.1", "--ttl=-5m"}, []string{"-5m"}},
			{"ttl zero", []string{"block", "198.18.98.1", "--ttl", "0"}, []string{"0"}},
			{"ttl empty", []string{"block", "198.18.98.1", "--ttl", ""}, []string{"ttl"}},
			{"ttl word", []string{"block", "198.18.98.1", "--ttl", "forever"}, []string{"forever"}},
			{"unknown flag", []string{"block", "198.18.98.1", "--frobnicate"}, []string{"frobnicate"}},
			{"unknown verb", []string{"frobnicate", "198.18.98.1"}, []string{"frobnicate"}},
			{"block without target", []string{"block"}, nil},
			{"unblock malformed", []string{"unblock", "198.18.99.999"}, []string{"198.18.99.999"}},
			{"unblock all v4", []string{"unblock", "0.0.0.0/0"}, []string{"0.0.0.0/0"}},
			{"allow everything", []string{"allow", "add", "0.0.0.0/0"}, []string{"0.0.0.0/0"}},
			{"allow malformed", []string{"allow", "add", "198.18.1"}, []string{"198.18.1"}},
			{"list bad output", []string{"list", "-o", "yaml"}, []string{"yaml"}},
			{"export bad format", []string{"export", "--format", "csv"}, []string{"csv"}},
			{"import missing file", []string{"import", filepath.Join(e.dir, "no-such.list")}, []string{"no-such.list"}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				r := d.ctl(tc.args...)
				checkRefused(t, r, tc.want...)
				unchanged(t)
			})
		}

		t.Run("import with bad lines", func(t *testing.T) {
			// Lines the client can judge alone (syntax, dates, the whole address space) and
			// lines only the daemon can judge (allowlisted addresses): both name their lines and
			// import nothing without --skip-bad.
			for _, bc := range []struct {
				name, content string
				badLines      []string
			}{
				{"malformed", "198.18.97.1 20250101\n198.18.97.2\nnot-an-address\n198.18.97.3 2025-13-45\n0.0.0.0/0\n", []string{"3", "4", "5"}},
				{"allowlisted", "# own address and resolver\n198.18.97.2\n" + own4 + "\n" + resolverV4.String() + " " + time.Now().Format("20060102") + "\n", []string{"3", "4"}},
			} {
				t.Run(bc.name, func(t *testing.T) {
					f := filepath.Join(e.dir, bc.name+".list")
					if err := os.WriteFile(f, []byte(bc.content), 0o600); err != nil {
						t.Fatal(err)
					}
					r := d.ctl("import", f)
					checkRefused(t, r)
					for _, n := range bc.badLines {
						if !regexp.MustCompile(`(^|[^\d.])` + n + `([^\d.]|$)`).MatchString(r.stderr) {
							t.Errorf("import error does not name line %s:\n%v", n, r)
						}
					}
					unchanged(t)

					// With --skip-bad the good line is imported (a dated one is long expired).
					r = d.ctl("import", "--skip-bad", f)
					if r.code != 0 {
						t.Fatalf("import --skip-bad: %v", r)
					}
					if l := d.list(t); find(l, "198.18.97.2/32") == nil || len(l) != 4 {
						t.Errorf("import --skip-bad: %v, want the kept entries and 198.18.97.2/32", prefixes(l))
					}
					d.mustCtl(t, "unblock", "198.18.97.2")
					unchanged(t)
				})
			}
		})

		// The daemon's own checks, for clients other than snarectl (which checks first).
		t.Run("raw API bodies", func(t *testing.T) {
			hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var dl net.Dialer
				return dl.DialContext(ctx, "unix", d.socket)
			}}}
			for _, rc := range []struct {
				path, body string
				status     int
				want       string
			}{
				{"/v1/block", `{"targets":["198.18.98.1"]}{"targets":["198.18.98.2"]}`, 400, "data after the JSON document"},
				{"/v1/unblock", `{"targets":["198.18.99.9"]} trailing`, 400, "data after the JSON document"},
				{"/v1/block", `{"targets":["198.18.98.1"],"reason":"ssh\n198.18.98.2 forged"}`, 400, "control character U+000A"},
				{"/v1/block", `{"targets":["198.18.98.1"],"reason":"` + strings.Repeat("r", 300) + `"}`, 400, "reason is 300 bytes long"},
				{"/v1/import", `{"content":"198.18.98.1\n","reason":"\u001b[2J"}`, 400, "control character U+001B"},
				{"/v1/block", `{"targets":["fe80::5"]}`, 400, "link-local"},
				{"/v1/block", `{"targets":["198.18.98.1"],"reason":"` + strings.Repeat("r", 9<<20) + `"}`, 413, "request body larger than"},
			} {
				resp, err := hc.Post("http://snared"+rc.path, "application/json", strings.NewReader(rc.body))
				if err != nil {
					t.Fatalf("POST %s: %v", rc.path, err)
				}
				var e api.ErrorResponse
				err = json.NewDecoder(resp.Body).Decode(&e)
				resp.Body.Close()
				if resp.StatusCode != rc.status || err != nil || !strings.Contains(e.Error, rc.want) {
					t.Errorf("POST %s %.80q: %d %q (%v), want %d with %q", rc.path, rc.body, resp.StatusCode, e.Error, err, rc.status, rc.want)
				}
				unchanged(t)
			}
		})

		t.Run("socket missing", func(t *testing.T) {
			sock := filepath.Join(e.dir, "nothing-here.sock")
			r := runBin(bins.snarectl, "--socket", sock, "list")
			checkRefused(t, r, sock)
			r = runBin(bins.snarectl, "--socket", sock, "block", "198.18.98.1")
			checkRefused(t, r, sock)
			unchanged(t)
		})

		t.Run("broken config", func(t *testing.T) {
			good := d.config
			if r := runBin(bins.snared, "--check-config", "--config", good); r.code != 0 {
				t.Fatalf("the suite's own config does not check: %v", r)
			}
			for _, bc := range []struct{ name, yaml, want string }{
				{"yaml syntax", "block:\n  ttl: [5d\n", "yaml"},
				{"unknown key", "blokc:\n  ttl: 5d\n", "blokc"},
				{"bad ttl", "block:\n  ttl: -5d\n", "-5d"},
				{"bad port", "trap:\n  tcp_ports: \"79,99999\"\n", "99999"},
				{"bad backend", "backend: ebpf-magic\n", "ebpf-magic"},
				{"whole v4 allow", "allow: [\"0.0.0.0/0\"]\n", "0.0.0.0/0"},
			} {
				t.Run(bc.name, func(t *testing.T) {
					f := filepath.Join(e.dir, "broken-"+strings.ReplaceAll(bc.name, " ", "-")+".yaml")
					if err := os.WriteFile(f, []byte(bc.yaml), 0o600); err != nil {
						t.Fatal(err)
					}
					checkRefused(t, runBin(bins.snared, "--check-config", "--config", f), bc.want)
				})
			}
			missing := filepath.Join(e.dir, "missing.yaml")
			checkRefused(t, runBin(bins.snared, "--check-config", "--config", missing), missing)
			// Starting for real with a broken config fails too, before touching anything.
			bad := filepath.Join(e.dir, "broken-start.yaml")
			if err := os.WriteFile(bad, []byte("blokc: 1\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			scratch := shortTempDir(t)
			t.Cleanup(func() { os.RemoveAll(d.bpffs + "-never") }) // only there if the config was wrongly accepted
			args := []string{"--config", bad, "--backend", backend, "--state-dir", filepath.Join(scratch, "state"),
				"--socket", filepath.Join(scratch, "x.sock"), "--bpffs", d.bpffs + "-never", "--iface", e.lab.HostIface("client").Name}
			checkRefused(t, runBin(bins.snared, args...), "blokc")
			unchanged(t)
		})

		// A second daemon for the same host (same pin directory, or same state directory) is
		// refused before it touches anything: the first keeps enforcing and answering.
		for _, sc := range []struct {
			name                    string
			sameBPFFS, sameStateDir bool
		}{
			{"second daemon on the same bpffs", true, false},
			{"second daemon on the same state dir", false, true},
		} {
			t.Run(sc.name, func(t *testing.T) {
				second := e.newDaemon("second-" + strconv.FormatBool(sc.sameBPFFS))
				if sc.sameBPFFS {
					second.bpffs = d.bpffs
				}
				if sc.sameStateDir {
					second.stateDir = d.stateDir
				}
				p := second.launch()
				second.proc = p
				werr := p.Wait(20 * time.Second)
				t.Logf("second snared: %s", strings.TrimSpace(p.Output()))
				if exited, _ := p.Exited(); !exited {
					t.Fatalf("second snared still running, want it refused:\n%s", p.Output())
				}
				if !sc.sameBPFFS {
					if entries, err := os.ReadDir(second.bpffs); err == nil && len(entries) > 0 {
						t.Errorf("refused snared left pins in %s: %d entries", second.bpffs, len(entries))
					}
					os.RemoveAll(second.bpffs)
				}
				// It owns nothing: its teardown must not uninstall the first daemon's program.
				second.bpffs = ""
				if werr == nil {
					t.Fatalf("second snared exited 0, want an error:\n%s", p.Output())
				}
				out := strings.ToLower(p.Output())
				if !strings.Contains(out, "lock") && !strings.Contains(out, "another snared") && !strings.Contains(out, "already") {
					t.Errorf("second snared's message does not say another daemon holds the host:\n%s", p.Output())
				}
				if _, err := os.Stat(second.socket); err == nil {
					t.Errorf("second snared left a socket at %s", second.socket)
				}
				unchanged(t)
				e.dropped(t, e.attackerV4Peer())
				e.served(t, e.clientV4Peer())
				if r := d.ctl("status"); r.code != 0 {
					t.Errorf("first daemon after the second one's attempt: %v", r)
				}
			})
		}
	})
}

// checkRefused fails the test unless r exited non-zero with a message naming every want.
func checkRefused(t *testing.T, r result, want ...string) {
	t.Helper()
	msg := r.stderr
	if r.code == 0 {
		t.Errorf("succeeded, want an error: %v", r)
		return
	}
	if r.code < 0 {
		t.Errorf("did not run: %v", r)
		return
	}
	if strings.TrimSpace(msg) == "" {
		t.Errorf("no message on stderr: %v", r)
		return
	}
	for _, w := range want {
		if !strings.Contains(strings.ToLower(msg), strings.ToLower(w)) {
			t.Errorf("message does not name %q: %v", w, r)
		}
	}
}
