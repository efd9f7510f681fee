package fallback

import (
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// The rules live in the raw table, before conntrack, so a blocked source costs no connection
// tracking state. PREROUTING jumps to snare's chain (one jump per interface, or one for all):
//
//	<PREFIX>:       -m set --match-set allow src -j <PREFIX>-TRAP   (trap on: allowlisted scans are reported)
//	                -m set --match-set allow src -j ACCEPT          (allowlist first)
//	                -m set --match-set ip src -j DROP               (dry-run: RETURN, the rule only counts)
//	                -m set --match-set net src -j DROP
//	                -j <PREFIX>-TRAP                                (trap on)
//	<PREFIX>-TRAP:  -p tcp --tcp-flags ACK,RST NONE -m set --match-set trap-tcp dst -j NFLOG ...
//	                -p udp -m set --match-set trap-udp dst -j NFLOG ...
//
// With threshold 1, a protocol in block mode and no dry-run, each NFLOG rule is wrapped by a
// kernel-side block (see trapRules):
//
//	<probe> -m set ! --match-set allow src -j SET --add-set trapped src --exist --timeout TTL
//	<probe> -m set ! --match-set allow src -j SET --add-set ip src --exist --timeout TTL
//	<probe> -j NFLOG ...
//	<probe> -m set ! --match-set allow src -j DROP
//
// Blocked sources are dropped before the trap rules, so a blocked scanner costs no NFLOG
// messages. The trap rules only match probes (no ACK, no RST: SYN, FIN, NULL, XMAS), like the XDP
// program.
const (
	table      = "raw"
	prerouting = "PREROUTING"
	nflogSize  = "128" // bytes of each packet copied to snare: the IP and TCP/UDP headers
)

// family is one of iptables (IPv4) and ip6tables (IPv6).
type family struct {
	name            string // "ipv4", "ipv6"
	ipt             *iptables.IPTables
	ns              nsHandle
	allow, ip, cidr string // set names
	trapped         string // kernel trap marks
	// snapshot is each chain's listing after the last sync and synced the wanted state it
	// achieved; the watcher compares against both.
	snapshot map[string][]string
	synced   []string
}

// rule is one rule of snare's chain and the counter it feeds.
type rule struct {
	args   []string
	reason string // "pass_allow", "drop_exact", "drop_cidr", "trap_hit", ... ("" = not counted)
}

// binaries returns the iptables and ip6tables binaries of a variant ("" = as installed).
func binaries(variant string) (v4, v6 string, err error) {
	if variant == "" {
		return "", "", nil
	}
	if v4, err = exec.LookPath("iptables-" + variant); err != nil {
		return "", "", fmt.Errorf("iptables variant %s: %w", variant, err)
	}
	if v6, err = exec.LookPath("ip6tables-" + variant); err != nil {
		return "", "", fmt.Errorf("iptables variant %s: %w", variant, err)
	}
	return v4, v6, nil
}

func newIPTables(proto iptables.Protocol, path string) (*iptables.IPTables, error) {
	if path != "" {
		return iptables.New(iptables.IPFamily(proto), iptables.Timeout(10), iptables.Path(path))
	}
	return iptables.New(iptables.IPFamily(proto), iptables.Timeout(10))
}

func newFamilies(ns nsHandle, variant string, n names) ([]*family, error) {
	p4, p6, err := binaries(variant)
	if err != nil {
		return nil, err
	}
	ipt4, err := newIPTables(iptables.ProtocolIPv4, p4)
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	ipt6, err := newIPTables(iptables.ProtocolIPv6, p6)
	if err != nil {
		return nil, fmt.Errorf("ip6tables: %w", err)
	}
	return []*family{
		{name: "ipv4", ipt: ipt4, ns: ns, allow: n.allow4, ip: n.ip4, cidr: n.net4, trapped: n.trapped4, snapshot: map[string][]string{}},
		{name: "ipv6", ipt: ipt6, ns: ns, allow: n.allow6, ip: n.ip6, cidr: n.net6, trapped: n.trapped6, snapshot: map[string][]string{}},
	}, nil
}

func matchSet(set, dir string) []string { return []string{"-m", "set", "--match-set", set, dir} }

// rulesLocked returns the rules of both chains for the current settings.
func (e *Enforcer) rulesLocked(f *family) (main, trap []rule) {
	trapOn := len(e.trap.TCPPorts)+len(e.trap.UDPPorts) > 0
	drop := []string{"-j", "DROP"}
	exact, cidr := "drop_exact", "drop_cidr"
	if e.settings.DryRun {
		// Count and pass, skipping the trap rules as XDP's dry-run does: a blocked source
		// must not be re-blocked (with a new deadline) by its own traffic.
		drop, exact, cidr = []string{"-j", "RETURN"}, "dry_run", "dry_run"
	}
	if trapOn {
		main = append(main, rule{args: append(matchSet(f.allow, "src"), "-j", e.n.trapChain)})
	}
	main = append(main,
		rule{args: append(matchSet(f.allow, "src"), "-j", "ACCEPT"), reason: "pass_allow"},
		rule{args: append(matchSet(f.ip, "src"), drop...), reason: exact},
		rule{args: append(matchSet(f.cidr, "src"), drop...), reason: cidr},
	)
	if trapOn {
		main = append(main, rule{args: []string{"-j", e.n.trapChain}})
		nflog := []string{"-j", "NFLOG", "--nflog-group", strconv.Itoa(int(e.opts.NFLOGGroup)), "--nflog-size", nflogSize}
		tcp := append([]string{"-p", "tcp", "--tcp-flags", "ACK,RST", "NONE"}, matchSet(e.n.trapTCP, "dst")...)
		udp := append([]string{"-p", "udp"}, matchSet(e.n.trapUDP, "dst")...)
		trap = append(trap, e.trapRules(f, tcp, nflog, e.trap.BlockTCP)...)
		trap = append(trap, e.trapRules(f, udp, nflog, e.trap.BlockUDP)...)
	}
	return main, trap
}

// trapRules are the trap chain's rules for one protocol's probes (match). With threshold 1 in
// block mode the kernel blocks at the trigger packet itself, as the XDP program does: the source
// goes into the block set and the probe is dropped, so the scanner's next probes (the web port
// nmap asks about after the trap port) are dropped before the daemon has even read the NFLOG
// message. NFLOG still reports every probe (events, persistence, thresholds above 1). The
// allowlist jumps here too (its scans are reported), so the block and drop rules skip it.
// Dry-run only counts: no kernel block, as in XDP.
func (e *Enforcer) trapRules(f *family, match, nflog []string, block bool) []rule {
	logRule := rule{args: append(slices.Clone(match), nflog...), reason: "trap_hit"}
	if !block || e.trap.Threshold != 1 || e.settings.DryRun {
		return []rule{logRule}
	}
	notAllowed := []string{"-m", "set", "!", "--match-set", f.allow, "src"}
	guarded := append(slices.Clone(match), notAllowed...)
	timeout := strconv.FormatUint(uint64(kernelTrapTimeout(e.trap.TTL)), 10)
	// The mark first: Rules lists the block sets before the marks, so every kernel block it
	// sees is already marked (an unmarked unknown entry would be removed as stale).
	mark := []string{"-j", "SET", "--add-set", f.trapped, "src", "--exist", "--timeout", timeout}
	set := []string{"-j", "SET", "--add-set", f.ip, "src", "--exist", "--timeout", timeout}
	return []rule{
		{args: append(slices.Clone(guarded), mark...)},
		{args: append(slices.Clone(guarded), set...)},
		logRule,
		{args: append(slices.Clone(guarded), "-j", "DROP"), reason: "trap_block"},
	}
}

// kernelTrapTimeout is the ipset timeout of a block the trap rule inserts: the trap TTL in whole
// seconds, at most ipset's maximum (a longer or permanent TTL: the daemon's store keeps the real
// deadline and the trap handler rewrites the entry with it).
func kernelTrapTimeout(ttl time.Duration) uint32 {
	if ttl <= 0 {
		return ipsetMaxTimeout
	}
	secs := (ttl + time.Second - 1) / time.Second
	return uint32(min(max(secs, 1), ipsetMaxTimeout))
}

func (e *Enforcer) jumps() [][]string {
	if len(e.opts.Interfaces) == 0 {
		return [][]string{{"-j", e.n.chain}}
	}
	var out [][]string
	for _, ifc := range e.opts.Interfaces {
		out = append(out, []string{"-i", ifc, "-j", e.n.chain})
	}
	return out
}

// syncChainsLocked brings both families' chains and jumps to the wanted rules and reports whether
// it changed anything. When the wanted rules are those of the last sync and the listings are
// unchanged since, it stops after one iptables process per chain (the watcher's path).
func (e *Enforcer) syncChainsLocked() (bool, error) {
	changed := false
	for _, f := range e.fams {
		main, trap := e.rulesLocked(f)
		want := wantedState(main, trap, e.jumps())
		var c bool
		err := f.ns.do(func() error {
			if slices.Equal(want, f.synced) && f.unchanged(e.n.chain, e.n.trapChain) {
				return nil
			}
			// The trap chain first: the main chain jumps to it.
			c1, err := f.syncChain(e.n.trapChain, trap)
			if err != nil {
				return err
			}
			c2, err := f.syncChain(e.n.chain, main)
			if err != nil {
				return err
			}
			c3, err := f.syncJumps(e.n.chain, e.jumps())
			if err != nil {
				return err
			}
			c = c1 || c2 || c3
			f.synced = want
			return nil
		})
		if err != nil {
			f.synced = nil
			return changed, fmt.Errorf("%s rules: %w", f.name, err)
		}
		changed = changed || c
	}
	return changed, nil
}

// wantedState flattens the wanted rules into comparable strings.
func wantedState(main, trap []rule, jumps [][]string) []string {
	var out []string
	for _, r := range main {
		out = append(out, "main "+strings.Join(r.args, " "))
	}
	for _, r := range trap {
		out = append(out, "trap "+strings.Join(r.args, " "))
	}
	for _, j := range jumps {
		out = append(out, "jump "+strings.Join(j, " "))
	}
	return out
}

// unchanged reports whether the chains and PREROUTING list as they did after the last sync.
func (f *family) unchanged(chains ...string) bool {
	for _, chain := range append(chains, prerouting) {
		cur, err := f.ipt.List(table, chain)
		if err != nil || !slices.Equal(cur, f.snapshot[chain]) {
			return false
		}
	}
	return true
}

// syncChain makes chain hold exactly rules, in order. A chain that already does is left alone
// (its counters stay); otherwise rules are replaced in place one by one (-R), so the chain is
// never empty while it is rewritten.
func (f *family) syncChain(chain string, rules []rule) (bool, error) {
	exists, err := f.ipt.ChainExists(table, chain)
	if err != nil {
		return false, fmt.Errorf("check chain %s: %w", chain, err)
	}
	if !exists {
		if err := f.ipt.NewChain(table, chain); err != nil {
			return false, fmt.Errorf("create chain %s: %w", chain, err)
		}
	}
	cur, err := f.ipt.List(table, chain)
	if err != nil {
		return false, fmt.Errorf("list chain %s: %w", chain, err)
	}
	have := len(cur) - 1 // the first line is "-N chain"
	inSync := have == len(rules)
	for i := 0; inSync && i < len(rules); i++ {
		// -C finds a rule anywhere in the chain; the listing of position i+1 pins the order.
		ok, err := f.ipt.Exists(table, chain, rules[i].args...)
		if err != nil {
			return false, fmt.Errorf("check rule in %s: %w", chain, err)
		}
		inSync = ok && positionMatches(cur[i+1], rules[i].args)
	}
	changed := false
	if !inSync {
		changed = true
		for i, r := range rules {
			if i < have {
				err = f.ipt.Replace(table, chain, i+1, r.args...)
			} else {
				err = f.ipt.Append(table, chain, r.args...)
			}
			if err != nil {
				return false, fmt.Errorf("write rule %d of %s: %w", i+1, chain, err)
			}
		}
		for i := have; i > len(rules); i-- {
			if err := f.ipt.DeleteById(table, chain, i); err != nil {
				return false, fmt.Errorf("delete rule %d of %s: %w", i, chain, err)
			}
		}
		if cur, err = f.ipt.List(table, chain); err != nil {
			return false, fmt.Errorf("list chain %s: %w", chain, err)
		}
	}
	f.snapshot[chain] = cur
	return changed, nil
}

// dryRunInPlace tells whether an existing chain (left by a previous run) counts instead of
// dropping, so a restart in dry-run mode does not drop until the daemon repeats the setting.
func (f *family) dryRunInPlace(chain, ipSet string) (bool, error) {
	dry := false
	err := f.ns.do(func() error {
		ok, err := f.ipt.ChainExists(table, chain)
		if err != nil || !ok {
			return err
		}
		lines, err := f.ipt.List(table, chain)
		if err != nil {
			return err
		}
		for _, l := range lines {
			if strings.Contains(l, " "+ipSet+" src") {
				dry = !strings.Contains(l, "-j DROP")
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("read chain %s: %w", chain, err)
	}
	return dry, nil
}

// trapTTLInPlace reads the trap TTL from the kernel block rule a previous run left in the trap
// chain (0: none, or ipset's maximum), so a restart keeps the rule, its counters and the TTL of
// its blocks until the daemon configures the trap again.
func (f *family) trapTTLInPlace(chain string) (time.Duration, error) {
	var ttl time.Duration
	err := f.ns.do(func() error {
		ok, err := f.ipt.ChainExists(table, chain)
		if err != nil || !ok {
			return err
		}
		lines, err := f.ipt.List(table, chain)
		if err != nil {
			return err
		}
		for _, l := range lines {
			fields := strings.Fields(l)
			i := slices.Index(fields, "--timeout")
			if !strings.Contains(l, "-j SET") || i < 0 || i+1 >= len(fields) {
				continue
			}
			if n, err := strconv.ParseUint(fields[i+1], 10, 32); err == nil && n < ipsetMaxTimeout {
				ttl = time.Duration(n) * time.Second
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read chain %s: %w", chain, err)
	}
	return ttl, nil
}

// positionMatches is a cheap order check of a listed rule against the wanted one: the set names
// (matched and added to) and the target must appear in it in the same order. (iptables -S
// normalises the rest.)
func positionMatches(line string, args []string) bool {
	fields := strings.Fields(line)
	var wantKeys, haveKeys []string
	pick := func(ws []string) []string {
		var out []string
		for i, w := range ws {
			if (w == "--match-set" || w == "-j" || w == "--add-set") && i+1 < len(ws) {
				out = append(out, ws[i+1])
			}
		}
		return out
	}
	wantKeys, haveKeys = pick(args), pick(fields)
	return slices.Equal(wantKeys, haveKeys)
}

// syncJumps makes PREROUTING hold exactly the wanted jumps to chain (inserted at the top); user
// rules in PREROUTING are never touched.
func (f *family) syncJumps(chain string, want [][]string) (bool, error) {
	cur, err := f.ipt.List(table, prerouting)
	if err != nil {
		return false, fmt.Errorf("list %s: %w", prerouting, err)
	}
	have := ourJumps(cur, chain)
	changed := false
	for _, j := range want {
		ok, err := f.ipt.Exists(table, prerouting, j...)
		if err != nil {
			return false, fmt.Errorf("check jump to %s: %w", chain, err)
		}
		if !ok {
			if err := f.ipt.Insert(table, prerouting, 1, j...); err != nil {
				return false, fmt.Errorf("insert jump to %s: %w", chain, err)
			}
			changed = true
		}
	}
	if len(have) > len(want) || changed {
		// Drop jumps that are no longer wanted (interfaces changed) or duplicated.
		cur, err = f.ipt.List(table, prerouting)
		if err != nil {
			return false, fmt.Errorf("list %s: %w", prerouting, err)
		}
		seen := map[string]bool{}
		for _, args := range ourJumps(cur, chain) {
			key := strings.Join(args, " ")
			if isWanted(args, want) && !seen[key] {
				seen[key] = true
				continue
			}
			if err := f.ipt.Delete(table, prerouting, args...); err != nil {
				return false, fmt.Errorf("delete jump to %s: %w", chain, err)
			}
			changed = true
		}
	}
	if f.snapshot[prerouting], err = f.ipt.List(table, prerouting); err != nil {
		return false, fmt.Errorf("list %s: %w", prerouting, err)
	}
	return changed, nil
}

func isWanted(args []string, want [][]string) bool {
	for _, w := range want {
		if slices.Equal(args, w) {
			return true
		}
	}
	return false
}

// ourJumps returns the rule arguments of PREROUTING rules that jump to chain.
func ourJumps(listing []string, chain string) [][]string {
	var out [][]string
	for _, line := range listing {
		fields := strings.Fields(line)
		if len(fields) < 4 || fields[0] != "-A" || fields[1] != prerouting {
			continue
		}
		if fields[len(fields)-2] == "-j" && fields[len(fields)-1] == chain {
			out = append(out, fields[2:])
		}
	}
	return out
}

// counter is one rule's packet and byte count.
type counter struct{ packets, bytes uint64 }

// countedRules lists chain with counters (iptables -S -v) and returns each rule's arguments and
// counters. (go-iptables' Stats parses the -L table, whose columns shift for a rule without a
// target.)
func (f *family) countedRules(chain string) (args [][]string, counts []counter, err error) {
	var lines []string
	err = f.ns.do(func() error {
		var err error
		lines, err = f.ipt.ListWithCounters(table, chain)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	for _, line := range lines {
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] != "-A" || fields[1] != chain {
			continue
		}
		var c counter
		var rest []string
		for i := 2; i < len(fields); i++ {
			if fields[i] == "-c" && i+2 < len(fields) {
				c.packets, _ = strconv.ParseUint(fields[i+1], 10, 64)
				c.bytes, _ = strconv.ParseUint(fields[i+2], 10, 64)
				i += 2
				continue
			}
			rest = append(rest, fields[i])
		}
		args = append(args, rest)
		counts = append(counts, c)
	}
	return args, counts, nil
}

// ruleCounters returns the counters of chain's rules in order.
func (f *family) ruleCounters(chain string) ([]counter, error) {
	_, counts, err := f.countedRules(chain)
	return counts, err
}

// jumpPackets sums the packets PREROUTING sent to chain.
func (f *family) jumpPackets(chain string) (uint64, error) {
	args, counts, err := f.countedRules(prerouting)
	if err != nil {
		return 0, err
	}
	var sum uint64
	for i, a := range args {
		if len(a) >= 2 && a[len(a)-2] == "-j" && a[len(a)-1] == chain {
			sum += counts[i].packets
		}
	}
	return sum, nil
}
