// SPDX-License-Identifier: GPL-2.0
/* The router's classifier as a tc (clsact ingress) program: the same decisions as the nft
 * classifier (desired/nft_render.h), from BPF maps the daemon keeps (linux/bpf_classifier.h).
 *
 * Per packet to a VIP (the VIP map's KST_VIP_SET):
 *   0. source ranges: a VIP with KST_VIP_RANGED accepts only sources in its LPM entries; any
 *      other packet is counted (per VIP, reason source_range) and dropped (every protocol);
 *   1. TCP/UDP/SCTP with ports: the flow map's pin is used while its (VIP, slot mark) is live
 *      and it is not older than the flow timeout (refreshed at most once a second);
 *   2. otherwise the bucket: jhash(saddr . daddr . sport . dport) (ICMP, other protocols and
 *      non-first fragments, which carry no ports: jhash(saddr . daddr)) scaled into the VIP's
 *      bucket count B, over the bytes nft's registers hold (every field in 32-bit words,
 *      ports zero-padded) with the same seed: the bucket nft's `jhash … mod B seed S` picks
 *      (the user-space copy is hashing/jhash.h, and a test compares both);
 *   3. bucket → slot mark; no bucket element (or no count): counted (no_bucket), dropped;
 *   4. a flow with ports is pinned to the slot mark (a stale pin is rewritten).
 * Then one of three ways out (kst_header_path below, the flow-based modes):
 *   headers (KST_CFG_HEADERS): the program forwards the packet itself — inner TTL / hop limit
 *     decremented, the outer headers the mode's collect-md device would write (kst_config.encap)
 *     pushed, the outer route looked up (bpf_fib_lookup) and the packet sent to its neighbour
 *     (bpf_redirect_neigh); every packet it cannot forward with the stack's semantics (TTL <= 1,
 *     over the MTU, non-TCP GSO, no route, no known source address) takes the mark path;
 *   device (KST_CFG_REDIRECT): the tunnel key is set to the slot's endpoint and the packet is
 *     redirected to the collect-md device of the endpoint's family;
 *   mark: the packet continues with the slot mark set and the stack routes it through the
 *     slot's policy rule and table, exactly as in nft mode (every mode). Non-IP packets, packets to other
 * destinations and IPv6 packets whose headers cannot be walked continue unchanged. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <stddef.h>

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "router_maps.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the bucket hash equals nft's only on little-endian CPUs (jhash reads CPU-order words)"
#endif

char LICENSE[] SEC("license") = "GPL";

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct kst_config);
} config SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct kst_vip_key);
  __type(value, struct kst_vip_val);
} vips SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, 65536);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct kst_vip_key);
  __type(value, struct kst_vip_counter);
} vipstats SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 4194304);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct kst_bucket_key);
  __type(value, __u32);
} buckets SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 1048576);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct kst_slot_key);
  __type(value, struct kst_slot_val);
} slots SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, 1048576);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct kst_slot_key);
  __type(value, struct kst_counter);
} epstats SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, 262144);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct kst_src_key);
  __type(value, struct kst_src_val);
} sources SEC(".maps");

/* max_entries set by the daemon before loading (--flow-table-size). */
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, 1048576);
  __type(key, struct kst_flow_key);
  __type(value, struct kst_flow_val);
} flows SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, KST_TOTALS);
  __type(key, __u32);
  __type(value, struct kst_counter);
} totals SEC(".maps");

/* The clsact qdiscs the daemon created for the program (ifindex → interface name): removed
 * with the program when no other filter hangs on them. The program does not read it; the
 * daemon keeps it pinned across rebuilds (linux/bpf_classifier.cpp). */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 4096);
  __type(key, __u32);
  __type(value, struct kst_clsact_val);
} clsact SEC(".maps");

/* ---- jhash (include/linux/jhash.h) over whole 32-bit words, as nft_jhash_eval runs it over
 * its registers: on a little-endian CPU jhash(bytes, 4n) equals this over the n words. */
