// SPDX-License-Identifier: Apache-2.0
/*
 * sluice_xdp.c — kernel early rejection for sluice (DESIGN.md §2 item 19).
 *
 * Runs on every received frame of the interfaces the loader attached it to.
 * It looks only at connection attempts — TCP SYN without ACK — to the
 * protected ports; every other frame, and every packet of an established
 * connection, passes untouched. For a protected SYN, in order:
 *
 *   1. source on the static deny list        -> reject (settings.deny_action)
 *   2. source's tenant (declared network, else learned address) has an
 *      unexpired verdict                     -> reject (verdict.action)
 *   3. source's SYN bucket is empty          -> drop
 *   4. otherwise                             -> pass
 *
 * Rejecting is either XDP_DROP or a TCP RST+ACK built in place and sent back
 * out of the same interface (XDP_TX), so the client fails at once instead of
 * retrying its SYN for a minute. Whatever the parser does not understand
 * (other ethertypes, QinQ, fragments past the first, unknown IPv6 extension
 * headers) passes; headers that are truncated or inconsistent pass too and
 * are counted as malformed (the kernel stack drops them anyway).
 *
 * Maps and layouts: sluice_maps.h.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SLUICE_DEFINE_MAPS
#include "sluice_maps.h"

/* 802.1Q / 802.1ad tag following the MAC addresses (not in the uapi). */
struct vlan_tag {
	__be16 tci;
	__be16 encapsulated_proto;
};

/* IPv6 extension headers we walk through before TCP (RFC 8200 §4). */
#define IPV6_EXT_HOPOPTS 0
#define IPV6_EXT_ROUTING 43
#define IPV6_EXT_FRAGMENT 44
#define IPV6_EXT_DSTOPTS 60
#define IPV6_MAX_EXT_HEADERS 4

#define IPV4_FRAG_OFFSET_MASK 0x1fff
#define IPV4_DONT_FRAGMENT 0x4000

/* RFC 9293 §3.1: data offset 5 words, RST|ACK. */
#define TCP_RST_OFF_FLAGS 0x5014
#define RST_TTL 64
/* Shortest Ethernet frame without FCS; a RST is padded up to it when the
 * SYN it answers was at least this long. */
#define ETH_MIN_FRAME 60

enum parse {
	PARSE_OK,        /* a TCP segment: pkt is filled in */
	PARSE_OTHER,     /* not ours to judge: pass */
	PARSE_MALFORMED, /* truncated or inconsistent headers: pass, count */
};

struct pkt {
	__u32 l3_off;      /* bytes before the IP header (Ethernet + VLAN) */
	__u32 l4_off;      /* bytes before the TCP header */
	__u32 payload_len; /* TCP payload bytes (SYN data, for the RST's ack) */
	struct sluice_addr src;
};

static __always_inline void count(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&SLUICE_MAP_STATS, &reason);

	if (n)
		*n += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline void count_tenant(__u32 tenant)
{
	__u64 one = 1;
	__u64 *n = bpf_map_lookup_elem(&SLUICE_MAP_TENANT_REJECTS, &tenant);

	if (n) {
		*n += 1;
		return;
	}
	/* First rejection of this tenant on this node; a concurrent first
	 * insert from another CPU may win (EEXIST), and then we add to it. */
	if (bpf_map_update_elem(&SLUICE_MAP_TENANT_REJECTS, &tenant, &one, BPF_NOEXIST)) {
		n = bpf_map_lookup_elem(&SLUICE_MAP_TENANT_REJECTS, &tenant);
		if (n)
			*n += 1;
	}
}

static __always_inline enum parse parse_tcp(void *data, void *data_end, struct pkt *p,
					    __u32 l3_payload_len)
{
	struct tcphdr *tcp = data + p->l4_off;
	__u32 tcp_len;

	if ((void *)(tcp + 1) > data_end)
		return PARSE_MALFORMED;
	tcp_len = tcp->doff * 4;
	if (tcp_len < sizeof(*tcp) || l3_payload_len < tcp_len)
		return PARSE_MALFORMED;
	p->payload_len = l3_payload_len - tcp_len;
	return PARSE_OK;
}

