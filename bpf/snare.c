// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * snare.c - the XDP data path.
 *
 * For each packet: parse Ethernet (up to two VLAN tags), IPv4 (with options) or
 * IPv6 (skipping a bounded number of extension headers); drop it while its
 * source has an unexpired block (exact address first, then CIDR); otherwise,
 * if it probes a trap port, count the distinct trap ports this source touched
 * within the window and block it here, at the trigger packet. Anything the
 * program cannot parse is passed.
 *
 * Allowlist: the daemon refuses blocks that overlap the allowlist and removes
 * exact blocks that a new allowlist entry covers, so the exact-match drop path
 * (the hot one under attack) needs no LPM lookup. CIDR matches and trap
 * triggers, which are rarer, check the allowlist here.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "snare.h"

/* Entries in a hash map (kernel >= 6.6). The kfunc's BTF must name a struct,
 * not a forward declaration, to match the kernel's; no field is read. */
struct bpf_map {
	__u32 _unused;
};

extern __s64 bpf_map_sum_elem_count(const struct bpf_map *map) __ksym;

/* max_entries are set by the loader from block.capacity; these are defaults. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, __u32); /* IPv4 source, network order */
	__type(value, struct block_val);
} block4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, struct addr6);
	__type(value, struct block_val);
} block6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4_key);
	__type(value, struct block_val);
} cidr4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm6_key);
	__type(value, struct block_val);
} cidr6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4_key);
	__type(value, __u8);
} allow4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm6_key);
	__type(value, __u8);
} allow6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8); /* TRAP_TCP | TRAP_UDP */
} trap_ports SEC(".maps");

/* Scan state lives apart from the block maps: a flood of spoofed sources on
 * trap ports can only churn this map, never evict a block. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct addr6);
	__type(value, struct scan_state);
} scan SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX * STAT_IFACE_SLOTS);
	__type(key, __u32); /* slot * STAT_MAX + enum stat_reason */
	__type(value, struct counter);
} stats SEC(".maps");

/* Per-CPU token bucket for trap events: no atomics, no contention. */
struct bucket {
	__u64 tokens;
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bucket);
} event_bucket SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Emit BTF for the types bpf2go -type generates Go for that no map names: the
 * event Go decodes (the ring buffer map has no value type) and the enums. */
const struct trap_event *unused_trap_event __attribute__((unused));
const enum stat_reason *unused_stat_reason __attribute__((unused));
const enum abi *unused_abi __attribute__((unused));
const enum limits *unused_limits __attribute__((unused));
const enum block_flag *unused_block_flag __attribute__((unused));
const enum cfg_flag *unused_cfg_flag __attribute__((unused));
const enum trap_proto *unused_trap_proto __attribute__((unused));
const enum trap_action *unused_trap_action __attribute__((unused));

#define VLAN_MAX_DEPTH 2
#define IPV6_EXT_MAX 4
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define NSEC_PER_SEC 1000000000ULL

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* What the parser extracted from one packet. */
struct pkt {
	void *l4;       /* start of the L4 header, NULL for non-first fragments */
	__u8 proto;     /* L4 protocol */
	__u8 family;    /* 4 or 6 */
	__u32 saddr4;
	struct addr6 saddr6;
	__u32 stat_base; /* first counter of the ingress interface's slot */
};

static __always_inline void count(const struct pkt *p, __u32 reason, __u64 bytes)
{
	__u32 key = p->stat_base + reason;
	struct counter *c = bpf_map_lookup_elem(&stats, &key);

	if (c) { /* per-CPU slot: no atomics */
		c->packets++;
		c->bytes += bytes;
	}
}

/* Parse up to the L4 header. Returns 0 on success, -1 to pass unparsed. */
static __always_inline int parse(void *data, void *data_end, struct pkt *p)
{
	struct ethhdr *eth = data;
	void *cur;
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return -1;
	cur = eth + 1;
	proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < VLAN_MAX_DEPTH; i++) {
		struct vlan_hdr *vh = cur;

		if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		if ((void *)(vh + 1) > data_end)
			return -1;
		proto = vh->proto;
		cur = vh + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cur;
		__u32 hlen;

		if ((void *)(ip + 1) > data_end)
			return -1;
		hlen = ip->ihl * 4;
		if (hlen < sizeof(*ip))
			return -1; /* ihl < 5: malformed */
		p->family = 4;
		p->saddr4 = ip->saddr;
		p->proto = ip->protocol;
		/* Non-first fragments carry no L4 header: block check only. */
		p->l4 = (ip->frag_off & bpf_htons(0x1fff)) ? NULL : cur + hlen;
		return 0;
	}

	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cur;
		__u8 next;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		p->family = 6;
		__builtin_memcpy(p->saddr6.addr, &ip6->saddr, 16);
		next = ip6->nexthdr;
		cur = ip6 + 1;
		p->l4 = NULL;

		/* Bounded walk over the common extension headers. */
