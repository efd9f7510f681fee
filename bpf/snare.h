/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * snare.h - map layouts and constants shared between the XDP program and Go.
 * Constants Go needs are enums, so that bpf2go -type generates them.
 */
#ifndef SNARE_H
#define SNARE_H

/* The layout of the pinned maps. Changing a struct here, or what a field or a
 * bit means, changes it: bump SNARE_ABI and say in the loader (abi.go) which
 * maps changed, so an upgrade migrates them instead of misreading the pins. */
enum abi {
	SNARE_ABI = 2,
};

enum limits {
	TRAP_MAX_PORTS = 16, /* upper bound of trap.threshold */
};

/* Exact-address block entry value (block4, block6). */
struct block_val {
	__u64 deadline; /* CLOCK_MONOTONIC ns; DEADLINE_PERMANENT never expires */
	__u64 hits;     /* packets dropped by this entry */
	__u64 last_hit; /* CLOCK_MONOTONIC(_COARSE) ns of the last drop, 0 = never */
	__u32 flags;    /* BLOCK_F_* */
	__u32 _pad;
};

#define DEADLINE_PERMANENT (~0ULL)

/* block_val.flags */
enum block_flag {
	BLOCK_F_TRAP = 1, /* inserted by the XDP program at a trap trigger */
};

/* IPv6 exact key: the source masked to config.v6_prefix bits. */
struct addr6 {
	__u8 addr[16];
};

/* LPM keys: prefixlen first, as the LPM trie requires. */
struct lpm4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* config.flags */
enum cfg_flag {
	CFG_DRY_RUN = 1,        /* count what would be dropped, pass it */
	CFG_TRAP_TCP_BLOCK = 2, /* trap trigger on TCP blocks (else: log only) */
	CFG_TRAP_UDP_BLOCK = 4, /* trap trigger on UDP blocks (else: log only) */
	CFG_TRAP_ON = 8,        /* trap detection enabled at all */
};

/* The single entry of the config array, written by the daemon. */
struct config {
	__u32 flags;
	__u32 trap_threshold;  /* distinct trap ports within trap_window_ns, 1..TRAP_MAX_PORTS */
	__u64 trap_window_ns;
	__u64 trap_ttl_ns;     /* 0 = permanent */
	__u64 v6_mask[2];      /* network-order mask applied to IPv6 sources for block6/scan keys */
	__u32 cidr4_entries;   /* LPM tries are skipped while empty: they cost more than a hash */
	__u32 cidr6_entries;
	__u64 event_interval_ns; /* token bucket for trap events, per CPU: one token per interval */
	__u64 event_burst;       /* bucket depth */
	__u64 block_limit;       /* the trap inserts no block while a block map holds this many */
};

/* Trap ports: array indexed by port, value TRAP_TCP | TRAP_UDP. */
enum trap_proto {
	TRAP_TCP = 1,
	TRAP_UDP = 2,
};

/* Per-source scan state (scan map, LRU, apart from the block maps). */
/* What a scan_state has already reported in its window, so a source that keeps
 * probing sends one event, not one per packet. A block is not remembered here:
 * a source that reaches the trap again is not blocked any more (unblocked,
 * expired), and the next trap hit must block it again at once. */
#define SCAN_REP_LOG 1
#define SCAN_REP_ALLOW 2
#define SCAN_REP_FULL 4

struct scan_state {
	__u64 first_ns;                   /* start of the current window */
	__u32 ports[TRAP_MAX_PORTS];      /* distinct (proto << 16 | port) hit in the window */
	__u32 nports;
	__u32 reported;                   /* SCAN_REP_* already acted on in this window */
};

/* trap_event.action */
enum trap_action {
	TRAP_ACT_BLOCKED = 1,
	TRAP_ACT_LOGGED = 2,
	TRAP_ACT_ALLOWLISTED = 3,
	TRAP_ACT_FULL = 4, /* would have blocked, but the block map is at block_limit */
};

/* Sent through the events ring buffer at a trap trigger. */
struct trap_event {
	__u64 time_ns;   /* CLOCK_MONOTONIC */
	__u64 deadline;  /* block deadline set, if action == TRAP_ACT_BLOCKED */
	__u8 addr[16];   /* IPv4 as ::ffff:a.b.c.d */
	__u32 ports[TRAP_MAX_PORTS];
	__u32 nports;
	__u8 family;     /* 4 or 6 */
	__u8 proto;      /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 tcp_flags;
	__u8 action;
};

/* Per-CPU counters, one slot per reason. */
enum stat_reason {
	STAT_PASS,          /* no block matched */
	STAT_PASS_UNPARSED, /* not IP, or headers the program does not parse: passed */
	STAT_PASS_EXPIRED,  /* a block matched but its deadline has passed */
	STAT_PASS_ALLOW,    /* a CIDR block matched an allowlisted source */
	STAT_DRY_RUN,       /* would have been dropped (dry-run) */
	STAT_DROP_EXACT,    /* dropped by an exact-address block */
	STAT_DROP_CIDR,     /* dropped by a CIDR block */
	STAT_DROP_TRAP,     /* the trigger packet of a trap block */
	STAT_TRAP_HIT,      /* probes that reached a trap port (not an exit: also counted in one above) */
	STAT_TRAP_BLOCK,    /* trap blocks inserted */
	STAT_EVENT_SENT,
	STAT_EVENT_SUPPRESSED, /* rate limit or full ring buffer */
	STAT_TRAP_FULL,     /* trap triggers that blocked nothing: the block map was at block_limit */
	STAT_MAX,
};

/* Counters are kept per interface slot: the slot is the ingress ifindex modulo
 * STAT_IFACE_SLOTS, so an interface costs no lookup on the hot path, only an
 * index computation. Two interfaces whose ifindexes share a slot share their
 * counters (the loader reports that); totals are the sum over all slots. */
#define STAT_IFACE_SLOTS 64

struct counter {
	__u64 packets;
	__u64 bytes;
};

#endif