static __always_inline __u32 rol32(__u32 w, unsigned s) { return (w << s) | (w >> (32 - s)); }

#define KST_MIX(a, b, c)                   \
  do {                                     \
    a -= c; a ^= rol32(c, 4);  c += b;     \
    b -= a; b ^= rol32(a, 6);  a += c;     \
    c -= b; c ^= rol32(b, 8);  b += a;     \
    a -= c; a ^= rol32(c, 16); c += b;     \
    b -= a; b ^= rol32(a, 19); a += c;     \
    c -= b; c ^= rol32(b, 4);  b += a;     \
  } while (0)

#define KST_FINAL(a, b, c)                 \
  do {                                     \
    c ^= b; c -= rol32(b, 14);             \
    a ^= c; a -= rol32(c, 11);             \
    b ^= a; b -= rol32(a, 25);             \
    c ^= b; c -= rol32(b, 16);             \
    a ^= c; a -= rol32(c, 4);              \
    b ^= a; b -= rol32(a, 14);             \
    c ^= b; c -= rol32(b, 24);             \
  } while (0)

/* n: a constant 2, 4, 8 or 10 at every call (the compiler unrolls it). */
static __always_inline __u32 kst_jhash(const __u32 *k, const __u32 n, __u32 seed) {
  __u32 a, b, c, i = 0, left = n;
  a = b = c = 0xdeadbeef + (n << 2) + seed;
#pragma unroll
  for (int blk = 0; blk < 3; blk++) {
    if (left <= 3) break;
    a += k[i];
    b += k[i + 1];
    c += k[i + 2];
    KST_MIX(a, b, c);
    left -= 3;
    i += 3;
  }
  if (left == 0) return c;
  if (left >= 3) c += k[i + 2];
  if (left >= 2) b += k[i + 1];
  a += k[i];
  KST_FINAL(a, b, c);
  return c;
}

/* reciprocal_scale(): val scaled into [0, ep_ro). */
static __always_inline __u32 kst_scale(__u32 val, __u32 ep_ro) {
  return (__u32)(((__u64)val * ep_ro) >> 32);
}

struct kst_pkt {
  struct kst_flow_key flow; /* saddr, daddr (mapped for IPv4), ports, family */
  __u32 words[10];          /* the hash's registers */
  __u32 nwords;             /* 2/4 (IPv4), 8/10 (IPv6) */
  __u8 l4proto;
  __u8 ports;               /* TCP/UDP/SCTP with both ports read */
  __u32 len;                /* bytes nft counts: the network header on */
};

static __always_inline void kst_map4(__u8 *dst, __be32 a) {
  __builtin_memset(dst, 0, 10);
  dst[10] = 0xff;
  dst[11] = 0xff;
  __builtin_memcpy(dst + 12, &a, 4);
}

static __always_inline int kst_is_ported(__u8 p) {
  return p == IPPROTO_TCP || p == IPPROTO_UDP || p == IPPROTO_SCTP;
}

/* The ports at off (both are the first 4 bytes of TCP, UDP and SCTP). */
static __always_inline void kst_read_ports(struct __sk_buff *skb, __u32 off, struct kst_pkt *p) {
  __u16 ports[2];
  if (!kst_is_ported(p->l4proto)) return;
  if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0) return;
  p->flow.sport = ports[0];
  p->flow.dport = ports[1];
  p->ports = 1;
}

/* 0: a packet to classify; < 0: leave it alone. */
static __always_inline int kst_parse4(struct __sk_buff *skb, struct kst_pkt *p) {
  void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
  struct iphdr *ip = data + ETH_HLEN;
  if ((void *)(ip + 1) > end) return -1;
  if (ip->ihl < 5 || ip->version != 4) return -1;
  kst_map4(p->flow.saddr, ip->saddr);
  kst_map4(p->flow.daddr, ip->daddr);
  p->flow.v4 = 1;
  p->l4proto = ip->protocol;
  p->len = bpf_ntohs(ip->tot_len);
  p->words[0] = ip->saddr;
  p->words[1] = ip->daddr;
  p->nwords = 2;
  /* A non-first fragment has no transport header: nft's `th` loads fail on it (pkt->fragoff),
   * so it is hashed by addresses only and never pinned. */
  if (ip->frag_off & bpf_htons(0x1fff)) return 0;
  kst_read_ports(skb, ETH_HLEN + ip->ihl * 4, p);
  return 0;
}

