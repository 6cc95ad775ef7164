// Dataplane configuration shared by the desired-state computation and the reconcilers.
#pragma once

#include <cstdint>
#include <string>

#include "dataplane/modes.h"

namespace kst {

enum class BucketAlgorithm : uint8_t { Rendezvous, Maglev };

struct DataplaneConfig {
  Mode mode = Mode::VxlanGpe;
  BucketAlgorithm algorithm = BucketAlgorithm::Rendezvous;
  /** --buckets: the minimum bucket count of a VIP (hashing/balance.h vipBucketCount). */
  uint32_t buckets = 64;
  uint32_t hashSeed = 0x2a;
  /** First routing table and fwmark; slot s uses table/mark tableOffset + s. */
  uint32_t tableOffset = 1000;
  /** Highest number of slots (tables, rules) the daemon may use: the table range it owns. */
  uint32_t maxSlots = 256;
  /** Priority of the rule of slot 0; slot s uses rulePriority + s. */
  uint32_t rulePriority = 1000;
  uint8_t routeProtocol = 211;
  /** Owned nexthop ids: [nexthopIdBase, nexthopIdEnd()), 2^20 ids (0x4b530000 … 0x4b62ffff by
   *  default: one per route family and endpoint, so a million endpoints). Observation adopts
   *  only nexthops of routeProtocol inside this range (NetlinkClientImpl::nexthops); the
   *  planner never hands out an id outside it (NexthopIdPool, desired/router_db.h). */
  uint32_t nexthopIdBase = 0x4b530000;
  static constexpr uint32_t kNexthopIds = 1u << 20;
  std::string linkPrefix = "kst";
  std::string nftTable = "kube_service_tunnel";
  uint16_t vxlanPort = 4790;
  uint8_t ttl = 64;
  uint32_t mplsLabel = 100;
  uint32_t flowTimeoutSeconds = 120;
  /** Size of each flow map (flow4, flow6): the most flows pinned at once per family. A full
   *  map pins no new flow (those are hashed per packet). */
  uint32_t flowTableSize = 1u << 20;
  /** The kernel accepts a lookup in a map without a data register (`key != @map`; refused by
   *  older kernels, e.g. Debian 12's 6.1). With it the new-flow counter counts a flow only
   *  when its key enters the flow table; without it (probed at start, nftMapLookupWorks() in
   *  linux/nft_client.h) also each packet of a flow whose pin went stale, until the pin
   *  expires (desired/nft_render.cpp). */
  bool nftMapLookup = true;
  /** MTU of the network between routers and pods (--underlay-mtu). The router sets its tunnel
   *  devices' MTU to it minus the encapsulation (routerLinkMtu in desired/agent.h), and the
   *  agent clamps the MSS of TCP SYNs sent from a pod's VIPs so that the encapsulated segments
   *  fit it (clampedMss); 0: kernel default device MTUs, no clamping. */
  uint32_t underlayMtu = 1500;
  /** Agent, --pod-decap bpf: a tc program on each endpoint pod's interface strips the outer
   *  headers of tunnel packets to the pod's VIPs (desired/agent.h podDecap); false (device):
   *  only the pod's decap device does. No effect in mpls mode. */
  bool podDecapBpf = false;

  /** The mode's device (pod side; the router's flow device for IPv4 endpoints); "lo" in a
   *  mode without one (mpls: the pod's VIPs live on lo). */
  std::string tunnelLinkName() const;
  uint32_t nexthopIdEnd() const { return nexthopIdBase + kNexthopIds; }
};

}  // namespace kst
