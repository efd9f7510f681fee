package e2e

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
)

// The allowlist always wins over a block: allowlisting a blocked source lifts the block (the
// daemon drops blocks an allowlist change covers), durably; removing the allow entry again does
// not bring the old block back, and the source can be blocked anew.
func TestAllowlistWins(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{})
		d := e.d
		att := e.attacker4().String()
		d.mustCtl(t, "block", att, "--ttl", "1h")
		e.dropped(t, e.attackerV4Peer())

		d.mustCtl(t, "allow", "add", att)
		if !allowHas(t, d, host32(e.attacker4()), "manual") {
			t.Errorf("allow list lacks %s (manual)", att)
		}
		e.served(t, e.attackerV4Peer())
		// Allowlisting an address lifts its block (logged as an unblock): the allowlist wins and
		// the block does not linger hidden in the kernel.
		if en := find(d.list(t), host32(e.attacker4())); en != nil {
			t.Errorf("block %+v still listed after allow add", *en)
		}
		requireEvents(t, d, "unblock", host32(e.attacker4()))
		// And it cannot be blocked again while allowlisted.
		checkRefused(t, d.ctl("block", att), att)

		// Durable: a restarted daemon still allows it.
		d.stop()
		d.start()
		if !allowHas(t, d, host32(e.attacker4()), "manual") {
			t.Errorf("allow list lost %s over a restart", att)
		}
		e.served(t, e.attackerV4Peer())

		// Removed from the allowlist, it can be blocked again.
		d.mustCtl(t, "allow", "del", att)
		if allowHas(t, d, host32(e.attacker4()), "") {
			t.Errorf("%s still allowlisted after allow del", att)
		}
		e.served(t, e.attackerV4Peer())
		d.mustCtl(t, "block", att, "--ttl", "1h")
		e.dropped(t, e.attackerV4Peer())
		e.served(t, e.clientV4Peer())
	})
}

// allowHas reports whether the allowlist has prefix (from source, unless source is empty).
func allowHas(t *testing.T, d *daemon, prefix, source string) bool {
	t.Helper()
	allow, err := api.NewClient(d.socket).AllowList(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range allow.Entries {
		if a.Prefix == prefix && (source == "" || a.Source == source) {
			return true
		}
	}
	return false
}

// dry_run counts what would be dropped and passes it.
func TestDryRun(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{config: map[string]any{"dry_run": true}})
		d := e.d
		d.mustCtl(t, "block", e.attacker4().String(), "--ttl", "1h")
		if find(d.list(t), host32(e.attacker4())) == nil {
			t.Fatalf("not listed: %v", prefixes(d.list(t)))
		}
		e.served(t, e.attackerV4Peer())
		st := d.status(t)
		if !st.DryRun {
			t.Errorf("status dry_run false")
		}
		var would uint64
		for reason, n := range st.ByReason {
			if strings.Contains(reason, "dry") {
				would += n
			}
		}
		if would == 0 {
			t.Errorf("status counts no dry-run drops: %v", st.ByReason)
		}
	})
}

// Blocking a source again counts a repeat offence; with the default TTL (block.ttl, 1h here) it
// escalates by block.escalation.factor (2); an explicit --ttl is taken as given, but a block is
// never shortened by blocking again.
func TestRepeatOffence(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{})
		d := e.d
		att := e.attacker4().String()
		check := func(step string, offences int, ttl time.Duration) {
			t.Helper()
			en := find(d.list(t), host32(e.attacker4()))
			if en == nil {
				t.Fatalf("%s: not listed", step)
			}
			if en.Offences != offences {
				t.Errorf("%s: offences %d, want %d", step, en.Offences, offences)
			}
			if got := time.Until(en.Expires); got < ttl-2*time.Minute || got > ttl+2*time.Minute {
				t.Errorf("%s: expires in %s, want about %s", step, got.Round(time.Second), ttl)
			}
		}
		d.mustCtl(t, "block", att)
		check("first block", 1, time.Hour)
		d.mustCtl(t, "unblock", att)
		d.mustCtl(t, "block", att)
		check("blocked again after unblock", 2, 2*time.Hour)
		d.mustCtl(t, "block", att)
		check("blocked again while blocked", 3, 4*time.Hour)
		// Blocking again extends, never shortens (unblock first for that), explicit TTL or not.
		d.mustCtl(t, "block", att, "--ttl", "30m")
		check("explicit shorter ttl", 4, 4*time.Hour)
		d.mustCtl(t, "block", att, "--ttl", "10h")
		check("explicit longer ttl", 5, 10*time.Hour)
		e.dropped(t, e.attackerV4Peer())
	})
}

// `snarectl events -f` streams events as they happen.
func TestEventsFollow(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{})
		d := e.d
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bins.snarectl, "--socket", d.socket, "events", "-f")
		cmd.Env = cleanEnv()[1:]
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cancel() // kills the process we started
			cmd.Wait()
		}()
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Past events first (the daemon's start), then the block made after following began.
		time.Sleep(500 * time.Millisecond)
		d.mustCtl(t, "block", e.attacker4().String(), "--reason", "followed")
		deadline := time.After(10 * time.Second)
		var seen []string
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("events -f ended early; saw:\n%s", strings.Join(seen, "\n"))
				}
				seen = append(seen, l)
				if strings.Contains(l, "block") && strings.Contains(l, e.attacker4().String()) {
					return
				}
			case <-deadline:
				t.Fatalf("events -f did not show the block of %s; saw:\n%s", e.attacker4(), strings.Join(seen, "\n"))
			}
		}
	})
}

// status names the back-end and the mode on each interface.
func TestStatusInterfaces(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{})
		st := e.d.status(t)
		want := map[string]bool{}
		for _, n := range e.lab.HostIfaceNames() {
			want[n] = true
		}
		wantMode := map[string]string{"xdp": "native", "iptables": "iptables"}[backend] // 1500-byte veths run native XDP
		if st.Backend != backend || len(st.Interfaces) != len(want) {
			t.Fatalf("status backend %q interfaces %+v, want %s on %v", st.Backend, st.Interfaces, backend, e.lab.HostIfaceNames())
		}
		for _, ifc := range st.Interfaces {
			if !want[ifc.Name] || ifc.Mode != wantMode {
				t.Errorf("interface %+v, want one of %v in mode %s", ifc, e.lab.HostIfaceNames(), wantMode)
			}
		}
		text := e.d.mustCtl(t, "status")
		for n := range want {
			if !strings.Contains(text, n) {
				t.Errorf("snarectl status does not show %s:\n%s", n, text)
			}
		}
		if !strings.Contains(text, backend) {
			t.Errorf("snarectl status does not name the back-end %s:\n%s", backend, text)
		}
	})
}