#pragma unroll
		for (int i = 0; i < IPV6_EXT_MAX; i++) {
			__u8 *ext = cur;

			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT &&
			    next != IPPROTO_AH)
				break;
			if ((void *)(ext + 8) > data_end)
				return -1;
			if (next == IPPROTO_FRAGMENT) {
				/* Offset != 0: no L4 header in this fragment. */
				if (*(__be16 *)(ext + 2) & bpf_htons(0xfff8)) {
					p->proto = ext[0];
					return 0;
				}
				cur = ext + 8;
			} else if (next == IPPROTO_AH) {
				cur = ext + (ext[1] + 2) * 4;
			} else {
				cur = ext + (ext[1] + 1) * 8;
			}
			next = ext[0];
		}
		p->proto = next;
		p->l4 = cur;
		return 0;
	}
	return -1;
}

/* Drop while the deadline is in the future: expiry is exact, sweeps only
 * reclaim memory. Returns 1 if the entry is in force. */
static __always_inline int in_force(struct block_val *v, __u64 now)
{
	return v->deadline > now; /* DEADLINE_PERMANENT is larger than any clock */
}

/* Per-entry hit counter and last-hit time, for `snarectl list`. A plain
 * increment, not an atomic one: a locked add on every dropped packet cost
 * more than the rest of the drop path's extra work, and if two CPUs drop
 * packets from the same source at the same instant one hit may be lost,
 * which a "still being hit, roughly this hard" column can afford. The drop
 * totals per CPU (count()) stay exact. last_hit is only written when the
 * coarse clock moved (every few ms), which saves a store per packet. */
static __always_inline void hit(struct block_val *v, __u64 now)
{
	v->hits++;
	if (v->last_hit != now)
		v->last_hit = now;
}

static __always_inline int allowlisted(struct pkt *p)
{
	if (p->family == 4) {
		struct lpm4_key k = {.prefixlen = 32};

		__builtin_memcpy(k.addr, &p->saddr4, 4);
		return bpf_map_lookup_elem(&allow4, &k) != NULL;
	}
	struct lpm6_key k = {.prefixlen = 128};

	__builtin_memcpy(k.addr, p->saddr6.addr, 16);
	return bpf_map_lookup_elem(&allow6, &k) != NULL;
}

static __always_inline int ratelimit_ok(struct config *cfg, __u64 now)
{
	__u32 zero = 0;
	struct bucket *b = bpf_map_lookup_elem(&event_bucket, &zero);

	if (!b || !cfg->event_interval_ns)
		return 0;
	if (b->last_ns == 0) {
		b->tokens = cfg->event_burst;
	} else {
		__u64 add = (now - b->last_ns) / cfg->event_interval_ns;

		b->tokens += add;
		if (b->tokens > cfg->event_burst)
			b->tokens = cfg->event_burst;
	}
	b->last_ns = now;
	if (b->tokens == 0)
		return 0;
	b->tokens--;
	return 1;
}

static __always_inline void send_event(struct config *cfg, struct pkt *p, struct scan_state *st,
				       __u8 flags, __u8 action, __u64 now, __u64 deadline)
{
	struct trap_event *e;

	if (!ratelimit_ok(cfg, now))
		goto suppressed;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		goto suppressed;
	e->time_ns = now;
	e->deadline = deadline;
	if (p->family == 4) {
		__builtin_memset(e->addr, 0, 10);
		e->addr[10] = 0xff;
		e->addr[11] = 0xff;
		__builtin_memcpy(&e->addr[12], &p->saddr4, 4);
	} else {
		__builtin_memcpy(e->addr, p->saddr6.addr, 16);
	}
	__builtin_memcpy(e->ports, st->ports, sizeof(e->ports));
	e->nports = st->nports;
	e->family = p->family;
	e->proto = p->proto;
	e->tcp_flags = flags;
	e->action = action;
	bpf_ringbuf_submit(e, 0);
	count(p, STAT_EVENT_SENT, 0);
	return;
suppressed:
	count(p, STAT_EVENT_SUPPRESSED, 0);
}

