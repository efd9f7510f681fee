// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * floor.c - the bare XDP blocker snare is measured against: parse Ethernet and
 * IPv4/IPv6, look the source up in one LRU hash whose value is a deadline in
 * CLOCK_MONOTONIC ns, drop while the deadline is in the future (read with the
 * coarse clock, as snare does), and count verdicts per CPU. Nothing else: no
 * VLANs, no options, no CIDR, no allowlist, no traps. What any XDP blocker
 * must at least do, so snare's extra work is the difference.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 20); /* resized by the harness */
	__type(key, __u32);           /* IPv4 source, network order */
	__type(value, __u64);         /* deadline, CLOCK_MONOTONIC ns */
} floor4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct in6_addr);
	__type(value, __u64);
} floor6 SEC(".maps");

enum { FLOOR_PASS, FLOOR_DROP, FLOOR_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOOR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} floor_stats SEC(".maps");

static __always_inline int verdict(__u32 idx, int action)
{
	__u64 *c = bpf_map_lookup_elem(&floor_stats, &idx);

	if (c)
		*c += 1;
	return action;
}

static __always_inline int check(__u64 *deadline)
{
	if (deadline && *deadline > bpf_ktime_get_coarse_ns())
		return verdict(FLOOR_DROP, XDP_DROP);
	return verdict(FLOOR_PASS, XDP_PASS);
}

SEC("xdp")
int floor_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return verdict(FLOOR_PASS, XDP_PASS);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 saddr;

		if ((void *)(ip + 1) > data_end)
			return verdict(FLOOR_PASS, XDP_PASS);
		saddr = ip->saddr;
		return check(bpf_map_lookup_elem(&floor4, &saddr));
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct in6_addr saddr;

		if ((void *)(ip6 + 1) > data_end)
			return verdict(FLOOR_PASS, XDP_PASS);
		saddr = ip6->saddr;
		return check(bpf_map_lookup_elem(&floor6, &saddr));
	}
	return verdict(FLOOR_PASS, XDP_PASS);
}

/* XDP_DROP of everything: the ceiling of the live harness. */
SEC("xdp")
int drop_all(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char _license[] SEC("license") = "Dual BSD/GPL";
