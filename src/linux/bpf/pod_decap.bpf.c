// SPDX-License-Identifier: GPL-2.0
// The agent's pod-side decapsulation (--pod-decap bpf, linux/pod_decap.h): a tc ingress program
// on the pod interface that holds the pod's address. A tunnel packet of the active mode whose
// outer destination is one of the pod's addresses and whose inner destination is one of THIS
// pod's VIPs (both in pd_addrs, written by the agent together with the VIP on the pod's decap
// device) loses its outer headers here and continues as the plain inner IP packet: the pod's
// stack handles it once, instead of outer IP → UDP socket / tunnel handler → tunnel device →
// inner IP. Everything else (other modes, other addresses, GSO packets, IP options, fragments,
// GRE with options, a VNI other than 0, a VIP not in the map) is passed untouched, so the pod's
// decap device stays the fallback and the ground truth.
//
// Debian 12's 6.1 kernel is the oldest claimed: it has no BPF_F_ADJ_ROOM_DECAP_* flags (6.3),
// so bpf_skb_adjust_room keeps skb->protocol. When the inner family differs from the outer one
// bpf_skb_change_proto first switches the protocol (adding or removing 20 bytes after the MAC
// header), then the remaining bytes are removed; the Ethernet type is rewritten to match.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "pod_decap_maps.h"

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct kst_pd_config);
} pd_config SEC(".maps");

// A pod holds its addresses (one or two) and the VIPs of its Services.
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 4096);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, __u8[16]);
  __type(value, __u32);
} pd_addrs SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct kst_pd_stats);
} pd_stats SEC(".maps");

#define GPE_FLAGS 0x0c  // I (VNI present) + P (next protocol present), version 0, no OAM
#define GPE_NP_IPV4 1
#define GPE_NP_IPV6 2
#define IP_MF_OFFSET 0x3fff

struct gpehdr {
  __u8 flags;
  __u8 reserved[2];
  __u8 next_proto;
  __be32 vni;  // VNI << 8; the routers send VNI 0
};

static __always_inline void v4key(__u8 *key, __be32 a) {
  __builtin_memset(key, 0, 10);
  key[10] = key[11] = 0xff;
  __builtin_memcpy(key + 12, &a, 4);
}

static __always_inline int has(const __u8 *key, __u32 flag) {
  __u32 *v = bpf_map_lookup_elem(&pd_addrs, key);
  return v && (*v & flag);
}