#define KST_NEXTHDR_HOP 0
#define KST_NEXTHDR_ROUTING 43
#define KST_NEXTHDR_FRAGMENT 44
#define KST_NEXTHDR_AUTH 51
#define KST_NEXTHDR_DEST 60

static __always_inline int kst_parse6(struct __sk_buff *skb, struct kst_pkt *p) {
  void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
  struct ipv6hdr *ip6 = data + ETH_HLEN;
  if ((void *)(ip6 + 1) > end) return -1;
  if (ip6->version != 6) return -1;
  __builtin_memcpy(p->flow.saddr, &ip6->saddr, 16);
  __builtin_memcpy(p->flow.daddr, &ip6->daddr, 16);
  __builtin_memcpy(&p->words[0], &ip6->saddr, 16);
  __builtin_memcpy(&p->words[4], &ip6->daddr, 16);
  p->nwords = 8;
  p->flow.v4 = 0;
  p->len = bpf_ntohs(ip6->payload_len) + sizeof(struct ipv6hdr);
  /* The transport header as ipv6_find_hdr() finds it for nft: past hop-by-hop, routing,
   * destination options, AH and a fragment header (a non-first fragment has no ports). */
  __u8 nh = ip6->nexthdr;
  __u32 off = ETH_HLEN + sizeof(struct ipv6hdr);
#pragma unroll
  for (int i = 0; i < 6; i++) {
    __u8 hdr[8];
    if (nh == KST_NEXTHDR_HOP || nh == KST_NEXTHDR_ROUTING || nh == KST_NEXTHDR_DEST) {
      if (bpf_skb_load_bytes(skb, off, hdr, 2) < 0) return -1;
      nh = hdr[0];
      off += ((__u32)hdr[1] + 1) * 8;
    } else if (nh == KST_NEXTHDR_AUTH) {
      if (bpf_skb_load_bytes(skb, off, hdr, 2) < 0) return -1;
      nh = hdr[0];
      off += ((__u32)hdr[1] + 2) * 4;
    } else if (nh == KST_NEXTHDR_FRAGMENT) {
      if (bpf_skb_load_bytes(skb, off, hdr, 8) < 0) return -1;
      nh = hdr[0];
      off += 8;
      __u16 fo = ((__u16)hdr[2] << 8 | hdr[3]) & 0xfff8;
      if (fo) {
        p->l4proto = nh;
        return 0;
      }
    } else {
      p->l4proto = nh;
      kst_read_ports(skb, off, p);
      return 0;
    }
  }
  return -1; /* more extension headers than walked: left to the stack */
}

static __always_inline void kst_count(struct kst_counter *c, __u32 len) {
  if (!c) return;
  c->packets++;
  c->bytes += len;
}

static __always_inline int kst_refuse(struct kst_vip_counter *vs, __u32 reason, __u32 len) {
  if (vs) {
    vs->refused_packets++;
    vs->refused_bytes += len;
  }
  kst_count(bpf_map_lookup_elem(&totals, &reason), len);
  return TC_ACT_SHOT;
}

/* ---- The header path: what the collect-md devices write (vxlan_xmit_one, gre_fb_xmit,
 * ipxip6_tnl_xmit with collect_md: no key, no encapsulation limit, the key's TTL, DF clear, the
 * inner ECN bits copied, vxlan-gpe's source port from the flow hash). */
#define KST_ETH_P_IP 0x0800
#define KST_ETH_P_IPV6 0x86DD
#define KST_IPPROTO_GRE 47
#define KST_IPPROTO_IPV6 41