static __always_inline enum parse parse_ipv4(void *data, void *data_end, struct pkt *p)
{
	struct iphdr *ip = data + p->l3_off;
	__u32 hdr_len, tot_len;

	if ((void *)(ip + 1) > data_end)
		return PARSE_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	if (ip->protocol != IPPROTO_TCP)
		return PARSE_OTHER;
	/* A later fragment carries no TCP header. A first fragment does, and
	 * is judged like a whole datagram. */
	if (ip->frag_off & bpf_htons(IPV4_FRAG_OFFSET_MASK))
		return PARSE_OTHER;
	hdr_len = ip->ihl * 4;
	tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < hdr_len)
		return PARSE_MALFORMED;

	p->src.family = SLUICE_FAMILY_V4;
	__builtin_memcpy(p->src.bytes, &ip->saddr, 4);
	p->l4_off = p->l3_off + hdr_len;
	return parse_tcp(data, data_end, p, tot_len - hdr_len);
}

static __always_inline enum parse parse_ipv6(void *data, void *data_end, struct pkt *p)
{
	struct ipv6hdr *ip6 = data + p->l3_off;
	__u32 off, ext_len = 0, payload_len;
	__u8 next;

	if ((void *)(ip6 + 1) > data_end)
		return PARSE_MALFORMED;
	if (ip6->version != 6)
		return PARSE_MALFORMED;
	payload_len = bpf_ntohs(ip6->payload_len);
	next = ip6->nexthdr;
	off = p->l3_off + sizeof(*ip6);

	/* A bounded loop (verifier-checked since Linux 5.3). */
	for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		if (next == IPPROTO_TCP)
			break;
		if (next == IPV6_EXT_HOPOPTS || next == IPV6_EXT_ROUTING ||
		    next == IPV6_EXT_DSTOPTS) {
			/* RFC 8200 §4.3: next header, length in 8-octet units
			 * not counting the first 8. */
			__u8 *ext = data + off;

			if ((void *)(ext + 2) > data_end)
				return PARSE_MALFORMED;
			next = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
			ext_len += ((__u32)ext[1] + 1) * 8;
		} else if (next == IPV6_EXT_FRAGMENT) {
			/* RFC 8200 §4.5: 8 octets; offset in the top 13 bits
			 * of bytes 2-3. Only the first fragment has TCP. */
			__u8 *frag = data + off;

			if ((void *)(frag + 8) > data_end)
				return PARSE_MALFORMED;
			if (((frag[2] << 8) | frag[3]) & 0xfff8)
				return PARSE_OTHER;
			next = frag[0];
			off += 8;
			ext_len += 8;
		} else {
			return PARSE_OTHER;
		}
	}
	if (next != IPPROTO_TCP)
		return PARSE_OTHER;
	if (payload_len < ext_len)
		return PARSE_MALFORMED;

	p->src.family = SLUICE_FAMILY_V6;
	__builtin_memcpy(p->src.bytes, &ip6->saddr, 16);
	p->l4_off = off;
	return parse_tcp(data, data_end, p, payload_len - ext_len);
}

static __always_inline enum parse parse(void *data, void *data_end, struct pkt *p)
{
	struct ethhdr *eth = data;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return PARSE_MALFORMED;
	proto = eth->h_proto;
	p->l3_off = sizeof(*eth);
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_tag *tag = data + sizeof(*eth);

		if ((void *)(tag + 1) > data_end)
			return PARSE_MALFORMED;
		proto = tag->encapsulated_proto;
		p->l3_off += sizeof(*tag);
	}
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(data, data_end, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(data, data_end, p);
	return PARSE_OTHER;
}

/* Internet checksum (RFC 1071) over n 16-bit words as they lie in memory.
 * The one's-complement sum is byte-order independent, so the folded result
 * is stored back exactly as computed. */
