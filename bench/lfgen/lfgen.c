// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * lfgen.c - the traffic generator: run by BPF_PROG_TEST_RUN with
 * BPF_F_TEST_XDP_LIVE_FRAMES, the kernel runs this program on a page_pool copy
 * of one template frame again and again, and each XDP_REDIRECT really sends
 * the frame out of out_ifindex (the generator's veth) into its peer's ring.
 *
 * With rand_mask set, the IPv4 source becomes rand_base | (random & rand_mask)
 * on every frame, with incremental (RFC 1624) updates of the IPv4 and TCP
 * checksums; UDP templates carry checksum 0. Page contents persist between
 * runs, so each update starts from the address currently in the frame.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

volatile const __u32 out_ifindex;
volatile const __u32 rand_mask; /* host order; 0: fixed source */
volatile const __u32 rand_base; /* host order */
volatile const __u32 self_drop; /* 1: drop here, send nothing (the generator's own cost) */

__u64 frames; /* frames generated; the generator runs on one CPU */

static __always_inline void csum_replace4(__u16 *sum, __u32 from, __u32 to)
{
	__u32 c = (__u16)~*sum;

	c += (__u16)~(from & 0xffff);
	c += (__u16)~(from >> 16);
	c += to & 0xffff;
	c += to >> 16;
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	*sum = (__u16)~c;
}

SEC("xdp")
int lfgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	frames++;
	if (rand_mask) {
		struct iphdr *ip = data + sizeof(struct ethhdr);

		if ((void *)(ip + 1) > data_end)
			return XDP_ABORTED;
		__u32 from = ip->saddr;
		__u32 to = bpf_htonl(rand_base | (bpf_get_prandom_u32() & rand_mask));

		csum_replace4(&ip->check, from, to);
		if (ip->protocol == IPPROTO_TCP) {
			struct tcphdr *th = (void *)(ip + 1); /* templates have ihl 5 */

			if ((void *)(th + 1) > data_end)
				return XDP_ABORTED;
			csum_replace4(&th->check, from, to);
		}
		ip->saddr = to;
	}
	if (self_drop)
		return XDP_DROP;
	return bpf_redirect(out_ifindex, 0);
}

char _license[] SEC("license") = "Dual BSD/GPL";
