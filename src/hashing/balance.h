// Per-VIP bucket counts and the balanced bucket → endpoint assignment (the default,
// `--bucket-algorithm rendezvous`). docs/load-balancing.md "Bucket counts and balance" has the
// reasoning; the figures are bench/spread.cpp's.
//
// Bucket count. A VIP with n endpoints taking new flows gets B_v = minBuckets · 2^k, the
// smallest such count ≥ 2·n (at most vipBucketCap(minBuckets)). A count that is a multiple of
// the previous one keeps every hash in the same place: jhash mod B = (jhash mod 2B) mod B, so a
// grown table is the old one repeated before it is rebalanced. The count shrinks only when the
// endpoints fall to an eighth of it (hysteresis), never on the removal of one endpoint from a
// table planned for its count.
//
// Assignment. With B_v ≥ 2·n and every endpoint holding ⌊B_v/n⌋ or ⌈B_v/n⌉ buckets, max/min ≤ 1.5.
// The assignment starts from a base table (the previous published table of the VIP, or, without
// one, rendezvous hashing over the endpoint set), keeps each bucket's endpoint when it is still
// there, takes the excess of endpoints above their quota (their lowest-weight buckets) and
// gives the free buckets to the endpoints below their quota (highest rendezvous weight first).
// From a balanced base, a leaving endpoint's buckets are the only ones that move and a new
// endpoint takes exactly its quota. The result is a pure function of (base, endpoint set,
// count), so routers that read the same published table compute the same table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kst {

/** Absolute cap of a VIP's bucket count (unless --buckets itself is larger). */
inline constexpr uint32_t kVipBucketCap = 4096;

/** The largest count minBuckets · 2^k ≤ max(minBuckets, kVipBucketCap). */
uint32_t vipBucketCap(uint32_t minBuckets);

/**
 * Bucket count of a VIP with `endpoints` endpoints taking new flows.
 * @param previous the count of the VIP's previous (published) table, 0 when there is none: it
 *   is kept unless too small (grown) or at least 8 times the endpoints (shrunk), when it is one
 *   of the counts minBuckets · 2^k; otherwise ignored.
 */
uint32_t vipBucketCount(uint32_t minBuckets, size_t endpoints, uint32_t previous = 0);

/** Whether `count` is one of the counts minBuckets · 2^k ≤ vipBucketCap(minBuckets). */
bool isVipBucketCount(uint32_t minBuckets, uint32_t count);

/**
 * Balanced assignment of `buckets` buckets to the endpoints `ids` (unique identities, any
 * order). @param base the previous table as identities (bucket → identity, "" = none), of any
 *   size; empty: rendezvousTable(ids, buckets) is the base. A base of another size is mapped
 *   by bucket mod its size (growing), or each bucket takes the first of its folded buckets
 *   whose endpoint is still there (shrinking).
 * @return bucket → index into ids; empty when ids is empty. Every bucket is assigned; each
 *   endpoint holds ⌊buckets/n⌋ or ⌈buckets/n⌉ (n ≤ buckets; with more endpoints than buckets,
 *   some hold none).
 */
std::vector<uint32_t> balancedTable(const std::vector<std::string>& ids, uint32_t buckets,
                                    const std::vector<std::string>& base = {});

/** Share of the hash space whose endpoint differs between two tables given as identities
 *  (bucket → identity), possibly of different sizes: hash h is in bucket h mod B of each, so
 *  for sizes that divide each other it is the share of buckets of the larger table whose
 *  identity differs from its image in the smaller one. (Tests and bench/spread.cpp.) */
double movedShare(const std::vector<std::string>& before, const std::vector<std::string>& after);

/** A table of indexes into ids as identities (bucket → ids[table[b]]). */
std::vector<std::string> tableIdentities(const std::vector<std::string>& ids,
                                         const std::vector<uint32_t>& table);

}  // namespace kst
