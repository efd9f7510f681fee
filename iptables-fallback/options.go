package fallback

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"
)

// Options configure New.
type Options struct {
	Interfaces []string // interfaces whose traffic is filtered (empty: all)
	Capacity   int      // maxelem of each ipset set
	Prefix     string   // name prefix of sets and chains, default "snare"
	Logger     *slog.Logger

	// NetNS is the path of a network namespace to enforce in (e.g. /run/netns/x); empty: the
	// caller's. Tests use it so that rules and sets live in a namespace of their own.
	NetNS string

	// Variant picks the iptables binaries: "" uses iptables/ip6tables as installed, "legacy"
	// iptables-legacy/ip6tables-legacy, "nft" iptables-nft/ip6tables-nft.
	Variant string
	// NFLOGGroup is the netlink log group the trap rules send packets to (0: 4713).
	NFLOGGroup uint16
	// CheckInterval is how often the chains and sets are checked and repaired if someone
	// flushed them (0: 5s, negative: never; Repair and Replace still repair on demand).
	CheckInterval time.Duration
	// ScanEntries bounds the per-source trap scan state (0: 65536).
	ScanEntries int
}

const (
	defaultPrefix        = "snare"
	defaultNFLOGGroup    = 4713
	defaultCheckInterval = 5 * time.Second
	defaultScanEntries   = 65536
	// maxCapacity keeps maxelem inside what one ipset hash set can address comfortably.
	maxCapacity = 1 << 28
)

// Prefixes end up in set names of at most 31 bytes ("<prefix>-trap-tcp-t") and chain names of at
// most 28 ("<PREFIX>-TRAP"): 16 leaves room for both. Sets are named in lower case, chains in
// upper case, so "snare" and "SNARE" name the same objects.
var prefixRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,15}$`)

// interface names as the kernel accepts them, plus iptables' trailing "+" wildcard
var ifaceRE = regexp.MustCompile(`^[A-Za-z0-9_.:@-]{1,15}\+?$`)

func checkPrefix(p string) (string, error) {
	if p == "" {
		return defaultPrefix, nil
	}
	if !prefixRE.MatchString(p) {
		return "", fmt.Errorf("invalid prefix %q: want 1-16 characters of letters, digits, '_' or '-', starting with a letter", p)
	}
	switch strings.ToUpper(p) {
	case "ACCEPT", "DROP", "RETURN", "QUEUE", "PREROUTING", "OUTPUT":
		return "", fmt.Errorf("invalid prefix %q: its chain name %s is reserved by iptables", p, strings.ToUpper(p))
	}
	return strings.ToLower(p), nil
}

// normalize checks o and fills in defaults.
func (o Options) normalize() (Options, error) {
	var err error
	if o.Prefix, err = checkPrefix(o.Prefix); err != nil {
		return o, err
	}
	if o.Capacity <= 0 {
		return o, fmt.Errorf("invalid capacity %d: must be at least 1 (it is each set's maxelem)", o.Capacity)
	}
	if o.Capacity > maxCapacity {
		return o, fmt.Errorf("invalid capacity %d: at most %d", o.Capacity, maxCapacity)
	}
	seen := map[string]bool{}
	for _, name := range o.Interfaces {
		if !ifaceRE.MatchString(name) || name == "." || name == ".." {
			return o, fmt.Errorf("invalid interface name %q", name)
		}
		if seen[name] {
			return o, fmt.Errorf("interface %q given twice", name)
		}
		seen[name] = true
	}
	switch o.Variant {
	case "", "legacy", "nft":
	default:
		return o, fmt.Errorf("invalid iptables variant %q: want \"\", \"legacy\" or \"nft\"", o.Variant)
	}
	if o.NFLOGGroup == 0 {
		o.NFLOGGroup = defaultNFLOGGroup
	}
	if o.CheckInterval == 0 {
		o.CheckInterval = defaultCheckInterval
	}
	if o.ScanEntries < 0 {
		return o, errors.New("invalid scan entries: must not be negative")
	}
	if o.ScanEntries == 0 {
		o.ScanEntries = defaultScanEntries
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// names are the kernel objects snare owns for one prefix.
type names struct {
	chain, trapChain string // e.g. SNARE, SNARE-TRAP
	allow4, allow6   string // hash:net, ACCEPT
	ip4, ip6         string // hash:ip (ip6 masked to the IPv6 block length)
	net4, net6       string // hash:net, every other prefix
	trapTCP, trapUDP string // bitmap:port
	// hash:ip sets the trap rules mark their kernel blocks in, so Rules reports those as trap
	// blocks before (or without) the NFLOG report that writes the "trap" comment
	trapped4, trapped6 string
}

// tmpSuffix names the scratch set a migration builds before swapping it in.
const tmpSuffix = "-t"

func namesFor(prefix string) names {
	return names{
		chain:     strings.ToUpper(prefix),
		trapChain: strings.ToUpper(prefix) + "-TRAP",
		allow4:    prefix + "-allow4",
		allow6:    prefix + "-allow6",
		ip4:       prefix + "-ip4",
		ip6:       prefix + "-ip6",
		net4:      prefix + "-net4",
		net6:      prefix + "-net6",
		trapTCP:   prefix + "-trap-tcp",
		trapUDP:   prefix + "-trap-udp",
		trapped4:  prefix + "-trapped4",
		trapped6:  prefix + "-trapped6",
	}
}

func (n names) allSets() []string {
	return []string{n.allow4, n.allow6, n.ip4, n.ip6, n.net4, n.net6, n.trapTCP, n.trapUDP, n.trapped4, n.trapped6}
}
