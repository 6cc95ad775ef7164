// Consistent assignment of B buckets to n endpoints, Maglev-style (Eisenbud et al., NSDI'16,
// §3.4): every endpoint walks its own permutation of the buckets, derived only from its
// identity, and endpoints take turns claiming their next free bucket. The result depends only
// on the *set* of endpoint identities and B — not on event order, restarts or history — so
// every router computes the same table, spread is even (shares differ by at most one bucket),
// and when one of n endpoints leaves, only its own buckets (≈ B/n) plus a small Maglev
// disruption move.
//
// The permutation needs an offset and a skip coprime to B. The paper picks B prime so any skip
// works; we accept any B ≥ 1 and bump the skip to the next value coprime with B.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kst {

/**
 * @param ids endpoint identities (e.g. IP strings); need not be sorted, must be unique.
 * @param buckets table size B ≥ 1.
 * @return table of size B: entry b is an index into ids; empty when ids is empty.
 *   When ids.size() > B, only B endpoints receive a bucket (caller reports it).
 */
std::vector<uint32_t> maglevTable(const std::vector<std::string>& ids, uint32_t buckets);

/**
 * Rendezvous (highest-random-weight) assignment: bucket b goes to the endpoint with the highest
 * hash(endpoint, b). A pure function of the identity set with *strictly* minimal disruption:
 * when an endpoint leaves, exactly its buckets move (spread over the others); when one joins,
 * only the buckets it wins move to it. Spread is statistical (binomial): with B buckets and n
 * endpoints the share deviates by about sqrt(n/B), so use B ≥ 16·n for ±25% or better.
 * This is the default (--bucket-algorithm); Maglev trades a few extra moved buckets for an
 * exactly even spread.
 */
std::vector<uint32_t> rendezvousTable(const std::vector<std::string>& ids, uint32_t buckets);

/** Rendezvous weight of bucket `bucket` for an endpoint whose key is rendezvousKey(id): the
 *  endpoint with the highest weight wins the bucket (rendezvousTable, balancedTable). */
uint64_t rendezvousKey(const std::string& id);
uint64_t rendezvousWeight(uint64_t key, uint32_t bucket);

/** The original prototype's assignment, for comparison in benchmarks: bucket b → b mod n. */
std::vector<uint32_t> moduloTable(size_t n, uint32_t buckets);

/** 64-bit FNV-1a then a murmur finaliser; stable across platforms and releases. */
uint64_t stableHash(const std::string& s, uint64_t seed);

}  // namespace kst