static __always_inline __s64 block_entries(__u8 family)
{
	if (family == 4)
		return bpf_map_sum_elem_count((const struct bpf_map *)&block4);
	return bpf_map_sum_elem_count((const struct bpf_map *)&block6);
}

/* Returns XDP_DROP when this packet triggered a block, else XDP_PASS. exact:
 * the source has an (expired) exact entry, which a block would overwrite. */
static __always_inline int trap(struct config *cfg, struct pkt *p, void *data_end, struct addr6 *key6,
				__u64 len, int exact)
{
	__u8 flags = 0, want, *mark;
	__u32 port, idx, block_bit;
	__u64 now;

	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = p->l4;

		if ((void *)(th + 1) > data_end)
			return XDP_PASS;
		flags = ((__u8 *)th)[13];
		/* Probes carry no ACK and no RST: SYN, FIN, NULL, XMAS and the like.
		 * Packets with ACK belong to a connection (e.g. a reply to one of the
		 * host's own ephemeral ports that happens to be a trap port). */
		if (flags & (0x10 | 0x04))
			return XDP_PASS;
		port = bpf_ntohs(th->dest);
		want = TRAP_TCP;
		block_bit = CFG_TRAP_TCP_BLOCK;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = p->l4;

		if ((void *)(uh + 1) > data_end)
			return XDP_PASS;
		port = bpf_ntohs(uh->dest);
		want = TRAP_UDP;
		block_bit = CFG_TRAP_UDP_BLOCK;
	} else {
		return XDP_PASS;
	}

	idx = port;
	mark = bpf_map_lookup_elem(&trap_ports, &idx);
	if (!mark || !(*mark & want))
		return XDP_PASS;
	count(p, STAT_TRAP_HIT, len);

	now = bpf_ktime_get_coarse_ns();
	struct addr6 skey;

	if (p->family == 4) {
		__builtin_memset(skey.addr, 0, 10);
		skey.addr[10] = 0xff;
		skey.addr[11] = 0xff;
		__builtin_memcpy(&skey.addr[12], &p->saddr4, 4);
	} else {
		skey = *key6;
	}

	struct scan_state *st = bpf_map_lookup_elem(&scan, &skey);

	if (!st) {
		struct scan_state fresh = {.first_ns = now};

		bpf_map_update_elem(&scan, &skey, &fresh, BPF_ANY);
		st = bpf_map_lookup_elem(&scan, &skey);
		if (!st)
			return XDP_PASS;
	}
	if (now - st->first_ns > cfg->trap_window_ns) {
		st->first_ns = now;
		st->nports = 0;
		st->reported = 0;
	}

	/* Record this (proto, port) once. Unsynchronised across CPUs: at worst a
	 * concurrent probe is counted a packet late. */
	__u32 pp = (__u32)p->proto << 16 | port, n = st->nports, seen = 0;

#pragma unroll
	for (int i = 0; i < TRAP_MAX_PORTS; i++) {
		if (i < n && st->ports[i] == pp)
			seen = 1;
	}
	if (!seen && n < TRAP_MAX_PORTS) {
		st->ports[n & (TRAP_MAX_PORTS - 1)] = pp;
		st->nports = n + 1;
	}
	if (st->nports < cfg->trap_threshold)
		return XDP_PASS;

	if (allowlisted(p)) {
		if (!(st->reported & SCAN_REP_ALLOW)) {
			st->reported |= SCAN_REP_ALLOW;
			send_event(cfg, p, st, flags, TRAP_ACT_ALLOWLISTED, now, 0);
		}
		return XDP_PASS;
	}
	if (!(cfg->flags & block_bit)) {
		if (!(st->reported & SCAN_REP_LOG)) {
			st->reported |= SCAN_REP_LOG;
			send_event(cfg, p, st, flags, TRAP_ACT_LOGGED, now, 0);
		}
		return XDP_PASS;
	}
	/* Blocks the daemon made are never evicted to make room for trap blocks:
	 * the trap stops at block_limit (the maps are larger, so the LRU never has
	 * to evict below it). Counting the map costs a sum over CPUs, paid only
	 * at a trigger. */
	if (!exact && cfg->block_limit && block_entries(p->family) >= (__s64)cfg->block_limit) {
		count(p, STAT_TRAP_FULL, 0);
		if (!(st->reported & SCAN_REP_FULL)) {
			st->reported |= SCAN_REP_FULL;
			send_event(cfg, p, st, flags, TRAP_ACT_FULL, now, 0);
		}
		return XDP_PASS;
	}

	struct block_val v = {
		.deadline = cfg->trap_ttl_ns ? now + cfg->trap_ttl_ns : DEADLINE_PERMANENT,
		.hits = 1,
		.last_hit = now,
		.flags = BLOCK_F_TRAP,
	};

	if (p->family == 4)
		bpf_map_update_elem(&block4, &p->saddr4, &v, BPF_ANY);
	else
		bpf_map_update_elem(&block6, key6, &v, BPF_ANY);
	count(p, STAT_TRAP_BLOCK, 0);
	send_event(cfg, p, st, flags, TRAP_ACT_BLOCKED, now, v.deadline);
	if (cfg->flags & CFG_DRY_RUN) {
		count(p, STAT_DRY_RUN, len);
		return XDP_PASS;
	}
	count(p, STAT_DROP_TRAP, len);
	return XDP_DROP;
}