SEC("tc")
int kst_pod_decap(struct __sk_buff *skb) {
  __u32 zero = 0;
  struct kst_pd_config *cfg = bpf_map_lookup_elem(&pd_config, &zero);
  if (!cfg || !cfg->mode) return TC_ACT_OK;
  // A GSO packet carries tunnel GSO state that a plain strip would leave wrong: the device.
  if (skb->gso_size || skb->gso_segs > 1 || skb->vlan_present) return TC_ACT_OK;
  void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
  struct ethhdr *eth = data;
  if ((void *)(eth + 1) > end) return TC_ACT_OK;
  __u8 key[16];
  __u8 l4proto;
  __u32 l3len;  // outer IP header
  void *l4;     // after it: set per family, never computed from l3len (below)
  int outer6;
  if (eth->h_proto == bpf_htons(ETH_P_IP)) {
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF_OFFSET)))
      return TC_ACT_OK;
    v4key(key, ip->daddr);
    l4proto = ip->protocol;
    l3len = sizeof(struct iphdr);
    l4 = (void *)(ip + 1);
    outer6 = 0;
  } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
    struct ipv6hdr *ip6 = (void *)(eth + 1);
    if ((void *)(ip6 + 1) > end) return TC_ACT_OK;
    __builtin_memcpy(key, &ip6->daddr, 16);
    l4proto = ip6->nexthdr;  // no extension headers: anything else goes to the device
    l3len = sizeof(struct ipv6hdr);
    l4 = (void *)(ip6 + 1);
    outer6 = 1;
  } else {
    return TC_ACT_OK;
  }
  if (!has(key, KST_PD_POD)) return TC_ACT_OK;
  __u32 tunlen;  // bytes after the outer IP header up to the inner one
  int inner6;
  switch (cfg->mode) {
    case KST_PD_VXLAN_GPE: {
      if (l4proto != IPPROTO_UDP) return TC_ACT_OK;
      struct udphdr *udp = l4;
      struct gpehdr *gpe = (void *)(udp + 1);
      if ((void *)(gpe + 1) > end) return TC_ACT_OK;
      if (udp->dest != bpf_htons(cfg->port) || gpe->flags != GPE_FLAGS || gpe->reserved[0] ||
          gpe->reserved[1] || gpe->vni != 0)
        return TC_ACT_OK;
      if (gpe->next_proto == GPE_NP_IPV4) inner6 = 0;
      else if (gpe->next_proto == GPE_NP_IPV6) inner6 = 1;
      else return TC_ACT_OK;
      tunlen = sizeof(struct udphdr) + sizeof(struct gpehdr);
      break;
    }
    case KST_PD_IPIP:
      if (l4proto == IPPROTO_IPIP) inner6 = 0;
      else if (l4proto == IPPROTO_IPV6 && outer6) inner6 = 1;  // ipip carries IPv4 only
      else return TC_ACT_OK;
      tunlen = 0;
      break;
    case KST_PD_GRE: {
      if (l4proto != IPPROTO_GRE) return TC_ACT_OK;
      __be16 *gre = l4;
      if ((void *)(gre + 2) > end || gre[0] != 0) return TC_ACT_OK;  // no C/K/S, version 0
      if (gre[1] == bpf_htons(ETH_P_IP)) inner6 = 0;
      else if (gre[1] == bpf_htons(ETH_P_IPV6)) inner6 = 1;
      else return TC_ACT_OK;
      tunlen = 4;
      break;
    }
    default:
      return TC_ACT_OK;
  }
  __u32 outer = l3len + tunlen;  // what is removed
  if (outer > 64) return TC_ACT_OK;  // bounds the offset for the verifier
  /* The inner header is copied out, not read through the packet pointer plus `outer`: a
   * packet pointer plus an offset that differs between paths is arithmetic the verifier
   * refuses to a loader without CAP_PERFMON (tests/privileged/bpf_unprivileged_load.sh). */
  if (inner6) {
    struct ipv6hdr ip6;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + outer, &ip6, sizeof(ip6)) || ip6.version != 6)
      return TC_ACT_OK;
    __builtin_memcpy(key, &ip6.daddr, 16);
  } else {
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + outer, &ip, sizeof(ip)) || ip.version != 4 ||
        ip.ihl < 5)
      return TC_ACT_OK;
    v4key(key, ip.daddr);
  }
  if (!has(key, KST_PD_VIP)) return TC_ACT_OK;

  __be16 proto = bpf_htons(inner6 ? ETH_P_IPV6 : ETH_P_IP);
  __s32 shrink = (__s32)outer;
  if (inner6 != outer6) {
    // 6.1: adjust_room cannot change skb->protocol. change_proto inserts (4 → 6) or removes
    // (6 → 4) 20 bytes right after the MAC header; the strip below accounts for them.
    if (bpf_skb_change_proto(skb, proto, 0)) return TC_ACT_OK;  // nothing was changed
    shrink += inner6 ? 20 : -20;
    if (bpf_skb_adjust_room(skb, -shrink, BPF_ADJ_ROOM_MAC, 0)) return TC_ACT_SHOT;
  } else {
    if (bpf_skb_adjust_room(skb, -shrink, BPF_ADJ_ROOM_MAC, 0)) return TC_ACT_OK;
  }
  // The MAC header now precedes the inner packet: its type follows it (packet sockets).
  if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto), 0))
    return TC_ACT_SHOT;
  struct kst_pd_stats *st = bpf_map_lookup_elem(&pd_stats, &zero);
  if (st) {
    st->packets++;
    st->bytes += skb->len - ETH_HLEN;
  }
  return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
