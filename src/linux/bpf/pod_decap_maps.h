// Maps of the pod-side decapsulation program (pod_decap.bpf.c), shared with the agent
// (linux/pod_decap.h). One program instance (and so one set of maps) per pod namespace.
#pragma once

#include <linux/types.h>

/** The encapsulation the program strips (the agent's --mode; mpls has no program). */
enum kst_pd_mode {
  KST_PD_VXLAN_GPE = 1,  // outer IP + UDP to `port` + 8-byte GPE header (VNI 0)
  KST_PD_IPIP = 2,       // IPv4-in-IPv4, IPv4/IPv6-in-IPv6 (ip6tnl)
  KST_PD_GRE = 3,        // outer IP + 4-byte GRE header without options (gre-flow and gre)
};

/** pd_config[0]. `id` is the agent's program id (build hash, mode, port): a restarted agent
 *  adopts an attached program only when it matches its own. */
struct kst_pd_config {
  char id[64];
  __u32 mode;  // enum kst_pd_mode; 0: decapsulate nothing
  __u16 port;  // vxlan-gpe: UDP destination port (host order)
  __u16 pad;
};

/** pd_addrs: address (16 bytes, IPv4 mapped ::ffff:a.b.c.d) → flags. */
#define KST_PD_VIP 1u  // an inner destination: a VIP the agent has put in this pod
#define KST_PD_POD 2u  // an outer destination: one of the pod's own addresses

/** pd_stats[0] (per CPU): packets and bytes (the inner packet, IP header on) decapsulated. */
struct kst_pd_stats {
  __u64 packets;
  __u64 bytes;
};