SEC("xdp")
int snare_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	struct block_val *v;
	struct addr6 key6;
	struct pkt p = {};
	__u32 zero = 0, reason;
	int exact;
	__u64 now;

	struct config *cfg = bpf_map_lookup_elem(&settings, &zero);

	p.stat_base = (ctx->ingress_ifindex & (STAT_IFACE_SLOTS - 1)) * STAT_MAX;

	if (!cfg || parse(data, data_end, &p) < 0) {
		count(&p, STAT_PASS_UNPARSED, len);
		return XDP_PASS;
	}

	/* Exact match: one hash lookup. IPv6 sources are masked to the block
	 * prefix (default /64) so one entry covers what one host can rotate in. */
	if (p.family == 4) {
		v = bpf_map_lookup_elem(&block4, &p.saddr4);
	} else {
		__u64 *a = (__u64 *)p.saddr6.addr, *k = (__u64 *)key6.addr;

		k[0] = a[0] & cfg->v6_mask[0];
		k[1] = a[1] & cfg->v6_mask[1];
		v = bpf_map_lookup_elem(&block6, &key6);
	}
	exact = v != NULL;
	if (v) {
		now = bpf_ktime_get_coarse_ns();
		if (in_force(v, now)) {
			/* An IPv6 entry covers a whole /64, which may hold an allowlisted
			 * address (the gateway on a shared /64): check it. IPv4 entries are
			 * single addresses the daemon and the trap never block when
			 * allowlisted, so the v4 drop path stays one lookup. */
			if (p.family == 6 && allowlisted(&p)) {
				count(&p, STAT_PASS_ALLOW, len);
				return XDP_PASS;
			}
			reason = STAT_DROP_EXACT;
			goto drop;
		}
		/* Expired: as if not blocked. A CIDR around it may still be in force. */
		count(&p, STAT_PASS_EXPIRED, len);
	}

	/* CIDR blocks: LPM lookups are skipped while the tries are empty. */
	if (p.family == 4 ? cfg->cidr4_entries : cfg->cidr6_entries) {
		if (p.family == 4) {
			struct lpm4_key k = {.prefixlen = 32};

			__builtin_memcpy(k.addr, &p.saddr4, 4);
			v = bpf_map_lookup_elem(&cidr4, &k);
		} else {
			struct lpm6_key k = {.prefixlen = 128};

			__builtin_memcpy(k.addr, p.saddr6.addr, 16);
			v = bpf_map_lookup_elem(&cidr6, &k);
		}
		if (v) {
			now = bpf_ktime_get_coarse_ns();
			if (in_force(v, now)) {
				if (allowlisted(&p)) {
					count(&p, STAT_PASS_ALLOW, len);
					return XDP_PASS;
				}
				reason = STAT_DROP_CIDR;
				goto drop;
			}
			count(&p, STAT_PASS_EXPIRED, len);
		}
	}

	if ((cfg->flags & CFG_TRAP_ON) && p.l4 && trap(cfg, &p, data_end, &key6, len, exact) == XDP_DROP)
		return XDP_DROP;
	count(&p, STAT_PASS, len);
	return XDP_PASS;

drop:
	hit(v, now);
	if (cfg->flags & CFG_DRY_RUN) {
		count(&p, STAT_DRY_RUN, len);
		return XDP_PASS;
	}
	count(&p, reason, len);
	return XDP_DROP;
}

char _license[] SEC("license") = "Dual BSD/GPL";