static __always_inline __u32 csum_words(const __u16 *w, int n, __u32 sum)
{
#pragma clang loop unroll(full)
	for (int i = 0; i < n; i++)
		sum += w[i];
	return sum;
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Fills the 20-byte TCP RST+ACK at tcp. The SYN carried no ACK, so per
 * RFC 9293 §3.10.7.1 the reset has seq 0 and acknowledges everything the
 * SYN occupied: its sequence number + 1 (the SYN) + any SYN data. */
static __always_inline void write_rst_tcp(struct tcphdr *tcp, __be16 sport, __be16 dport,
					  __u32 ack)
{
	__u8 *b = (__u8 *)tcp;

	tcp->source = sport;
	tcp->dest = dport;
	tcp->seq = 0;
	tcp->ack_seq = bpf_htonl(ack);
	b[12] = TCP_RST_OFF_FLAGS >> 8;
	b[13] = TCP_RST_OFF_FLAGS & 0xff;
	tcp->window = 0;
	tcp->check = 0;
	tcp->urg_ptr = 0;
}

/* Turns the SYN in ctx into a RST+ACK to its sender, in place: MAC and IP
 * addresses and ports swapped, IP options / IPv6 extension headers and TCP
 * options and data dropped, the frame shortened. Returns the XDP action. */
static __always_inline int reply_rst(struct xdp_md *ctx, const struct pkt *p, int ipv6)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *syn = data + p->l4_off;
	__u32 ip_len = ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u32 rst_len, frame_len, old_len;
	__be16 sport, dport;
	__u32 ack, sum;
	__u8 mac[ETH_ALEN];
	struct ethhdr *eth;
	struct tcphdr *tcp;

	/* Everything the reply needs from the old TCP header, which may lie
	 * past the new end of the frame. */
	if ((void *)(syn + 1) > data_end)
		return XDP_DROP;
	sport = syn->dest;
	dport = syn->source;
	ack = bpf_ntohl(syn->seq) + 1 + p->payload_len;

	/* l3_off is 14 or 18: the frame keeps its VLAN tag. */
	rst_len = p->l3_off + ip_len + sizeof(struct tcphdr);
	old_len = bpf_xdp_get_buff_len(ctx);
	frame_len = old_len < ETH_MIN_FRAME ? old_len : ETH_MIN_FRAME;
	if (frame_len < rst_len)
		frame_len = rst_len;
	if (frame_len > old_len)
		return XDP_DROP; /* cannot happen: the SYN held all of it */
	if (frame_len < old_len &&
	    bpf_xdp_adjust_tail(ctx, (int)frame_len - (int)old_len))
		return XDP_DROP;

	/* adjust_tail invalidated every packet pointer: start over. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	if (ipv6) {
		struct ipv6hdr *ip6 = data + (p->l3_off & 0xff);
		struct in6_addr addr;

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > data_end)
			return XDP_DROP;
		addr = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = addr;
		/* version 6, traffic class 0, flow label 0 */
		*(__be32 *)ip6 = bpf_htonl(0x60000000);
		ip6->payload_len = bpf_htons(sizeof(struct tcphdr));
		ip6->nexthdr = IPPROTO_TCP;
		ip6->hop_limit = RST_TTL;

		write_rst_tcp(tcp, sport, dport, ack);
		/* RFC 8200 §8.1 pseudo-header: addresses, upper-layer length,
		 * next header. */
		sum = csum_words((__u16 *)&ip6->saddr, 16, 0);
		sum += bpf_htons(sizeof(struct tcphdr)) + bpf_htons(IPPROTO_TCP);
	} else {
		struct iphdr *ip = data + (p->l3_off & 0xff);
		__be32 addr;

		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		tcp = (void *)(ip + 1);
		if ((void *)(tcp + 1) > data_end)
			return XDP_DROP;
		addr = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = addr;
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0;
		ip->tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct tcphdr));
		ip->id = 0;
		ip->frag_off = bpf_htons(IPV4_DONT_FRAGMENT);
		ip->ttl = RST_TTL;
		ip->protocol = IPPROTO_TCP;
		ip->check = 0;
		ip->check = csum_fold(csum_words((__u16 *)ip, sizeof(*ip) / 2, 0));

		write_rst_tcp(tcp, sport, dport, ack);
		/* RFC 9293 §3.1 pseudo-header: addresses, zero + protocol,
		 * TCP length. */
		sum = csum_words((__u16 *)&ip->saddr, 4, 0);
		sum += bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(struct tcphdr));
	}
	sum = csum_words((__u16 *)tcp, sizeof(*tcp) / 2, sum);
	tcp->check = csum_fold(sum);

	/* Zero the padding up to the minimum frame (at most 6 bytes). */
	{
		__u8 *pad = (__u8 *)(tcp + 1);

#pragma clang loop unroll(full)
		for (int i = 0; i < ETH_MIN_FRAME - 54; i++) {
			if ((void *)(pad + i + 1) > data_end)
				break;
			pad[i] = 0;
		}
	}
	return XDP_TX;
}

static __always_inline int reject(struct xdp_md *ctx, const struct pkt *p, __u32 action)
{
	if (action == SLUICE_ACTION_RST)
		return reply_rst(ctx, p, p->src.family == SLUICE_FAMILY_V6);
	return XDP_DROP;
}

