// Router role, pure: model → bucket tables → kernel objects.
//
//   packet to VIP ─ nft: flow table hit? ─ yes → mark = slot of that flow's endpoint
//                        │ no
//                        └ mark = b2s[VIP . jhash(5-tuple, seed) mod B_VIP]   (bucket → slot)
//   ip rule fwmark (tableOffset + s) → table (tableOffset + s): VIP → nexthop(endpoint) → encap
//
// A *slot* is a per-VIP position of an endpoint: table tableOffset+s holds the route to each
// VIP's endpoint in slot s (an unreachable guard where that VIP has none, see VipPlan::tables). Buckets (B, the hash space) and slots (≥ endpoints
// per VIP) are independent, so more endpoints than buckets never needs more tables and a
// draining endpoint keeps its slot (its established flows stay routable) while losing all
// its buckets. Slots are sticky: an endpoint keeps the slot the kernel already has for it;
// new endpoints take the lowest free slot in address order. Each VIP has its own bucket count
// B_VIP, growing with its endpoints (--buckets the minimum), and bucket → endpoint is the
// balanced assignment derived from the VIP's published table (or Maglev, --bucket-algorithm),
// hashing/balance.h; identical on every router that reads the same published table.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include "dataplane/types.h"
#include "desired/config.h"
#include "model/model.h"

namespace kst {

struct VipPlan {
  ObjectKey service;
  IpAddress vip;
  std::vector<Endpoint> endpoints;  // sorted by IP
  std::vector<uint32_t> slots;      // slot of endpoints[i]
  std::vector<int32_t> buckets;     // bucket → index into endpoints, -1 when none
  std::string publishedSeen;        // the table published in the Service when planned
  bool fromPublished = false;       // buckets (and, on a fresh router, slots) came from it
  /** The Service's loadBalancerSourceRanges (both families; empty: unfiltered). */
  std::vector<IpPrefix> sourceRanges = {};
  /** Slot tables [0, tables) hold a route of this VIP: its endpoints' slots, and an unreachable
   *  guard in every other one. At least 1 + its highest slot, and sticky (Allocations::tables):
   *  once a slot of the VIP was live, a packet classified just before its release may still
   *  carry that mark, so the guard stays while the VIP exists. No packet carries a mark of a
   *  slot the VIP never had (marks come from its buckets and live slots), so other VIPs need no
   *  route in a table that only this VIP reached. */
  uint32_t tables = 0;
};

struct RouterPlan {
  std::vector<VipPlan> vips;  // sorted by VIP
  uint32_t slotCount = 0;     // the largest VipPlan::tables: one fwmark rule per slot and family
  std::vector<Problem> problems;
};

/** dp::Nexthop::key() as a value. */
using NexthopKey = std::tuple<Family, dp::Nexthop::Encap, std::optional<IpAddress>, uint8_t,
                              uint32_t, std::optional<IpAddress>, std::string>;
struct NexthopKeyHash {
  size_t operator()(const NexthopKey& k) const noexcept;
};

/** Allocations the kernel already holds, recovered from observed state (sticky ids). */
struct Allocations {
  std::map<IpAddress, std::map<IpAddress, uint32_t>> slots;  // vip → endpoint → slot
  std::map<NexthopKey, uint32_t> nexthopIds;                 // Nexthop::key() → id
  /** vip → 1 + the highest slot table holding any route of it, guards included (VipPlan::tables). */
  std::map<IpAddress, uint32_t> tables;
  /** Slots released less than --flow-timeout ago, per VIP, and (after a restart, whose
   *  releases before it are unknown) every slot below heldBelow that no endpoint holds: not
   *  given to a new endpoint of that VIP (the flow table may still pin flows to them). */
  std::map<IpAddress, std::set<uint32_t>> held;
  uint32_t heldBelow = 0;
  /** MPLS mode: the device through which each endpoint is directly reachable. */
  std::map<IpAddress, std::string> mplsDevice;
};

Allocations allocationsFrom(const dp::RouterState& observed, const DataplaneConfig& cfg);

/** The endpoint a slot-table route leads to: the encapsulation destination (flow devices), the
 *  gateway (MPLS) or the remote of its per-endpoint GRE link; nullopt for a route of none. */
std::optional<IpAddress> routeEndpoint(const dp::Route& r,
                                       const std::map<uint32_t, const dp::Nexthop*>& nexthops,
                                       const std::vector<dp::Link>& links);

RouterPlan planRouter(const Model& model, const DataplaneConfig& cfg, const Allocations& prior);

/** Gives a new nexthop of a plan its id: the sticky one of its key, else an unused one of the
 *  owned range; nullopt when that range is full (router_db.h, NexthopIdPool). */
using NexthopIdDraw = std::function<std::optional<uint32_t>(const dp::Nexthop&)>;

/** The kernel objects for a plan. Problems (e.g. unreachable MPLS endpoint) are appended.
 *  Nexthop ids: `ids`; without, a NexthopIdPool holding prior.nexthopIds. */
dp::RouterState routerState(RouterPlan& plan, const DataplaneConfig& cfg, const Allocations& prior,
                            const NexthopIdDraw& ids);
dp::RouterState routerState(RouterPlan& plan, const DataplaneConfig& cfg, const Allocations& prior);

/** The fwmark rules of `slotCount` slot tables for the families in use, sorted. */
std::vector<dp::Rule> slotRules(const DataplaneConfig& cfg, uint32_t slotCount, bool v4, bool v6);

/** The allowed source intervals of a VIP with source ranges: the ranges of the VIP's family as
 *  [first, last] intervals, sorted, overlapping ones merged (the kernel refuses overlapping
 *  elements of an interval set). */
std::vector<dp::SourceInterval> sourceIntervals(const IpAddress& vip,
                                                const std::vector<IpPrefix>& ranges);

/** Name of the per-endpoint GRE link on the router (the original's "ts" + hex IP idea). */
std::string greLinkName(const DataplaneConfig& cfg, const IpAddress& endpoint);

}  // namespace kst
