package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// At block.capacity nothing the daemon holds is lost: a block or an import beyond it is refused
// by the daemon with an error naming the capacity and changes nothing, and a flood of spoofed sources on a trap
// port fills only what is left, never evicting a manual block. Store and kernel agree after the
// sweeps that follow.
func TestCapacityKeepsManualBlocks(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		requireTools(t, "hping3", "xargs")
		const capacity = 100
		e := newEnv(t, backend, options{config: map[string]any{
			"block.capacity": capacity,
			"sweep.interval": "2s",
		}})
		d := e.d
		// 90 manual blocks (the attacker among them) and 5 imported ones.
		manual := []string{e.attacker4().String()}
		for i := 1; len(manual) < 90; i++ {
			manual = append(manual, fmt.Sprintf("198.19.250.%d", i))
		}
		d.mustCtl(t, append([]string{"block", "--ttl", "2h", "--reason", "manual, must survive"}, manual...)...)
		list := filepath.Join(e.dir, "five.list")
		if err := os.WriteFile(list, []byte("198.19.251.1\n198.19.251.2\n198.19.251.3\n198.19.251.4\n198.19.251.5\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		d.mustCtl(t, "import", list)
		before := snapshot(d.list(t))

		// Beyond capacity: refused, naming it, nothing changed.
		var big strings.Builder
		for i := 1; i <= 10; i++ {
			fmt.Fprintf(&big, "198.19.252.%d %s\n", i, time.Now().Format("20060102"))
		}
		if err := os.WriteFile(list, []byte(big.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{
			{"import", "--ttl", "5d", list},
			{"block", "198.19.253.1", "198.19.253.2", "198.19.253.3", "198.19.253.4", "198.19.253.5", "198.19.253.6"},
		} {
			r := d.ctl(args...)
			if r.code != 1 || !strings.Contains(r.stderr, "block.capacity 100") {
				t.Errorf("%s over capacity: want the daemon's refusal (exit 1) naming block.capacity 100\n%s", args[0], r)
			}
			if got := snapshot(d.list(t)); got != before {
				t.Errorf("%s over capacity changed the block list:\n%s\nwant:\n%s", args[0], got, before)
			}
		}

		// 300 spoofed sources probe a trap port: 5 fit.
		var sources []string
		for i := 0; i < 300; i++ {
			sources = append(sources, fmt.Sprintf("198.19.%d.%d", 1+i/200, 1+i%200))
		}
		script := fmt.Sprintf(`printf '%%s\n' %s | xargs -P 16 -I{} sh -c 'hping3 -q -S -c 2 -i u2000 -p 79 -a {} %s >/dev/null 2>&1; true'`,
			strings.Join(sources, " "), e.hostFor("attacker", false))
		flood, err := e.lab.Start(e.lab.Attacker().NS, "sh", "-c", script)
		if err != nil {
			t.Fatal(err)
		}
		if err := flood.Wait(90 * time.Second); err != nil {
			t.Fatalf("flood: %v\n%s", err, flood.Output())
		}
		time.Sleep(5 * time.Second) // two sweeps: suppressed trap blocks adopted, kernel reconciled
		entries := d.list(t)
		if len(entries) != capacity {
			t.Errorf("%d entries after the flood, want exactly block.capacity %d", len(entries), capacity)
		}
		for _, a := range manual {
			if find(entries, a+"/32") == nil {
				t.Errorf("manual block %s lost in the flood", a)
			}
		}
		st := d.status(t)
		if st.Entries != capacity {
			t.Errorf("status: %d entries, want %d", st.Entries, capacity)
		}
		t.Logf("after the flood: trap %+v, by reason %v", st.Trap, st.ByReason)
		if st.Evictions != 0 {
			t.Errorf("%d entries the store holds were missing from the kernel (evicted)", st.Evictions)
		}
		full := 0
		for _, ev := range d.events(t) {
			if ev.Event == "scan" && ev.Action == "not blocked" && strings.Contains(ev.Detail, "block.capacity 100") {
				full++
			}
		}
		if full == 0 {
			t.Error("no scan event says the block map was full")
		}
		e.dropped(t, e.attackerV4Peer())
		e.served(t, e.clientV4Peer())
	})
}