struct kst_gpehdr {
  __u8 flags; /* 0x0c: I (VNI present) + P (next protocol present), version 0 */
  __u8 reserved[2];
  __u8 next_proto; /* 1: IPv4, 2: IPv6 */
  __be32 vni;      /* VNI << 8: 0 (the daemon's nexthops use id 0) */
};

struct kst_outer {
  union {
    struct iphdr ip;
    struct ipv6hdr ip6;
  };
  union {
    struct {
      struct udphdr udp;
      struct kst_gpehdr gpe;
    };
    struct {
      __be16 gre_flags;
      __be16 gre_proto;
    };
  };
};

static __always_inline __u16 kst_csum_fold(__u32 sum) {
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return (__u16)~sum;
}

static __always_inline __u16 kst_ip_csum(const struct iphdr *ip) {
  const __u16 *w = (const __u16 *)ip;
  __u32 sum = 0;
#pragma unroll
  for (int i = 0; i < (int)(sizeof(*ip) / 2); i++) sum += w[i];
  return kst_csum_fold(sum);
}

/* INET_ECN_encapsulate(0, inner): the inner ECN bits, CE sent as ECT(0). */
static __always_inline __u8 kst_ecn(__u8 inner_tos) {
  __u8 e = inner_tos & 3;
  return e == 3 ? 2 : e;
}

/* Per-CPU IPv4 identification counter for the outer header (DF is clear, as the kernel's
 * tunnel devices send it, so the id must vary). */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u32);
} ipids SEC(".maps");

/* Forwards the packet with headers the program writes. 1: sent (the verdict in *verdict);
 * 0: not possible for this packet, nothing changed (the caller takes the mark path); a
 * helper failing after the packet was changed drops it (*verdict = TC_ACT_SHOT). */
