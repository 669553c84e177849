/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sluice_maps.h — the one contract between the XDP program (sluice_xdp.c)
 * and the loader (loader/, Rust, aya).
 *
 * Everything both sides must agree on lives here: map names, pin names,
 * value layouts, actions, counter indices and flags. The loader's build.rs
 * turns every `#define SLUICE_*` below into a Rust constant (so a name is
 * never spelled twice), and the loader's BTF test checks the Rust mirrors of
 * the structs against the compiled object's BTF (so the layouts cannot
 * drift). Keep each #define on one line: build.rs reads them line by line.
 *
 * Addresses: every address-keyed map uses `struct sluice_addr`, one layout for
 * IPv4 and IPv6 with a family byte in front, so one LPM trie serves both
 * families and an IPv6 prefix such as ::/0 never matches an IPv4 source.
 *
 * Time: verdict expiries and SYN buckets use bpf_ktime_get_ns(), i.e.
 * CLOCK_MONOTONIC nanoseconds (not wall clock, not CLOCK_BOOTTIME).
 */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

#include <linux/types.h>

/* ---- names ------------------------------------------------------------ */

/* bpffs directory the loader pins the program, its links and maps under. */
#define SLUICE_PIN_DIR "/sys/fs/bpf/sluice"
/* The loaded XDP program, pinned as <pin dir>/<this>. */
#define SLUICE_PIN_PROG "prog_xdp"
/* One pinned bpf_link per attached interface: <prefix><mode>_<ifname>. */
#define SLUICE_PIN_LINK_PREFIX "link_"

/* The XDP program's function (and kernel program) name. */
#define SLUICE_PROG_XDP sluice_xdp

/* Map names; also the file names of the map pins under the pin dir.
 * Kernel object names hold 15 characters: keep them that short. */
#define SLUICE_MAP_SETTINGS sluice_settings
#define SLUICE_MAP_PORTS sluice_ports
#define SLUICE_MAP_DENY sluice_deny
#define SLUICE_MAP_TENANT_NETS sluice_tnets
#define SLUICE_MAP_LEARNED sluice_learned
#define SLUICE_MAP_VERDICTS sluice_verdicts
#define SLUICE_MAP_SYN_BUCKETS sluice_synbkt
#define SLUICE_MAP_STATS sluice_stats
#define SLUICE_MAP_TENANT_REJECTS sluice_trejects

/* ---- values ----------------------------------------------------------- */

/* What a rejection does (sluice_verdict.action, sluice_settings.deny_action). */
#define SLUICE_ACTION_DROP 1 /* XDP_DROP: the client's SYN times out */
#define SLUICE_ACTION_RST 2  /* XDP_TX a RST+ACK: the client fails at once */

/* Index into SLUICE_MAP_STATS. Only connection attempts (SYN without ACK)
 * to a protected port are counted, except MALFORMED, which counts every
 * packet whose Ethernet/IP/TCP headers are truncated or inconsistent. */
#define SLUICE_REASON_PASSED 0          /* protected SYN let through */
#define SLUICE_REASON_DENIED 1          /* source on the static deny list */
#define SLUICE_REASON_TENANT_REJECTED 2 /* source's tenant has a live verdict */
#define SLUICE_REASON_SYN_LIMITED 3     /* source's SYN bucket was empty */
#define SLUICE_REASON_MALFORMED 4       /* headers did not parse (passed) */
#define SLUICE_REASON_COUNT 5

/* struct sluice_addr.family */
#define SLUICE_FAMILY_V4 4
#define SLUICE_FAMILY_V6 6
/* Bits of struct sluice_addr in front of the address bytes (family + pad):
 * an LPM key for a /N network has prefixlen = SLUICE_LPM_FAMILY_BITS + N. */
#define SLUICE_LPM_FAMILY_BITS 32

/* struct sluice_learned.flags */
#define SLUICE_LEARNED_SHARED 1 /* seen with two tenants: never rejected */

/* Map sizes. Hash and LRU maps preallocate, so these are memory. */
#define SLUICE_MAX_PORTS 1024
#define SLUICE_MAX_DENY 65536
#define SLUICE_MAX_TENANT_NETS 65536
#define SLUICE_MAX_LEARNED 65536
#define SLUICE_MAX_TENANTS 16384
#define SLUICE_MAX_SYN_BUCKETS 65536

/* ---- layouts ---------------------------------------------------------- */

/* A source address. bytes are in network order; IPv4 uses bytes[0..4] and
 * leaves the rest zero. _pad is always zero (LPM keys match on it). */
struct sluice_addr {
	__u8 family; /* SLUICE_FAMILY_V4 or SLUICE_FAMILY_V6 */
	__u8 _pad[3];
	__u8 bytes[16];
};

/* Key of the LPM tries. prefixlen = SLUICE_LPM_FAMILY_BITS + network bits. */
struct sluice_lpm_key {
	__u32 prefixlen;
	struct sluice_addr addr;
};

