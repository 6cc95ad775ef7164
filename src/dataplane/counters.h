// Traffic counters the router's nft dataplane keeps, as one snapshot (read by the metrics
// exposition and by `status`). Exact: read from nft named counters / counter maps, never
// sampled. Keys vanish with the VIP or endpoint they count.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "common/ip.h"

namespace kst::dp {

struct CounterValue {
  uint64_t packets = 0;
  uint64_t bytes = 0;
  bool operator==(const CounterValue&) const = default;
};

struct NftCounterSnapshot {
  /** Packets and bytes that entered the tunnel path per VIP. */
  std::map<IpAddress, CounterValue> vip;
  /** Per (VIP, endpoint address): what was encapsulated toward that endpoint. */
  std::map<std::pair<IpAddress, IpAddress>, CounterValue> endpoint;
  /** Refused packets by reason ("no_bucket", "source_range", …). */
  std::map<std::string, CounterValue> refused;
  /** Refused packets per VIP (all reasons). */
  std::map<IpAddress, CounterValue> refusedByVip;
  /** Flow table occupancy (elements of the flow maps) and its configured limit. */
  uint64_t flows4 = 0, flows6 = 0, flowLimit = 0;
  /** Flows added to the flow tables since the table was created (both families): one per new
   *  pinned flow, whatever number of packets it carries; a flow already pinned (also to a
   *  released slot) is not counted again until its element expires. The nft dataplane reads
   *  it from the named counter new_flows; another implementation fills it with the same
   *  meaning (0 if it cannot tell). */
  uint64_t newFlows = 0;
  bool operator==(const NftCounterSnapshot&) const = default;
};

}  // namespace kst::dp
