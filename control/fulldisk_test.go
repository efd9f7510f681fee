package control_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/snare-dev/snare/control/api"
	"github.com/snare-dev/snare/internal/testutil"
)

// kernelRules is what the daemon's back-end enforces: prefix -> deadline (zero: permanent).
func kernelRules(t *testing.T, dl *daemonLab) map[string]time.Time {
	t.Helper()
	rules, err := dl.enf.Rules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]time.Time{}
	for _, r := range rules {
		out[r.Prefix.String()] = r.Deadline
	}
	return out
}

// On a full disk a block, an import or an unblock is refused with an error naming the cause,
// and the kernel is left exactly as it was: an address of a refused block or import is not
// dropped, one of a refused unblock still is. Once there is room again, the import goes through.
func TestFullDisk(t *testing.T) {
	for _, backend := range []string{"xdp", "iptables"} {
		t.Run(backend, func(t *testing.T) {
			dl := newDaemonLab(t)
			dl.backend = backend
			dl.cfg.StateDir = testutil.SmallDisk(t, 8<<20)
			dl.start()
			ctx := context.Background()
			attacker, client := dl.lab.Attacker(), dl.lab.Client()
			// Blocked before the disk fills: the client's address and 2,001 others.
			held := []string{client.Addr4().String(), "198.19.250.1"}
			for i := range 2000 {
				held = append(held, fmt.Sprintf("198.19.%d.%d", 50+i/250, 1+i%250))
			}
			if _, err := importList(ctx, dl.client, api.ImportRequest{Content: strings.Join(held, "\n"), TTL: "1h"}); err != nil {
				t.Fatal(err)
			}
			stored := dl.entries()
			kernel := kernelRules(t, dl)
			if len(stored) != len(held) || len(kernel) != len(held) {
				t.Fatalf("before: %d stored, %d in the kernel, want %d", len(stored), len(kernel), len(held))
			}
			filler := testutil.FillDisk(t, dl.cfg.StateDir)

			// unchanged checks that store and kernel hold what they held before: the attacker
			// (named by the refused blocks) gets through, the client (by the refused unblock)
			// does not.
			unchanged := func(what string) {
				t.Helper()
				if got := dl.entries(); len(got) != len(stored) {
					t.Fatalf("after %s: %d entries stored, want %d", what, len(got), len(stored))
				}
				got := kernelRules(t, dl)
				if len(got) != len(kernel) {
					t.Fatalf("after %s: the kernel holds %d entries, want the %d it held before", what, len(got), len(kernel))
				}
				for p, deadline := range kernel {
					// ipset keeps whole seconds left, read back as a deadline a second apart.
					if d, ok := got[p]; !ok || d.IsZero() != deadline.IsZero() || d.Sub(deadline).Abs() > 2*time.Second {
						t.Fatalf("after %s: the kernel holds %s until %v (%v), want %v", what, p, d, ok, deadline)
					}
				}
				if !dl.reaches(attacker, false) {
					t.Fatalf("after %s: the attacker's packets are dropped", what)
				}
				if dl.reaches(client, false) {
					t.Fatalf("after %s: the client's packets get through", what)
				}
			}
			full := func(what string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), "no space left on device") {
					t.Fatalf("%s on a full disk: %v; want an error naming the full disk", what, err)
				}
				unchanged(what + " refused for a full disk")
			}

			// The attacker's address, one entry stored (its deadline extended), and more.
			lines := []string{attacker.Addr4().String(), "198.19.250.1"}
			for i := range 2000 {
				lines = append(lines, fmt.Sprintf("198.19.%d.%d", 100+i/250, 1+i%250))
			}
			list := strings.Join(lines, "\n") + "\n"
			_, err := importList(ctx, dl.client, api.ImportRequest{Content: list, Name: "big.list"})
			full("an import", err)
			_, err = dl.client.Block(ctx, api.BlockRequest{Targets: lines[:500], TTL: "2h"})
			full("a block", err)
			// Every other one, for the transaction to rewrite every page that holds them.
			var unblock []string
			for i := 0; i < len(held); i += 2 {
				unblock = append(unblock, held[i])
			}
			_, err = dl.client.Unblock(ctx, api.UnblockRequest{Targets: unblock})
			full("an unblock", err)

			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			if resp, err := importList(ctx, dl.client, api.ImportRequest{Content: list, Name: "big.list"}); err != nil || resp.Imported != len(lines) {
				t.Fatalf("import with room again: %+v, %v", resp, err)
			}
			if dl.reaches(attacker, false) {
				t.Fatal("imported with room again, the attacker still gets through")
			}
			// The event log, which could not be written while the disk was full, is again.
			b, err := os.ReadFile(dl.cfg.EventsPath())
			if want := fmt.Sprintf("imported %d entries from big.list", len(lines)); err != nil || !strings.Contains(string(b), want) {
				t.Fatalf("event log after the disk had room again: %v; want a line %q in:\n%s", err, want, b)
			}
		})
	}
}