static __always_inline int kst_header_path(struct __sk_buff *skb, const struct kst_config *cfg,
                                           const struct kst_slot_val *sv, int inner_v4,
                                           int *verdict) {
  const int outer_v4 = sv->v4 != 0;
  /* Both loaded, then chosen: a field offset chosen by a branch is pointer arithmetic the
   * verifier refuses to a loader without CAP_PERFMON (a router pod has CAP_BPF only). */
  __u32 mtu4 = cfg->mtu4, mtu6 = cfg->mtu6;
  asm volatile("" : "+r"(mtu4), "+r"(mtu6));
  __u32 mtu = outer_v4 ? mtu4 : mtu6;
  if (!mtu) return 0;
  /* The source address the kernel would choose toward the pod (the daemon resolves it). */
  __u32 srcsum = 0;
#pragma unroll
  for (int i = 0; i < 16; i += 4) srcsum |= *(const __u32 *)(sv->src + i);
  if (!srcsum) return 0;
  const __u32 inner_len = skb->len - ETH_HLEN;
  /* The largest inner packet this skb becomes on the wire: itself, or for a GSO packet (a
   * local sender's TSO over veth, GRO on the ingress NIC) one segment — TCP only (its header
   * length read here), segmented after the outer headers are pushed, gso_size unchanged
   * (BPF_F_ADJ_ROOM_FIXED_GSO), as the stack segments the inner packet before the tunnel. */
  __u32 seglen = inner_len;
  if (skb->gso_size) {
    __u32 l3 = inner_v4 ? 0 : sizeof(struct ipv6hdr);
    __u8 b[2];
    if (inner_v4) {
      if (bpf_skb_load_bytes(skb, ETH_HLEN, b, 1) < 0) return 0;
      l3 = (b[0] & 0xf) * 4;
      if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, protocol), b, 1) < 0)
        return 0;
    } else if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, nexthdr), b, 1) < 0) {
      return 0;
    }
    if (b[0] != IPPROTO_TCP) return 0; /* UDP GSO and anything else: the stack's */
    if (l3 > 60 || bpf_skb_load_bytes(skb, ETH_HLEN + l3 + 12, b, 1) < 0) return 0;
    seglen = l3 + (b[0] >> 4) * 4 + skb->gso_size;
  }
  if (seglen > mtu) return 0; /* the stack answers frag-needed / packet-too-big, or fragments */
  __u32 l4len;
  __u64 aflags = BPF_F_ADJ_ROOM_FIXED_GSO;
  __u8 proto;
  if (cfg->encap == KST_ENCAP_VXLAN_GPE) {
    /* Over IPv6 the kernel's device sends a full UDP checksum, which the program does not
     * compute over the payload: the device path (or the mark) there. */
    if (!outer_v4) return 0;
    l4len = sizeof(struct udphdr) + sizeof(struct kst_gpehdr);
    aflags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct kst_gpehdr));
    proto = IPPROTO_UDP;
  } else if (cfg->encap == KST_ENCAP_GRE) {
    l4len = 4;
    aflags |= BPF_F_ADJ_ROOM_ENCAP_L4_GRE;
    proto = KST_IPPROTO_GRE;
  } else if (cfg->encap == KST_ENCAP_IPIP) {
    l4len = 0;
    proto = inner_v4 ? IPPROTO_IPIP : KST_IPPROTO_IPV6;
  } else {
    return 0;
  }
  const __u32 l3len = outer_v4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
  const __u32 olen = l3len + l4len;
  aflags |= outer_v4 ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 : BPF_F_ADJ_ROOM_ENCAP_L3_IPV6;

  /* The inner header: TTL / hop limit and the ECN bits. */
  void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
  __u8 tos;
  if (inner_v4) {
    struct iphdr *ip = data + ETH_HLEN;
    if ((void *)(ip + 1) > end) return 0;
    if (ip->ttl <= 1) return 0; /* the stack sends time exceeded */
    tos = ip->tos;
  } else {
    struct ipv6hdr *ip6 = data + ETH_HLEN;
    if ((void *)(ip6 + 1) > end) return 0;
    if (ip6->hop_limit <= 1) return 0;
    tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
  }

  /* The outer route: the pod from the source address the kernel chose, as the stack would
   * route the tunnel's packet (the main tables; an MTU check on the outer length). */
  struct bpf_fib_lookup fib = {};
  fib.ifindex = skb->ifindex; /* the ingress device: a forwarding lookup */
  fib.tot_len = seglen + olen;
  if (outer_v4) {
    fib.family = 2; /* AF_INET */
    __builtin_memcpy(&fib.ipv4_src, sv->src + 12, 4);
    __builtin_memcpy(&fib.ipv4_dst, sv->endpoint + 12, 4);
    fib.l4_protocol = proto;
  } else {
    fib.family = 10; /* AF_INET6 */
    __builtin_memcpy(fib.ipv6_src, sv->src, 16);
    __builtin_memcpy(fib.ipv6_dst, sv->endpoint, 16);
    fib.l4_protocol = proto;
  }
  long fr = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
  /* FRAG_NEEDED (the outer packet over the route's MTU), no route, not forwarded, …: the
   * stack's way. NO_NEIGH is fine: bpf_redirect_neigh resolves the neighbour. */
  if (fr != BPF_FIB_LKUP_RET_SUCCESS && fr != BPF_FIB_LKUP_RET_NO_NEIGH) return 0;

  /* Room for the outer headers first: a packet the helper refuses (a GSO type it cannot
   * extend) is unchanged and takes the stack's way. From here on the packet is changed. */
  const __u32 hash = bpf_get_hash_recalc(skb);
  if (bpf_skb_adjust_room(skb, olen, BPF_ADJ_ROOM_MAC, aflags) < 0) return 0;
  /* The inner TTL / hop limit, now behind the outer headers. */
  const __u32 in_off = ETH_HLEN + olen;
  if (inner_v4) {
    __u16 old = 0, new = 0;
    if (bpf_skb_load_bytes(skb, in_off + offsetof(struct iphdr, ttl), &old, 2) < 0) goto drop;
    new = old;
    ((__u8 *)&new)[0] -= 1;
    if (bpf_l3_csum_replace(skb, in_off + offsetof(struct iphdr, check), old, new, 2) < 0 ||
        bpf_skb_store_bytes(skb, in_off + offsetof(struct iphdr, ttl), &new, 2, 0) < 0)
      goto drop;
  } else {
    __u8 hl;
    if (bpf_skb_load_bytes(skb, in_off + offsetof(struct ipv6hdr, hop_limit), &hl, 1) < 0)
      goto drop;
    hl -= 1;
    if (bpf_skb_store_bytes(skb, in_off + offsetof(struct ipv6hdr, hop_limit), &hl, 1, 0) < 0)
      goto drop;
  }
  struct kst_outer o = {};
  const __u8 ecn = kst_ecn(tos);
  if (outer_v4) {
    __u32 zero = 0, id = 0;
    __u32 *ctr = bpf_map_lookup_elem(&ipids, &zero);
    if (ctr) id = ++*ctr;
    o.ip.version = 4;
    o.ip.ihl = 5;
    o.ip.tos = ecn;
    o.ip.tot_len = bpf_htons(inner_len + olen);
    o.ip.id = bpf_htons((__u16)(id ^ hash));
    o.ip.frag_off = 0;
    o.ip.ttl = cfg->ttl;
    o.ip.protocol = proto;
    __builtin_memcpy(&o.ip.saddr, sv->src + 12, 4);
    __builtin_memcpy(&o.ip.daddr, sv->endpoint + 12, 4);
    o.ip.check = kst_ip_csum(&o.ip);
  } else {
    /* The flow label ip6_make_flowlabel() derives from the flow hash (ip6tnl, ip6gre). */
    __u32 label = ((hash << 16) | (hash >> 16)) & 0xfffff;
    o.ip6.version = 6;
    o.ip6.priority = ecn >> 4;
    o.ip6.flow_lbl[0] = ((ecn & 0xf) << 4) | (label >> 16);
    o.ip6.flow_lbl[1] = label >> 8;
    o.ip6.flow_lbl[2] = label;
    o.ip6.payload_len = bpf_htons(inner_len + l4len);
    o.ip6.nexthdr = proto;
    o.ip6.hop_limit = cfg->ttl;
    __builtin_memcpy(&o.ip6.saddr, sv->src, 16);
    __builtin_memcpy(&o.ip6.daddr, sv->endpoint, 16);
  }
  __u32 l4off = ETH_HLEN + l3len;
  int r;
  if (outer_v4)
    r = bpf_skb_store_bytes(skb, ETH_HLEN, &o.ip, sizeof(o.ip), 0);
  else
    r = bpf_skb_store_bytes(skb, ETH_HLEN, &o.ip6, sizeof(o.ip6), 0);
  if (r == 0 && cfg->encap == KST_ENCAP_VXLAN_GPE) {
    /* udp_flow_src_port(): hash ^= hash << 16, scaled into [min, max). */
    __u32 h = hash ^ (hash << 16);
    __u32 span = cfg->port_max > cfg->port_min ? cfg->port_max - cfg->port_min : 1;
    o.udp.source = bpf_htons((__u16)((((__u64)h * span) >> 32) + cfg->port_min));
    o.udp.dest = bpf_htons(cfg->udp_port);
    o.udp.len = bpf_htons(inner_len + l4len);
    o.udp.check = 0; /* IPv4 only (above): the device leaves it out too */
    o.gpe.flags = 0x0c;
    o.gpe.next_proto = inner_v4 ? 1 : 2;
    r = bpf_skb_store_bytes(skb, l4off, &o.udp, sizeof(o.udp) + sizeof(o.gpe), 0);
  } else if (r == 0 && cfg->encap == KST_ENCAP_GRE) {
    o.gre_flags = 0;
    o.gre_proto = bpf_htons(inner_v4 ? KST_ETH_P_IP : KST_ETH_P_IPV6);
    r = bpf_skb_store_bytes(skb, l4off, &o.gre_flags, 4, 0);
  }
  /* The Ethernet type follows the outer family (the MAC header is stripped on the way out,
   * but a packet capture or a later program reads it). */
  __be16 et = bpf_htons(outer_v4 ? KST_ETH_P_IP : KST_ETH_P_IPV6);
  if (r == 0) r = bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &et, 2, 0);
  if (r < 0) goto drop;
  skb->mark = 0;
  /* The nexthop the lookup found (its gateway, or the pod itself on-link); NO_NEIGH has it
   * too, and bpf_redirect_neigh resolves the neighbour then. */
  struct bpf_redir_neigh nh = {};
  if (outer_v4) {
    nh.nh_family = 2;
    nh.ipv4_nh = fib.ipv4_dst;
  } else {
    nh.nh_family = 10;
    __builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
  }
  *verdict = bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
  return 1;
