// Package fallback enforces snare's blocks with ipset sets and iptables rules on hosts where XDP
// cannot run. Its directory is iptables-fallback/ (the design's name), which is not a valid Go
// package name, hence "fallback".
//
// Objects for prefix "snare" (sets in lower case, chains in upper case):
//
//	snare-allow4/6     hash:net                          the allowlist (ACCEPT, checked first)
//	snare-ip4          hash:ip  timeout counters comment single IPv4 addresses
//	snare-ip6          hash:ip  netmask=<IPv6 block length>, same extensions
//	snare-net4/6       hash:net timeout counters comment every other prefix
//	snare-trap-tcp/udp bitmap:port                       trap ports
//	snare-trapped4/6   hash:ip  timeout                  marks of blocks the trap rules made
//	raw PREROUTING -> SNARE -> SNARE-TRAP (NFLOG to snare)
//
// Entries carry ipset's kernel timeout (rounded up to the second, so a block never ends early);
// deadlines beyond ipset's maximum timeout (2147483 s) and permanent blocks have none, and the
// comment keeps the deadline ("until=UNIX") for Rules and the daemon's sweeper. The comment also
// marks blocks the trap inserted ("trap"). Hits are the sets' packet counters.
//
// Sets are written over one netfilter netlink socket with many elements per message (as
// `ipset restore` does), never one process or one message per address.
//
// Trap detection: the trap rules log probes (TCP without ACK and RST: SYN, FIN, NULL, XMAS; any
// UDP) on trap ports over NFLOG; snare counts distinct ports per source within the window, as
// the XDP program does, then blocks (or only reports, for allowlisted sources and log mode) and
// sends a rate-limited TrapEvent. With threshold 1 (the default) in block mode and no dry-run,
// the trap rules block in the kernel, like XDP: the trigger packet adds its source to the block
// set (with the trap TTL, at most ipset's maximum timeout) and to the trapped set, and is dropped,
// so the scanner's next probes are dropped even before snare reads the NFLOG report (or while no
// snared runs). The report then writes the "trap" comment and the real deadline; until it does,
// the trapped set tells Rules that the entry is a trap block, so the daemon adopts it. Above
// threshold 1 the packet that trips the trap passes, and snare blocks from the NFLOG report.
package fallback
