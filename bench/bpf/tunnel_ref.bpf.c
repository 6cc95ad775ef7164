// SPDX-License-Identifier: GPL-2.0
// The dataplane benchmark's hand-made tc-BPF references (bench/dataplane.sh, DATAPLANE_REF=1):
// the least a vxlan-gpe tunnel in BPF can cost, next to the hand-made lwtunnel tunnel. Not the
// product's classifier (no buckets, no flow table, one fixed endpoint per VIP): the script
// compiles this file with the topology's addresses and interface indexes as -D constants.
//
//   tc ingress on the router's underlay interface, for packets to
//     REF_VIP_MD   bpf_skb_set_tunnel_key(remote POD) + bpf_redirect(the collect-md vxlan-gpe
//                  device): the tunnel device builds the headers and routes the outer packet
//     REF_VIP_HDR, REF_VIP_HDR_DECAP
//                  the outer IPv4 + UDP + GPE headers written by the program
//                  (bpf_skb_adjust_room), then bpf_redirect_neigh(the underlay interface): one
//                  FIB lookup for the outer destination, no tunnel device, no second pass
//   tc ingress on the pod's interface (section "tc/decap"), for vxlan-gpe datagrams to port
//     4790 whose inner destination is REF_VIP_HDR_DECAP, REF_VIP_HAND_DECAP or
//     REF_VIP_BPF_DECAP (a VIP of the daemon's bpf router): the outer 36
//     bytes are removed and the packet continues as the plain inner IPv4 packet, so the pod's
//     stack handles it once (instead of outer IP → UDP socket → vxlan-gpe device → inner IP)
//
// Every address constant is the IPv4 address in host byte order.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef REF_POD
#error "compile with -DREF_POD=… -DREF_ROUTER=… -DREF_VIP_*=… -DREF_VXG_IFINDEX=… -DREF_UL_IFINDEX=…"
#endif

#define GPE_PORT 4790
#define OUTER_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + 8)  // 36

struct gpehdr {
  __u8 flags;  // 0x0c: I (VNI present) + P (next protocol present), version 0, no O
  __u8 reserved[2];
  __u8 next_proto;  // 1: IPv4
  __be32 vni;       // VNI << 8; the daemon's tunnels use VNI 0
};

struct outer {
  struct iphdr ip;
  struct udphdr udp;
  struct gpehdr gpe;
};
_Static_assert(sizeof(struct outer) == OUTER_LEN, "outer headers are 36 bytes, no padding");

static __always_inline __u16 ip_csum(const struct iphdr *ip) {
  const __u16 *w = (const __u16 *)ip;
  __u32 sum = 0;
#pragma unroll
  for (int i = 0; i < (int)(sizeof(*ip) / 2); i++) sum += w[i];
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return (__u16)~sum;
}

// Returns the inner IPv4 header of an Ethernet/IPv4 packet (no options), or 0.
static __always_inline struct iphdr *ipv4(struct __sk_buff *skb) {
  void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
  struct ethhdr *eth = data;
  if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP)) return 0;
  struct iphdr *ip = (void *)(eth + 1);
  if ((void *)(ip + 1) > end || ip->ihl != 5) return 0;
  return ip;
}

SEC("tc/encap")
int encap(struct __sk_buff *skb) {
  struct iphdr *ip = ipv4(skb);
  if (!ip) return TC_ACT_OK;
  __u32 dst = bpf_ntohl(ip->daddr);
  if (dst == REF_VIP_MD) {
    if (ip->ttl <= 1) return TC_ACT_OK;  // the stack answers "time exceeded"
    struct bpf_tunnel_key key = {.remote_ipv4 = REF_POD, .tunnel_ttl = 64};
    if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), 0)) return TC_ACT_SHOT;
    return bpf_redirect(REF_VXG_IFINDEX, 0);
  }
  if (dst != REF_VIP_HDR && dst != REF_VIP_HDR_DECAP) return TC_ACT_OK;
  if (ip->ttl <= 1) return TC_ACT_OK;
  // Forwarding: the inner TTL goes down by one, as the kernel's forwarding does before an
  // lwtunnel encap.
  __u16 old = *(__u16 *)&ip->ttl;
  ip->ttl--;
  bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, *(__u16 *)&ip->ttl, 2);
  __u32 inner_len = skb->len - ETH_HLEN;
  __u32 hash = bpf_get_hash_recalc(skb);
  if (bpf_skb_adjust_room(skb, OUTER_LEN, BPF_ADJ_ROOM_MAC,
                          BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
                              BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct gpehdr))))
    return TC_ACT_SHOT;
  struct outer o = {};
  o.ip.version = 4;
  o.ip.ihl = 5;
  o.ip.tot_len = bpf_htons(inner_len + OUTER_LEN);
  o.ip.frag_off = bpf_htons(0x4000);  // DF, as the daemon's tunnel devices send
  o.ip.ttl = 64;
  o.ip.protocol = IPPROTO_UDP;
  o.ip.saddr = bpf_htonl(REF_ROUTER);
  o.ip.daddr = bpf_htonl(REF_POD);
  o.ip.check = ip_csum(&o.ip);
  // Source port from the inner flow's hash (49152–65535), as the kernel's vxlan does for ECMP.
  o.udp.source = bpf_htons(49152 | (hash & 0x3fff));
  o.udp.dest = bpf_htons(GPE_PORT);
  o.udp.len = bpf_htons(inner_len + sizeof(struct udphdr) + sizeof(struct gpehdr));
  o.udp.check = 0;  // allowed for UDP over IPv4; the receiving vxlan device accepts it
  o.gpe.flags = 0x0c;
  o.gpe.next_proto = 1;
  if (bpf_skb_store_bytes(skb, ETH_HLEN, &o, sizeof(o), 0)) return TC_ACT_SHOT;
  return bpf_redirect_neigh(REF_UL_IFINDEX, 0, 0, 0);
}

SEC("tc/decap")
int decap(struct __sk_buff *skb) {
  void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
  struct iphdr *ip = ipv4(skb);
  if (!ip || ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff))) return TC_ACT_OK;
  struct outer *o = (void *)ip;
  if ((void *)(o + 1) > end || o->udp.dest != bpf_htons(GPE_PORT) || o->gpe.flags != 0x0c ||
      o->gpe.next_proto != 1 || o->gpe.vni != 0)
    return TC_ACT_OK;
  struct iphdr *in = (void *)(o + 1);
  if ((void *)(in + 1) > end) return TC_ACT_OK;
  __u32 dst = bpf_ntohl(in->daddr);
  if (dst != REF_VIP_HDR_DECAP && dst != REF_VIP_HAND_DECAP && dst != REF_VIP_BPF_DECAP)
    return TC_ACT_OK;
  (void)data;
  if (bpf_skb_adjust_room(skb, -(int)OUTER_LEN, BPF_ADJ_ROOM_MAC, 0)) return TC_ACT_SHOT;
  return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
