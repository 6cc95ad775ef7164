#include "hashing/maglev.h"

#include <algorithm>
#include <numeric>

namespace kst {

uint64_t stableHash(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ULL ^ seed;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

std::vector<uint32_t> maglevTable(const std::vector<std::string>& ids, uint32_t buckets) {
  std::vector<uint32_t> table;
  const size_t n = ids.size();
  if (n == 0 || buckets == 0) return table;
  // Claim order must not depend on the order of `ids`: iterate endpoints sorted by identity.
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return ids[a] < ids[b]; });

  std::vector<uint64_t> offset(n), skip(n), next(n, 0);
  for (size_t i = 0; i < n; ++i) {
    offset[i] = stableHash(ids[i], 0x6b7374) % buckets;
    uint64_t sk = buckets == 1 ? 1 : stableHash(ids[i], 0x736b6970) % (buckets - 1) + 1;
    while (std::gcd<uint64_t, uint64_t>(sk, buckets) != 1) sk = sk % buckets + 1;
    skip[i] = sk;
  }
  constexpr uint32_t kFree = UINT32_MAX;
  table.assign(buckets, kFree);
  uint32_t filled = 0;
  // With more endpoints than buckets the loop ends once every bucket is claimed.
  while (true) {
    for (uint32_t i : order) {
      uint64_t c = (offset[i] + next[i] * skip[i]) % buckets;
      while (table[c] != kFree) {
        ++next[i];
        c = (offset[i] + next[i] * skip[i]) % buckets;
      }
      table[c] = i;
      ++next[i];
      if (++filled == buckets) return table;
    }
  }
}

namespace {
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}
}  // namespace

uint64_t rendezvousKey(const std::string& id) { return stableHash(id, 0x72656e64); }

uint64_t rendezvousWeight(uint64_t key, uint32_t bucket) {
  return mix64(key ^ mix64(bucket + 0x9e3779b97f4a7c15ULL));
}

std::vector<uint32_t> rendezvousTable(const std::vector<std::string>& ids, uint32_t buckets) {
  std::vector<uint32_t> table;
  const size_t n = ids.size();
  if (n == 0 || buckets == 0) return table;
  std::vector<uint64_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = rendezvousKey(ids[i]);
  table.resize(buckets);
  for (uint32_t b = 0; b < buckets; ++b) {
    uint64_t best = 0;
    uint32_t who = 0;
    for (size_t i = 0; i < n; ++i) {
      uint64_t w = rendezvousWeight(h[i], b);
      // Ties (astronomically rare) go to the smaller identity: still order-independent.
      if (w > best || (w == best && ids[i] < ids[who])) {
        best = w;
        who = static_cast<uint32_t>(i);
      }
    }
    table[b] = who;
  }
  return table;
}

std::vector<uint32_t> moduloTable(size_t n, uint32_t buckets) {
  std::vector<uint32_t> t;
  if (n == 0) return t;
  t.resize(buckets);
  for (uint32_t b = 0; b < buckets; ++b) t[b] = b % n;
  return t;
}

}  // namespace kst