/* The source's tenant: a declared network wins over a learned address; a
 * learned address seen with two tenants names none. */
static __always_inline int tenant_of(const struct sluice_lpm_key *key, __u32 *tenant)
{
	struct sluice_learned *learned;
	__u32 *declared;

	declared = bpf_map_lookup_elem(&SLUICE_MAP_TENANT_NETS, key);
	if (declared) {
		*tenant = *declared;
		return 1;
	}
	learned = bpf_map_lookup_elem(&SLUICE_MAP_LEARNED, &key->addr);
	if (learned && !(learned->flags & SLUICE_LEARNED_SHARED)) {
		*tenant = learned->tenant_id;
		return 1;
	}
	return 0;
}

/* GCRA step for the source's bucket (see struct sluice_syn_bucket).
 * Returns 1 when the SYN may pass. */
static __always_inline int syn_allowed(const struct sluice_settings *s,
				       const struct sluice_addr *src, __u64 now)
{
	struct sluice_syn_bucket fresh, *b;
	__u64 interval, tolerance;
	__u32 burst;

	if (s->syn_rate == 0)
		return 1;
	interval = 1000000000ULL / s->syn_rate;
	burst = s->syn_burst ? s->syn_burst : 1;
	tolerance = interval * (burst - 1);

	b = bpf_map_lookup_elem(&SLUICE_MAP_SYN_BUCKETS, src);
	if (!b) {
		fresh.tat_ns = now + interval;
		if (!bpf_map_update_elem(&SLUICE_MAP_SYN_BUCKETS, src, &fresh, BPF_NOEXIST))
			return 1;
		/* Another CPU created it first: take the normal path. */
		b = bpf_map_lookup_elem(&SLUICE_MAP_SYN_BUCKETS, src);
		if (!b)
			return 1;
	}
	/* Several CPUs may take SYNs from one source at once (RSS spreads
	 * flows): retry the compare-and-swap a few times, and count a source
	 * that keeps losing the race as flooding. */
#pragma clang loop unroll(full)
	for (int i = 0; i < 4; i++) {
		__u64 old = b->tat_ns;
		__u64 tat = old > now ? old : now;

		if (tat - now > tolerance)
			return 0;
		if (__sync_val_compare_and_swap(&b->tat_ns, old, tat + interval) == old)
			return 1;
	}
	return 0;
}

SEC("xdp")
int SLUICE_PROG_XDP(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct sluice_settings *settings;
	struct sluice_verdict *verdict;
	struct sluice_lpm_key key = {};
	struct pkt p = {};
	struct tcphdr *tcp;
	__u32 zero = 0, tenant;
	__u16 port;
	__u64 now;

	switch (parse(data, data_end, &p)) {
	case PARSE_OK:
		break;
	case PARSE_MALFORMED:
		count(SLUICE_REASON_MALFORMED);
		return XDP_PASS;
	default:
		return XDP_PASS;
	}

	/* Connection attempts only: established connections are never cut. */
	tcp = data + (p.l4_off & 0xffff);
	if ((void *)(tcp + 1) > data_end)
		return XDP_PASS;
	if (!tcp->syn || tcp->ack || tcp->rst)
		return XDP_PASS;
	port = bpf_ntohs(tcp->dest);
	if (!bpf_map_lookup_elem(&SLUICE_MAP_PORTS, &port))
		return XDP_PASS;
	settings = bpf_map_lookup_elem(&SLUICE_MAP_SETTINGS, &zero);
	if (!settings)
		return XDP_PASS;

	key.prefixlen = SLUICE_LPM_FAMILY_BITS + 128;
	key.addr = p.src;
	if (bpf_map_lookup_elem(&SLUICE_MAP_DENY, &key)) {
		count(SLUICE_REASON_DENIED);
		return reject(ctx, &p, settings->deny_action);
	}

	now = bpf_ktime_get_ns();
	if (tenant_of(&key, &tenant)) {
		verdict = bpf_map_lookup_elem(&SLUICE_MAP_VERDICTS, &tenant);
		if (verdict && now < verdict->expires_at_ns) {
			count(SLUICE_REASON_TENANT_REJECTED);
			count_tenant(tenant);
			return reject(ctx, &p, verdict->action);
		}
	}

	if (!syn_allowed(settings, &p.src, now)) {
		count(SLUICE_REASON_SYN_LIMITED);
		return XDP_DROP;
	}
	count(SLUICE_REASON_PASSED);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Apache-2.0";
