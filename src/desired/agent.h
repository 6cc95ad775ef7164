// Agent role, pure: the endpoints on this node → what each pod's namespace must hold.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "dataplane/pod_namespaces.h"
#include "dataplane/types.h"
#include "desired/config.h"
#include "model/model.h"

namespace kst {

struct PodPlan {
  IpAddress podIp;
  std::vector<ObjectKey> services;
  dp::PodState state;
  /** The pod the EndpointSlices name for this address ("ns/name", its uid), when they name
   *  one: the pod whose VIP readiness gate the agent reports (docs/readiness-gate.md). */
  std::string pod;
  std::string podUid;
};

/** One plan per local endpoint address (draining endpoints keep their VIPs; starting ones,
 *  TunnelService::starting, get them already: never routed to, their readiness gate waits for
 *  the VIP). */
std::vector<PodPlan> planAgent(const Model& model, const DataplaneConfig& cfg,
                               const std::string& nodeName);

/**
 * Whether a link in a pod's namespace is one the agent made: its name starts with the link
 * prefix AND it is of a kind the agent creates (a tunnel device: vxlan-gpe, ipip, ip6tnl, gre,
 * ip6gre). A pod can rename any of its links but cannot change a link's kind: its eth0 (a veth)
 * renamed to `kst-eth0` is never the agent's. A pod that creates a tunnel device under the
 * agent's name gets it removed or replaced, in its own namespace only.
 */
bool ownedPodLink(const dp::Link& link, const std::string& prefix);

/** The decapsulation link the agent puts into a pod with address podIp. */
dp::Link podLink(const DataplaneConfig& cfg, const IpAddress& podIp);

/**
 * Bytes the router's encapsulation puts in front of the inner IP packet in mode `mode` when
 * the outer header (the pod's address) is of family `outer` (derivation in agent.cpp).
 */
uint32_t encapOverhead(Mode mode, Family outer);

/**
 * MTU the router sets on its tunnel device toward pods of family `outer` (the router checks the
 * inner packet against it before encapsulating): cfg.underlayMtu − encapOverhead, so that an
 * inner packet the device accepts also fits the underlay (vxlan-gpe: one device for both
 * families, sized for IPv4; see agent.cpp). With underlayMtu 0, the kernel's default for the
 * flow devices, and 0 (not set: the kernel derives it from the route to the pod) for the
 * per-endpoint gre links. 0 for mpls (no device).
 */
uint32_t routerLinkMtu(const DataplaneConfig& cfg, Family outer);

/**
 * The MSS a pod may announce from a VIP of family `inner` so that the client's full-size
 * segments, encapsulated toward a pod address of family `outer`, fit cfg.underlayMtu and the
 * router's device: min(underlayMtu − encapOverhead, routerLinkMtu) − 40 (IPv4 + TCP headers)
 * or − 60 (IPv6 + TCP). 0 = no clamping (underlayMtu 0, or too small to leave a usable MSS).
 * Agents and routers must run with the same --underlay-mtu.
 */
uint16_t clampedMss(const DataplaneConfig& cfg, Family outer, Family inner);

/** The pod's nft table (declared with the agent's kernel interface). */
using PodTable = dp::PodTable;

/**
 * The table for one pod namespace from the plans of the endpoint addresses it owns (one, or
 * two for a dual-stack pod). The outer family of the encapsulation is the endpoint address's
 * family; a namespace with endpoint addresses of both families gets the smaller MSS of the two
 * for each VIP family (a VIP cannot tell which of the pod's addresses the router used).
 */
PodTable podTable(const DataplaneConfig& cfg, const std::vector<const PodPlan*>& plans);

/** The table as read back from the pod (comment from the listing, elements of vips4/vips6). */
struct ObservedPodTable {
  bool present = false;
  std::string comment;
  std::set<IpAddress> vips;
};

/** nft table name and the comment that identifies its skeleton (link and MSS values). */
inline constexpr const char* kPodTableName = "kube_service_tunnel_pod";
std::string podTableComment(const PodTable& t);

/** The whole table (one `table inet ... { ... }` statement, elements included). */
std::string renderPodTable(const PodTable& t);

/**
 * The nft script that turns `have` into `want` (want == nullptr: no table): "" when nothing
 * is to be done. A different skeleton (comment) recreates the table atomically (learned UDP
 * peers are lost then); otherwise only the VIP set elements that differ are added/deleted, so
 * the learned peers survive a VIP change.
 */
std::string podTableScript(const PodTable* want, const ObservedPodTable& have);

/**
 * The decapsulation program one pod namespace needs (--pod-decap bpf), from the plans of the
 * endpoint addresses it owns: their addresses as outer destinations, their VIPs as inner ones.
 * nullopt: no program (--pod-decap device, mpls mode, or no VIP).
 */
std::optional<dp::PodDecap> podDecap(const DataplaneConfig& cfg,
                                     const std::vector<const PodPlan*>& plans);

/** The program's address map for `want` (PodDecap::podIps → kPodDecapPod, vips → kPodDecapVip). */
std::map<IpAddress, uint32_t> podDecapAddrs(const dp::PodDecap& want);

/**
 * What turns `have` into `want` (nullptr: none of ours) in a namespace whose interfaces
 * holding want's pod addresses are `targets`; `program` is the id this agent's program would
 * carry (build, mode, port). Another program id, or an inconsistent attachment, is a fresh load
 * (replacing ours in place on every target); otherwise only interfaces to attach or detach and
 * the map entries that differ. Empty when `have` already matches (a restarted agent).
 */
dp::PodDecapChanges podDecapDiff(const dp::PodDecap* want, const std::string& program,
                                 const dp::ObservedPodDecap& have,
                                 const std::set<std::string>& targets);

}  // namespace kst
