package main

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/snare-dev/snare/backend"
	"github.com/snare-dev/snare/loader"
)

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// ctlEntries is the list size of the control-plane section: 1,000,000, or 100,000 in quick
// mode (targets are for 1,000,000 and are then only indicative).
func (e *env) ctlEntries() int {
	if e.quick {
		return 100000
	}
	return 1000000
}

func (e *env) sectionControl() ([]*table, error) {
	n := e.ctlEntries()
	t := newTable("Control plane", "operation", "entries", "time", "target", "result")
	if e.quick {
		t.note("Quick mode: %s entries instead of 1,000,000; the 1,000,000 targets are applied as they are.", num(float64(n)))
	}
	t.note("snare rows call the loader (package loader: BPF_MAP_UPDATE_BATCH / DELETE_BATCH / LOOKUP_BATCH) or the daemon " +
		"through its Unix-socket API; peers run in the lab's host namespace (their state is per network namespace).")
	ctx := context.Background()
	list := blockList(n)
	later := time.Now().Add(5 * 24 * time.Hour)

	// A second snare instance with empty maps, on an idle veth of its own.
	host := e.lab.Host.NS
	if _, err := e.lab.Run(host, "ip", "link", "add", "snc0", "type", "veth", "peer", "name", "snc0p"); err != nil {
		return []*table{t}, err
	}
	pin := e.pinDir + "-ctl"
	var x *loader.XDP
	if err := e.lab.Do(host, func() error {
		var err error
		x, err = loader.Open(loader.Options{Interfaces: []string{"snc0"}, Mode: "generic", PinDir: pin, Capacity: capacity})
		return err
	}); err != nil {
		return []*table{t}, fmt.Errorf("open second snare: %w", err)
	}
	defer func() {
		x.Close()
		e.lab.Do(host, func() error { return loader.Remove(pin, []string{"snc0"}) })
	}()

	timed := func(name, target string, limit time.Duration, fn func() error) {
		t0 := time.Now()
		err := fn()
		d := time.Since(t0)
		if err != nil {
			t.add(name, num(float64(n)), "n/a: "+oneLine(err), target, "")
			return
		}
		res := ""
		if limit > 0 {
			res = passMiss(d <= limit)
		}
		t.add(name, num(float64(n)), secs(d), target, res)
	}
	rs := rules(list, later)
	timed("snare: restore into empty maps (start after a reboot: loader Replace)", "≤ 1 s", time.Second, func() error {
		_, _, err := x.Replace(ctx, backend.RuleList(rs))
		return err
	})
	timed("snare: restart reconcile, same entries already pinned (loader Replace)", "", 0, func() error {
		_, _, err := x.Replace(ctx, backend.RuleList(rs))
		return err
	})
	prefixes := make([]netip.Prefix, len(list))
	for i, a := range list {
		prefixes[i] = netip.PrefixFrom(a, 32)
	}
	timed("snare: unblock every entry (loader Unblock)", "", 0, func() error { return x.Unblock(ctx, prefixes) })
	timed("snare: import into empty maps (loader Block)", "≤ 1 s", time.Second, func() error { return x.Block(ctx, rs) })
	// Every entry expired: the sweep reads the maps and deletes what is past its deadline.
	if err := x.Block(ctx, rules(list, time.Now().Add(-time.Hour))); err != nil {
		return []*table{t}, err
	}
	// Not the daemon's sweep (that finds expiries in its store: see the daemon section), but
	// what a reconciliation costs that reads the maps in full.
	timed("snare: read every entry and remove the expired ones (loader Rules + Unblock)", "", 0, func() error {
		all, err := x.Rules(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		var expired []netip.Prefix
		for _, r := range all {
			if !r.Deadline.IsZero() && r.Deadline.Before(now) {
				expired = append(expired, r.Prefix)
			}
		}
		if len(expired) != n {
			return fmt.Errorf("sweep found %d expired entries, want %d", len(expired), n)
		}
		return x.Unblock(ctx, expired)
	})

	// snare's iptables fallback: the same import through ipset.
	if fb, took, err := e.openFallback(n); err != nil {
		t.add("snare iptables fallback: import (Block into ipset)", num(float64(n)), "n/a: "+oneLine(err), "", "")
	} else {
		e.closeFallback(fb)
		t.add("snare iptables fallback: import (Block into ipset)", num(float64(n)), secs(took), "≤ ipset restore", "@IPSET@"+took.String())
	}

	// Peers.
	d, err := e.ipsetLoad(n)
	e.iptablesFlush()
	if err != nil {
		t.add("ipset restore (hash:ip with timeouts)", num(float64(n)), "n/a: "+oneLine(err), "", "")
	} else {
		t.add("ipset restore (hash:ip with timeouts)", num(float64(n)), secs(d), "snare import ≤ this", passMiss(snareImport(t) <= d))
		for _, r := range t.rows {
			if fb, ok := strings.CutPrefix(r[4], "@IPSET@"); ok {
				took, _ := time.ParseDuration(fb)
				r[4] = passMiss(took <= d)
			}
		}
	}
	for _, r := range t.rows {
		if strings.HasPrefix(r[4], "@IPSET@") {
			r[4] = ""
		}
	}
	d, err = e.nsRunFile(runTimeout, e.nftScript(n, false), "nft", "-f", "@FILE@")
	e.nftFlush()
	if err != nil {
		t.add("nft -f (set with timeouts)", num(float64(n)), "n/a: "+oneLine(err), "", "")
	} else {
		t.add("nft -f (set with timeouts)", num(float64(n)), secs(d), "", "")
	}
	ti, err := e.iptablesAppend()
	if err != nil {
		t.note("iptables -A: %v", err)
	}
	tables := []*table{t}
	if ti != nil {
		tables = append(tables, ti)
	}
	td, err := e.daemonBench()
	if td != nil {
		tables = append(tables, td)
	}
	return tables, err
}

// snareImport returns the loader import time from the table (for the ipset comparison).
func snareImport(t *table) time.Duration {
	for _, r := range t.rows {
		if strings.HasPrefix(r[0], "snare: import") {
			var s float64
			if _, err := fmt.Sscanf(r[2], "%f s", &s); err == nil {
				return time.Duration(s * float64(time.Second))
			}
		}
	}
	return 1 << 62
}

// iptablesAppend times the seed's way: one `iptables -A INPUT -s ADDR -j DROP` process per
// address, as its shell script ran them, in the lab's host namespace: calls into an empty
// chain and into a chain that already holds 10,000 rules (loaded with iptables-restore), and
// the resulting estimate for adding 10,000 one by one (running them all would take minutes).
func (e *env) iptablesAppend() (*table, error) {
	calls := 100
	if e.quick {
		calls = 30
	}
	const big = 10000
	ver, _ := cmdOut(10*time.Second, "iptables", "-V")
	t := newTable("The seed's iptables -A per address", "rules already in the chain", "calls", "median ms per call", "p99 ms per call")
	t.note("`%s`, one process per address, each entering the lab's namespace with nsenter (as a shell script forks iptables).", strings.TrimSpace(ver))
	nsenter := []string{"nsenter", "--net=" + filepath.Join("/run/netns", e.lab.Host.NS), "--", "iptables", "-w"}
	defer e.nsRun(runTimeout, "iptables", "-F", "INPUT")
	appendN := func(base int) ([]time.Duration, error) {
		var all []time.Duration
		for i := 0; i < calls; i++ {
			a := fmt.Sprintf("198.18.%d.%d", 150+i/250, 1+i%250)
			t0 := time.Now()
			if out, err := exec.Command(nsenter[0], append(nsenter[1:], "-A", "INPUT", "-s", a, "-j", "DROP")...).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("iptables -A (rule %d): %w: %s", base+i, err, out)
			}
			all = append(all, time.Since(t0))
		}
		return all, nil
	}
	empty, err := appendN(0)
	if err != nil {
		return t, err
	}
	medEmpty, p99 := percentiles(empty)
	t.add("0", num(float64(calls)), ms(medEmpty), ms(p99))
	var sb strings.Builder
	sb.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for _, a := range blockList(big) {
		fmt.Fprintf(&sb, "-A INPUT -s %s/32 -j DROP\n", a)
	}
	sb.WriteString("COMMIT\n")
	if _, err := e.nsRunFile(runTimeout, sb.String(), "iptables-restore", "@FILE@"); err != nil {
		return t, err
	}
	full, err := appendN(big)
	if err != nil {
		return t, err
	}
	medFull, p99 := percentiles(full)
	t.add(num(big), num(float64(calls)), ms(medFull), ms(p99))
	est := time.Duration(float64(big) * float64(medEmpty+medFull) / 2)
	t.add(fmt.Sprintf("estimate: %s addresses added one by one", num(big)), "", fmt.Sprintf("%.0f s in total", est.Seconds()), "")
	return t, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }

func percentiles(d []time.Duration) (med, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], s[min(len(s)-1, len(s)*99/100)]
}