drop:
  *verdict = TC_ACT_SHOT;
  return 1;
}

SEC("tc")
int kst_router(struct __sk_buff *skb) {
  struct kst_pkt p = {};
  int r;
  if (skb->protocol == bpf_htons(ETH_P_IP))
    r = kst_parse4(skb, &p);
  else if (skb->protocol == bpf_htons(ETH_P_IPV6))
    r = kst_parse6(skb, &p);
  else
    return TC_ACT_OK;
  struct kst_vip_val *vip = bpf_map_lookup_elem(&vips, p.flow.daddr);
  if (!vip || !(vip->flags & KST_VIP_SET)) return TC_ACT_OK;
  /* An IPv6 packet to an IPv4-mapped address is no IPv4 VIP's. */
  if (!p.flow.v4 && p.flow.daddr[10] == 0xff && p.flow.daddr[11] == 0xff &&
      !(p.flow.daddr[0] | p.flow.daddr[1] | p.flow.daddr[2] | p.flow.daddr[3] |
        p.flow.daddr[4] | p.flow.daddr[5] | p.flow.daddr[6] | p.flow.daddr[7] |
        p.flow.daddr[8] | p.flow.daddr[9]))
    return TC_ACT_OK;
  if (r < 0) return TC_ACT_OK;
  __u32 zero = 0;
  struct kst_config *cfg = bpf_map_lookup_elem(&config, &zero);
  if (!cfg) return TC_ACT_OK;
  struct kst_vip_counter *vs = bpf_map_lookup_elem(&vipstats, p.flow.daddr);
  if (vs) {
    vs->packets++;
    vs->bytes += p.len;
  }
  if (vip->flags & KST_VIP_RANGED) {
    struct kst_src_key sk = {.prefixlen = 256};
    __builtin_memcpy(sk.vip, p.flow.daddr, 16);
    __builtin_memcpy(sk.src, p.flow.saddr, 16);
    if (!bpf_map_lookup_elem(&sources, &sk))
      return kst_refuse(vs, KST_REFUSED_SOURCE_RANGE, p.len);
  }
  struct kst_slot_key slot = {};
  __builtin_memcpy(slot.vip, p.flow.daddr, 16);
  struct kst_slot_val *sv = NULL;
  __u64 now = bpf_ktime_get_ns();
  struct kst_flow_val *fv = NULL;
  if (p.ports) {
    fv = bpf_map_lookup_elem(&flows, &p.flow);
    if (fv && now - fv->seen_ns <= cfg->flow_timeout_ns) {
      slot.mark = fv->mark;
      sv = bpf_map_lookup_elem(&slots, &slot);
      if (sv && (sv->flags & KST_SLOT_LIVE)) {
        if (now - fv->seen_ns > 1000000000ull) fv->seen_ns = now;
        goto decided;
      }
      sv = NULL;
    }
  }
  if (!(vip->flags & KST_VIP_COUNT) || vip->buckets < 2)
    return kst_refuse(vs, KST_REFUSED_NO_BUCKET, p.len);
  __u32 h;
  if (p.flow.v4) {
    if (p.ports) {
      p.words[2] = p.flow.sport;
      p.words[3] = p.flow.dport;
      h = kst_jhash(p.words, 4, cfg->seed);
    } else {
      h = kst_jhash(p.words, 2, cfg->seed);
    }
  } else {
    if (p.ports) {
      p.words[8] = p.flow.sport;
      p.words[9] = p.flow.dport;
      h = kst_jhash(p.words, 10, cfg->seed);
    } else {
      h = kst_jhash(p.words, 8, cfg->seed);
    }
  }
  struct kst_bucket_key bk = {};
  __builtin_memcpy(bk.vip, p.flow.daddr, 16);
  bk.bucket = kst_scale(h, vip->buckets);
  __u32 *mark = bpf_map_lookup_elem(&buckets, &bk);
  if (!mark) return kst_refuse(vs, KST_REFUSED_NO_BUCKET, p.len);
  slot.mark = *mark;
  sv = bpf_map_lookup_elem(&slots, &slot);
  if (p.ports) {
    if (fv) {
      /* An expired pin is a new flow (nft's element would have timed out and been added
       * again); a pin to a released slot is not (nft leaves it and does not count). */
      if (now - fv->seen_ns > cfg->flow_timeout_ns) {
        __u32 i = KST_TOTAL_NEW_FLOWS;
        kst_count(bpf_map_lookup_elem(&totals, &i), 0);
      }
      fv->mark = slot.mark;
      fv->seen_ns = now;
    } else {
      __u32 i = KST_TOTAL_NEW_FLOWS;
      kst_count(bpf_map_lookup_elem(&totals, &i), 0);
      struct kst_flow_val nv = {.mark = slot.mark, .seen_ns = now};
      bpf_map_update_elem(&flows, &p.flow, &nv, BPF_ANY);
    }
  }
decided:
  kst_count(bpf_map_lookup_elem(&epstats, &slot), p.len);
  if ((cfg->flags & KST_CFG_HEADERS) && sv && (sv->flags & KST_SLOT_ENDPOINT)) {
    int verdict = TC_ACT_OK;
    if (kst_header_path(skb, cfg, sv, p.flow.v4, &verdict)) return verdict;
    /* Everything the program does not forward itself goes the stack's way. */
    goto mark;
  }
  if ((cfg->flags & KST_CFG_REDIRECT) && sv && (sv->flags & KST_SLOT_ENDPOINT)) {
    /* Both loads, then a choice between scalars: as `cfg + (v4 ? off4 : off6)` (what the
     * compiler makes of a conditional field) the verifier wants CAP_PERFMON (pointer
     * arithmetic with an offset that differs between paths is refused to !perfmon loaders as
     * a Spectre v1 gadget), which a router pod does not get. */
    __u32 ifindex4 = cfg->ifindex4, ifindex6 = cfg->ifindex6;
    asm volatile("" : "+r"(ifindex4), "+r"(ifindex6));
    __u32 ifindex = sv->v4 ? ifindex4 : ifindex6;
    if (ifindex) {
      struct bpf_tunnel_key key = {};
      __u64 flags = 0;
      if (sv->v4) {
        __be32 a;
        __builtin_memcpy(&a, sv->endpoint + 12, 4);
        key.remote_ipv4 = bpf_ntohl(a);
        if (cfg->flags & KST_CFG_ZERO_CSUM4) flags |= BPF_F_ZERO_CSUM_TX;
      } else {
        __builtin_memcpy(key.remote_ipv6, sv->endpoint, 16);
        flags |= BPF_F_TUNINFO_IPV6;
      }
      key.tunnel_ttl = cfg->ttl;
      if (bpf_skb_set_tunnel_key(skb, &key, offsetof(struct bpf_tunnel_key, tunnel_label),
                                 flags) == 0) {
        skb->mark = 0;
        return bpf_redirect(ifindex, 0);
      }
    }
  }
mark:
  skb->mark = slot.mark;
  return TC_ACT_OK;
}
