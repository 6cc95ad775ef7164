/* Key and value layouts of the router's tc-BPF classifier maps (src/linux/bpf/router.bpf.c), shared
 * by the program and by the daemon (linux/bpf_classifier.cpp). Plain C, fixed-width fields, no
 * implicit padding: the daemon writes and reads these bytes directly.
 *
 * Addresses are 16 bytes in network order; an IPv4 address is stored IPv4-mapped
 * (::ffff:a.b.c.d), so one map serves both families. Each map mirrors one group of the nft
 * classifier's sets (desired/nft_render.h), so that the reconciler's element diff applies to
 * either datapath unchanged. */
#ifndef KST_BPF_ROUTER_MAPS_H
#define KST_BPF_ROUTER_MAPS_H

#ifdef __cplusplus
#include <cstdint>
typedef uint8_t kst_u8;
typedef uint16_t kst_u16;
typedef uint32_t kst_u32;
typedef uint64_t kst_u64;
#else
typedef __u8 kst_u8;
typedef __u16 kst_u16;
typedef __u32 kst_u32;
typedef __u64 kst_u64;
#endif

/* kst_vip_val.flags: the VIP is in the VIP set (classified), has a bucket count (the bcount
 * element), is filtered by source ranges (the ranged element). An entry whose flags are all
 * clear is deleted. */
#define KST_VIP_SET 1u
#define KST_VIP_COUNT 2u
#define KST_VIP_RANGED 4u

/* kst_slot_val.flags: the (VIP, slot mark) pair is live (flow pins to it are valid), it has a
 * per-endpoint counter element (endpoint holds the address). */
#define KST_SLOT_LIVE 1u
#define KST_SLOT_ENDPOINT 2u

/* The per-CPU array "totals": refused packets by reason, then the new flows (flows pinned
 * afresh: no pin, or an expired one; a pin to a released slot rewritten is not counted, as
 * nft's `add @flow` does not count it; only packets count there, bytes stay 0). */
#define KST_REFUSED_NO_BUCKET 0u
#define KST_REFUSED_SOURCE_RANGE 1u
#define KST_REFUSED_REASONS 2u
#define KST_TOTAL_NEW_FLOWS 2u
#define KST_TOTALS 3u

/* kst_config.flags: redirect straight to the collect-md device (else: set the slot mark and
 * hand the packet to the stack, whose policy rules route it as in nft mode). */
#define KST_CFG_REDIRECT 1u
/* kst_config.flags: the mode's outer UDP checksum is left out over IPv4 (vxlan). */
#define KST_CFG_ZERO_CSUM4 2u
/* kst_config.flags: the program writes the outer headers itself (kst_config.encap) and sends
 * the packet with bpf_redirect_neigh; a packet it cannot forward that way takes the collect-md
 * device (KST_CFG_REDIRECT, where only the header build is missing) or the slot mark. */
#define KST_CFG_HEADERS 4u

/* kst_config.encap: the outer header after the outer IP header. */
#define KST_ENCAP_NONE 0u
#define KST_ENCAP_VXLAN_GPE 1u /* UDP (to kst_config.udp_port) + 8-byte GPE header */
#define KST_ENCAP_IPIP 2u      /* nothing: IP protocol 4 / 41 (ipip, ip6tnl) */
#define KST_ENCAP_GRE 3u       /* 4-byte GRE header, no key, no checksum (gre, ip6gre) */

#define KST_ID_LEN 96

struct kst_vip_key {
  kst_u8 addr[16];
};
struct kst_vip_val {
  kst_u32 buckets; /* the VIP's bucket count B (KST_VIP_COUNT) */
  kst_u32 flags;
};
struct kst_bucket_key {
  kst_u8 vip[16];
  kst_u32 bucket; /* 0 … B-1 */
};
struct kst_slot_key {
  kst_u8 vip[16];
  kst_u32 mark; /* the slot's fwmark (table offset + slot) */
};
struct kst_slot_val {
  kst_u8 endpoint[16];
  kst_u32 flags;
  kst_u32 v4; /* endpoint is an IPv4 address */
  /* The outer source address the kernel picks toward the endpoint (its route's preferred
   * source), same family, mapped as endpoint; all zero: unknown (no header path). */
  kst_u8 src[16];
};
/* LPM key: prefixlen counts the VIP's 128 bits plus the source prefix's. */
struct kst_src_key {
  kst_u32 prefixlen;
  kst_u8 vip[16];
  kst_u8 src[16];
};
/* The allowed interval the prefix was cut from (read back by the daemon). */
struct kst_src_val {
  kst_u8 first[16];
  kst_u8 last[16];
};
struct kst_flow_key {
  kst_u8 saddr[16];
  kst_u8 daddr[16];
  kst_u16 sport, dport; /* network order */
  kst_u32 v4;
};
struct kst_flow_val {
  kst_u32 mark;
  kst_u32 pad;
  kst_u64 seen_ns; /* bpf_ktime_get_ns() of the last refresh */
};
struct kst_counter {
  kst_u64 packets, bytes;
};
struct kst_vip_counter {
  kst_u64 packets, bytes;                 /* every packet to the VIP */
  kst_u64 refused_packets, refused_bytes; /* of those, refused (any reason) */
};
/* A clsact qdisc the daemon created (the "clsact" map, keyed by ifindex). */
struct kst_clsact_val {
  char name[16]; /* the interface's name then (an index reused by another one is not ours) */
};
/* The single element of the "config" array. */
struct kst_config {
  kst_u32 seed;
  kst_u32 flags;
  kst_u64 flow_timeout_ns;
  kst_u32 ifindex4, ifindex6; /* collect-md device per outer family (KST_CFG_REDIRECT) */
  kst_u32 ttl;
  kst_u32 pad;
  char id[KST_ID_LEN]; /* skeleton id: program hash, mode, nft skeleton id (NUL-terminated) */
  /* Header path (KST_CFG_HEADERS); appended after id so that an older build's id is read at
   * the same offset. */
  kst_u32 encap;            /* KST_ENCAP_* */
  kst_u16 udp_port;         /* vxlan-gpe destination port (host order) */
  kst_u16 port_min;         /* vxlan-gpe source ports: [port_min, port_max) as the kernel's */
  kst_u16 port_max;         /*   udp_flow_src_port (the local port range) */
  kst_u16 pad2;
  kst_u32 mtu4, mtu6;       /* inner packet limit per outer family: the tunnel device's MTU */
};

#endif