/* The node-wide knobs (one entry). */
struct sluice_settings {
	__u32 syn_rate;    /* SYNs per second per source; 0 = no SYN limit */
	__u32 syn_burst;   /* SYNs a quiet source may send at once (>= 1) */
	__u32 deny_action; /* SLUICE_ACTION_* for deny-list hits */
	__u32 _pad;
};

/* A source address learned from an authenticated request. */
struct sluice_learned {
	__u32 tenant_id;
	__u32 flags; /* SLUICE_LEARNED_* */
};

/* A tenant's verdict: reject its new connections until expires_at_ns. An
 * expired verdict is ignored; nobody has to delete it. */
struct sluice_verdict {
	__u32 action; /* SLUICE_ACTION_* */
	__u32 _pad;
	__u64 expires_at_ns; /* bpf_ktime_get_ns() clock (CLOCK_MONOTONIC) */
};

/* Per-source SYN token bucket, kept as GCRA "theoretical arrival time": a
 * SYN at time now is allowed when tat - now <= (burst - 1) * interval, and
 * then moves tat to max(tat, now) + interval. Same admissions as a bucket of
 * `burst` tokens refilled at `rate`, in one u64 that a compare-and-swap can
 * update from several CPUs at once. */
struct sluice_syn_bucket {
	__u64 tat_ns; /* bpf_ktime_get_ns() clock */
};

/* ---- maps ------------------------------------------------------------- */
/* Only the XDP program includes this part; build.rs and the BTF test read
 * the names and layouts above. */
#ifdef SLUICE_DEFINE_MAPS

/* Node-wide settings.
 * key: __u32 0; value: struct sluice_settings.
 * writer: loader `apply`; reader: XDP (every protected SYN). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sluice_settings);
} SLUICE_MAP_SETTINGS SEC(".maps");

/* Protected destination ports: only SYNs to these are looked at.
 * key: __u16 port (host order); value: __u8 1.
 * writer: loader `apply`; reader: XDP (every TCP SYN). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} SLUICE_MAP_PORTS SEC(".maps");

/* Static deny list of networks; hit = reject with settings.deny_action.
 * key: struct sluice_lpm_key; value: __u8 1.
 * writer: loader `apply`; reader: XDP (every protected SYN). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SLUICE_MAX_DENY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sluice_lpm_key);
	__type(value, __u8);
} SLUICE_MAP_DENY SEC(".maps");

/* Networks declared by tenants in config (tenants[].networks); the longest
 * matching prefix names the tenant, before any learned address.
 * key: struct sluice_lpm_key; value: __u32 tenant id.
 * writer: loader `apply`; reader: XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SLUICE_MAX_TENANT_NETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sluice_lpm_key);
	__type(value, __u32);
} SLUICE_MAP_TENANT_NETS SEC(".maps");

/* Source addresses learned from authenticated requests; an address seen
 * with a second tenant is flagged SHARED and then names no tenant. LRU: the
 * least recently used addresses fall out when full.
 * key: struct sluice_addr; value: struct sluice_learned.
 * writer: edge via loader `record_learned`; reader: XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SLUICE_MAX_LEARNED);
	__type(key, struct sluice_addr);
	__type(value, struct sluice_learned);
} SLUICE_MAP_LEARNED SEC(".maps");

/* Verdicts on over-quota tenants.
 * key: __u32 tenant id; value: struct sluice_verdict.
 * writer: edge's quota engine via loader `write_verdict`; reader: XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_TENANTS);
	__type(key, __u32);
	__type(value, struct sluice_verdict);
} SLUICE_MAP_VERDICTS SEC(".maps");

/* Per-source SYN token buckets (see struct sluice_syn_bucket).
 * key: struct sluice_addr; value: struct sluice_syn_bucket.
 * writer: XDP; reader: XDP (the loader only counts entries). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SLUICE_MAX_SYN_BUCKETS);
	__type(key, struct sluice_addr);
	__type(value, struct sluice_syn_bucket);
} SLUICE_MAP_SYN_BUCKETS SEC(".maps");

/* Counters per reason, per CPU.
 * key: __u32 SLUICE_REASON_*; value: __u64 packets.
 * writer: XDP; reader: loader `counters` / `sluice-loader status`. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_REASON_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} SLUICE_MAP_STATS SEC(".maps");

/* Rejected connection attempts per tenant, per CPU.
 * key: __u32 tenant id; value: __u64 SYNs rejected by a verdict.
 * writer: XDP; reader: loader `counters` / `sluice-loader status`. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, SLUICE_MAX_TENANTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u64);
} SLUICE_MAP_TENANT_REJECTS SEC(".maps");

#endif /* SLUICE_DEFINE_MAPS */
#endif /* SLUICE_MAPS_H */
