// nftables text for the router's classifier, rendered from configuration (pure).
//
// Classification: chain classify looks the destination up in the VIP set once and jumps to
// the family chain classify4/classify6, which runs, per family (IPv4 shown):
//   0. source ranges          → a VIP in @ranged4 whose (VIP . saddr) is in no @src4 interval
//                               goes to refuse_source: counted, dropped (every protocol)
//   1. flow table hit and (daddr . mark) in the live-slot set @live4
//                             → mark = the slot the flow was pinned to (draining, failover)
//   2. otherwise              → mark = bcount[daddr] (0x80000000 | the VIP's bucket count B;
//      0x80000000 for a VIP without one), then the rule of that count class:
//                                 mark = 0x40000000 + jhash(saddr . daddr . sport . dport) mod B
//      (ICMP and other protocols without ports hash saddr . daddr only). One rule pair per
//      class minBuckets · 2^k (hashing/balance.h), all in the skeleton, so a VIP changing class
//      is an element change and the flow table (pinned flows) survives it; a new flow costs
//      one map lookup, a few mark compares and one hash.
//   3. mark ≥ 0x40000000      → mark = b2s[daddr . mark]   (bucket → slot mark)
//   4. still unresolved       → counted (refused_no_bucket, @refused4), dropped (a VIP with no
//                               endpoint must not leak to the main table)
//   5. pin the flow: flow[saddr . sport . daddr . dport] = mark (a new element only: a stale
//      pin, to a released slot, is left to time out; docs/load-balancing.md "Released slots")
// Counters (dataplane/counters.h): the VIP sets, the refused sets and the per-endpoint sets
// ep4/ep6 (VIP . slot mark, looked up in chain unmark on forward) carry a counter per element;
// refused packets per reason are named counters. docs/dataplane-notes.md "Counters".
// nft 1.0.6 (Debian 12) aborts on concatenations wider than 16 bytes in dynamic-set updates and
// on `ip6 daddr . jhash(...)`; hence the two-step bucket lookup and the IPv6 flow key made of
// two 32-bit jhashes with different seeds (collision odds ≈ entries / 2^64).
#pragma once

#include <map>
#include <string>

#include "dataplane/kernel.h"
#include "dataplane/types.h"
#include "desired/config.h"

namespace kst {

constexpr uint32_t kBucketMarkBase = 0x40000000;
/** Data of a bcount element: kCountMarkBase | the VIP's bucket count. Alone, it is the mark of a
 *  VIP without a count (dropped: ≥ kBucketMarkBase and no b2s element). */
constexpr uint32_t kCountMarkBase = 0x80000000;

/** Table, sets, maps and chain, without elements. */
std::string renderSkeleton(const DataplaneConfig& cfg);
/** Short stable hash of a skeleton text; kept as the table comment "kst:<id>". */
std::string skeletonId(const std::string& skeleton);

/** What happens to the table itself when `observed` becomes `desired`: kept (element changes
 *  only; also when neither has a table), created, rebuilt (the skeleton differs: deleted and
 *  created with all its elements, in one transaction) or deleted. */
using NftTableStep = dp::TableStep;
NftTableStep nftTableStep(const dp::NftState& desired, const dp::NftState& observed);

/** One nft script for a table step and the element changes that follow it (for Create and
 *  Rebuild: relative to an empty table; ignored for Delete). Empty when there is nothing to do. */
std::string renderNftStep(const DataplaneConfig& cfg, NftTableStep step,
                          const std::string& skeletonId, const std::string& skeleton,
                          const dp::NftElementChanges& elements);

/**
 * One nft script that turns `observed` into `desired` atomically: the whole table is
 * (re)created when the skeleton differs, otherwise only element additions and deletions.
 * Empty when nothing differs.
 */
std::string renderNftChanges(const DataplaneConfig& cfg, const dp::NftState& desired,
                             const dp::NftState& observed, size_t* elementChanges = nullptr);

/** Element additions and deletions that turn `base` into `desired` (skeletons ignored; a
 *  changed bucket is a deletion plus an addition of its key). Linear merge of sorted maps. */
dp::NftElementChanges nftElementChanges(const dp::NftState& desired, const dp::NftState& base);

/** Script that deletes the table (cleanup). */
std::string renderNftDelete(const DataplaneConfig& cfg);

}  // namespace kst
