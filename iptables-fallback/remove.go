package fallback

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// Remove uninstalls everything snare created for prefix in the caller's network namespace: the
// jumps from PREROUTING, both chains (IPv4 and IPv6, in every iptables variant installed, since a
// host may have used legacy and nft at different times) and the sets. Other rules and sets are not
// touched; objects that do not exist are skipped.
func Remove(prefix string) error {
	prefix, err := checkPrefix(prefix)
	if err != nil {
		return err
	}
	n := namesFor(prefix)
	var errs []error
	for _, ipt := range installedIPTables() {
		if err := removeChains(ipt, n); err != nil {
			errs = append(errs, err)
		}
	}
	sets, err := dialIpset(0)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer sets.Close()
	for _, name := range n.allSets() {
		for _, s := range []string{name, name + tmpSuffix} {
			if err := sets.destroy(s); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// installedIPTables returns a handle for every distinct iptables/ip6tables binary present.
func installedIPTables() []*iptables.IPTables {
	var out []*iptables.IPTables
	seen := map[string]bool{}
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		base := "iptables"
		if proto == iptables.ProtocolIPv6 {
			base = "ip6tables"
		}
		for _, bin := range []string{base + "-legacy", base + "-nft"} {
			path, err := exec.LookPath(bin)
			if err != nil || seen[path] {
				continue
			}
			if strings.HasSuffix(bin, "-legacy") && !legacyRawLoaded(proto) {
				continue // listing it would load an empty legacy table (and iptables-nft warnings)
			}
			seen[path] = true
			if ipt, err := newIPTables(proto, path); err == nil {
				out = append(out, ipt)
			}
		}
	}
	if len(out) == 0 { // neither variant installed under its own name: the plain binaries
		for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
			if ipt, err := newIPTables(proto, ""); err == nil {
				out = append(out, ipt)
			}
		}
	}
	return out
}

// legacyRawLoaded tells whether this network namespace has a legacy raw table. /proc/thread-self
// is the calling thread's view, which is the one that counts under a locked, setns'd thread.
func legacyRawLoaded(proto iptables.Protocol) bool {
	file := "/proc/thread-self/net/ip_tables_names"
	if proto == iptables.ProtocolIPv6 {
		file = "/proc/thread-self/net/ip6_tables_names"
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	return slices.Contains(strings.Fields(string(b)), table)
}

func removeChains(ipt *iptables.IPTables, n names) error {
	cur, err := ipt.List(table, prerouting)
	if err != nil {
		return fmt.Errorf("list %s: %w", prerouting, err)
	}
	for _, args := range ourJumps(cur, n.chain) {
		if err := ipt.Delete(table, prerouting, args...); err != nil {
			return fmt.Errorf("delete jump to %s: %w", n.chain, err)
		}
	}
	// The main chain refers to the trap chain: it goes first.
	for _, chain := range []string{n.chain, n.trapChain} {
		ok, err := ipt.ChainExists(table, chain)
		if err != nil {
			return fmt.Errorf("check chain %s: %w", chain, err)
		}
		if !ok {
			continue
		}
		if err := ipt.ClearAndDeleteChain(table, chain); err != nil {
			return fmt.Errorf("delete chain %s: %w", chain, err)
		}
	}
	return nil
}
