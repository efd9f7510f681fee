package e2e

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// An expired exact block does not hide a CIDR block around it that is still in force: the
// source stays dropped after the exact entry's deadline, with no sweep (sweep.interval is 1h).
func TestExpiredExactInsideLiveCIDR(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, options{})
		d := e.d
		a4, a6 := e.attacker4(), attackerV6
		d.mustCtl(t, "block", a4.String(), a6.String(), "--ttl", "2s", "--reason", "short")
		d.mustCtl(t, "block", netip.PrefixFrom(a4, 31).Masked().String(), netip.PrefixFrom(a6, 96).Masked().String(),
			"--ttl", "1h", "--reason", "the CIDR around it")
		e.dropped(t, e.attackerV4Peer())
		time.Sleep(2500 * time.Millisecond) // past the exact entries' deadline
		e.dropped(t, e.attackerV4Peer())
		e.dropped(t, e.attackerV6Peer())
		e.served(t, e.clientV4Peer())
		e.served(t, e.clientV6Peer())
	})
}

// A scanner unblocked by hand is blocked again by its next probe, inside the same trap window.
func TestUnblockThenRescan(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		requireTools(t, "hping3")
		e := newEnv(t, backend, options{config: map[string]any{"trap.window": "10m"}})
		d := e.d
		dst := e.hostFor("attacker", false).String()
		probe := func() {
			t.Helper()
			// hping3 exits non-zero when nothing answers: expected.
			e.lab.Run(e.lab.Attacker().NS, "hping3", "-q", "-S", "-c", "1", "-p", "79", "-a", e.attacker4().String(), dst)
		}
		blocked := func(what string) {
			t.Helper()
			if err := eventually(5*time.Second, func() error {
				if find(d.list(t), host32(e.attacker4())) == nil {
					return fmt.Errorf("%s: attacker not in the block list", what)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			e.dropped(t, e.attackerV4Peer())
		}
		probe()
		blocked("first scan")
		for round := 1; round <= 2; round++ {
			d.mustCtl(t, "unblock", e.attacker4().String())
			e.served(t, e.attackerV4Peer())
			probe()
			blocked(fmt.Sprintf("scan %d after unblock", round+1))
		}
	})
}
