#include "hashing/balance.h"

#include <algorithm>
#include <numeric>
#include <string_view>
#include <unordered_map>

#include "hashing/maglev.h"

namespace kst {

uint32_t vipBucketCap(uint32_t minBuckets) {
  if (minBuckets == 0) return 0;
  uint32_t b = minBuckets;
  while (uint64_t(b) * 2 <= kVipBucketCap) b *= 2;
  return b;
}

bool isVipBucketCount(uint32_t minBuckets, uint32_t count) {
  const uint32_t cap = vipBucketCap(minBuckets);
  for (uint32_t b = minBuckets; b != 0 && b <= cap; b *= 2) {
    if (b == count) return true;
    if (b == cap) break;
  }
  return false;
}

namespace {
/** The count planned for n endpoints without a previous table: the smallest minBuckets · 2^k
 *  ≥ 2n, at most the cap. */
uint32_t freshCount(uint32_t minBuckets, size_t n) {
  const uint32_t cap = vipBucketCap(minBuckets);
  uint32_t b = minBuckets;
  while (b < 2 * uint64_t(n) && b < cap) b *= 2;
  return b;
}
}  // namespace

uint32_t vipBucketCount(uint32_t minBuckets, size_t endpoints, uint32_t previous) {
  if (minBuckets == 0) return 0;
  const uint32_t want = freshCount(minBuckets, endpoints);
  if (previous == 0 || !isVipBucketCount(minBuckets, previous)) return want;
  if (want > previous) return want;                                           // grow
  if (want < previous && 8 * uint64_t(endpoints) <= previous) return want;    // shrink
  return previous;
}

std::vector<uint32_t> balancedTable(const std::vector<std::string>& ids, uint32_t buckets,
                                    const std::vector<std::string>& base) {
  const size_t n = ids.size();
  if (n == 0 || buckets == 0) return {};
  constexpr uint32_t kFree = UINT32_MAX;
  std::unordered_map<std::string_view, uint32_t> indexOf;
  indexOf.reserve(n);
  std::vector<uint64_t> key(n);
  for (size_t i = 0; i < n; ++i) {
    indexOf.emplace(ids[i], static_cast<uint32_t>(i));
    key[i] = rendezvousKey(ids[i]);
  }
  auto index = [&](const std::string& id) {
    auto it = indexOf.find(id);
    return it == indexOf.end() ? kFree : it->second;
  };

  // 1. The base: every bucket keeps its endpoint when that endpoint is still there.
  std::vector<uint32_t> table;
  if (base.empty()) {
    table = rendezvousTable(ids, buckets);
  } else {
    table.assign(buckets, kFree);
    const size_t bp = base.size();
    for (uint32_t b = 0; b < buckets; ++b) {
      if (buckets >= bp) {
        table[b] = index(base[b % bp]);
      } else {
        for (size_t k = b; k < bp && table[b] == kFree; k += buckets) table[b] = index(base[k]);
      }
    }
  }

  // 2. Quotas: ⌊B/n⌋ each, one more for the B mod n endpoints holding the most buckets (ties:
  //    the higher key, then the smaller identity). An endpoint at ⌈B/n⌉ keeps it when it can.
  std::vector<uint32_t> count(n, 0);
  for (uint32_t e : table)
    if (e != kFree) ++count[e];
  const uint32_t q = static_cast<uint32_t>(buckets / n);
  const size_t r = buckets % n;
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    if (count[a] != count[b]) return count[a] > count[b];
    if (key[a] != key[b]) return key[a] > key[b];
    return ids[a] < ids[b];
  });
  std::vector<uint32_t> quota(n, q);
  for (size_t k = 0; k < r; ++k) ++quota[order[k]];

  // 3. Endpoints above their quota give up their lowest-weight buckets.
  std::vector<std::vector<uint32_t>> held(n);
  for (uint32_t b = 0; b < buckets; ++b)
    if (uint32_t e = table[b]; e != kFree && count[e] > quota[e]) held[e].push_back(b);
  for (size_t e = 0; e < n; ++e) {
    auto& hs = held[e];
    if (hs.empty()) continue;
    const size_t excess = count[e] - quota[e];
    std::nth_element(hs.begin(), hs.begin() + static_cast<std::ptrdiff_t>(excess), hs.end(),
                     [&](uint32_t a, uint32_t b) {
                       uint64_t wa = rendezvousWeight(key[e], a), wb = rendezvousWeight(key[e], b);
                       return wa != wb ? wa < wb : a < b;
                     });
    for (size_t k = 0; k < excess; ++k) table[hs[k]] = kFree;
    count[e] = quota[e];
  }

  // 4. Free buckets, in order, go to the endpoint below its quota with the highest weight.
  std::vector<uint32_t> under;
  for (uint32_t e = 0; e < n; ++e)
    if (count[e] < quota[e]) under.push_back(e);
  for (uint32_t b = 0; b < buckets && !under.empty(); ++b) {
    if (table[b] != kFree) continue;
    size_t best = 0;
    uint64_t bestW = rendezvousWeight(key[under[0]], b);
    for (size_t k = 1; k < under.size(); ++k) {
      uint64_t w = rendezvousWeight(key[under[k]], b);
      if (w > bestW || (w == bestW && ids[under[k]] < ids[under[best]])) {
        best = k;
        bestW = w;
      }
    }
    const uint32_t e = under[best];
    table[b] = e;
    if (++count[e] == quota[e]) {
      under[best] = under.back();
      under.pop_back();
    }
  }
  return table;
}

double movedShare(const std::vector<std::string>& before, const std::vector<std::string>& after) {
  const size_t n = std::max(before.size(), after.size());
  if (before.empty() || after.empty()) return n == 0 ? 0.0 : 1.0;
  size_t moved = 0;
  for (size_t h = 0; h < n; ++h) moved += before[h % before.size()] != after[h % after.size()];
  return double(moved) / double(n);
}

std::vector<std::string> tableIdentities(const std::vector<std::string>& ids,
                                         const std::vector<uint32_t>& table) {
  std::vector<std::string> out;
  out.reserve(table.size());
  for (uint32_t e : table) out.push_back(e < ids.size() ? ids[e] : std::string());
  return out;
}

}  // namespace kst
