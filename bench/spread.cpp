// kb-spread: the spread and disruption of the bucket assignment at the default --buckets (64),
// for every endpoint count n = 2..300, next to the old default (rendezvous hashing over a fixed
// B = 64). Each figure is the worst over SETS random address sets (seeded, so a run is
// reproducible).
//
//   kb-spread [SETS]        (default 20)
//
// Columns:
//   B          the VIP's bucket count (hashing/balance.h vipBucketCount)
//   ratio      max/min buckets per endpoint of the table computed without a published one
//   rm_pub     buckets moved when one endpoint leaves, as a multiple of its share, the table
//              derived from the previous (published) one: what routers of a Kubernetes
//              cluster do
//   rm_fresh   the same when both tables are computed without a published one (no API
//              source: every router from the endpoint set alone)
//   add_pub    one endpoint added, as a multiple of the newcomer's share (derived)
//   old_ratio  rendezvous over B = 64 (before): max/min ("inf": an endpoint without a bucket)
//   old_rm     rendezvous over B = 64: moved on removal / the leaver's share (exactly 1)
// Then "RESULT bench=spread ..." lines with the worst of each column over n.
#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "hashing/balance.h"
#include "hashing/maglev.h"

namespace {

using kst::balancedTable;
using kst::movedShare;
using kst::tableIdentities;

constexpr uint32_t kMin = 64;

std::vector<std::string> randomIds(size_t n, std::mt19937_64& rng) {
  std::set<std::string> s;
  while (s.size() < n) {
    uint64_t x = rng();
    s.insert("10." + std::to_string(x & 255) + "." + std::to_string((x >> 8) & 255) + "." +
             std::to_string((x >> 16) & 255));
  }
  return {s.begin(), s.end()};
}

struct Spread {
  size_t lo, hi;
  double ratio() const { return lo == 0 ? 1e9 : double(hi) / double(lo); }
};

Spread spread(const std::vector<std::string>& ids, const std::vector<std::string>& t) {
  std::map<std::string, size_t> c;
  for (auto& id : t) ++c[id];
  Spread s{SIZE_MAX, 0};
  for (auto& id : ids) {
    size_t k = c.contains(id) ? c[id] : 0;
    s.lo = std::min(s.lo, k);
    s.hi = std::max(s.hi, k);
  }
  return s;
}

double shareOf(const std::vector<std::string>& t, const std::string& id) {
  return double(std::count(t.begin(), t.end(), id)) / double(t.size());
}

std::string fmtRatio(double r) {
  if (r >= 1e9) return "inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", r);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  const int sets = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  std::mt19937_64 rng(20261206);
  std::printf("%4s %5s %7s %7s %8s %7s %9s %6s\n", "n", "B", "ratio", "rm_pub", "rm_fresh",
              "add_pub", "old_ratio", "old_rm");
  double wRatio = 0, wRmPub = 0, wRmFresh = 0, wAdd = 0, wOldRatio = 0, wOldRm = 0;
  size_t oldStarved = 0;
  for (size_t n = 2; n <= 300; ++n) {
    double ratio = 0, rmPub = 0, rmFresh = 0, add = 0, oldRatio = 0, oldRm = 0;
    for (int s = 0; s < sets; ++s) {
      auto ids = randomIds(n + 1, rng);
      std::shuffle(ids.begin(), ids.end(), rng);
      const std::string newcomer = ids.back();
      ids.pop_back();
      const uint32_t count = kst::vipBucketCount(kMin, n);
      auto t = tableIdentities(ids, balancedTable(ids, count));
      ratio = std::max(ratio, spread(ids, t).ratio());

      const size_t gone = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
      auto rest = ids;
      rest.erase(rest.begin() + static_cast<std::ptrdiff_t>(gone));
      const double share = shareOf(t, ids[gone]);
      const uint32_t after = kst::vipBucketCount(kMin, rest.size(), count);
      auto derived = tableIdentities(rest, balancedTable(rest, after, t));
      rmPub = std::max(rmPub, movedShare(t, derived) / share);
      auto fresh = tableIdentities(rest, balancedTable(rest, kst::vipBucketCount(kMin, rest.size())));
      rmFresh = std::max(rmFresh, movedShare(t, fresh) / share);

      auto more = ids;
      more.push_back(newcomer);
      auto grown = tableIdentities(
          more, balancedTable(more, kst::vipBucketCount(kMin, more.size(), count), t));
      add = std::max(add, movedShare(t, grown) / shareOf(grown, newcomer));

      auto old = tableIdentities(ids, kst::rendezvousTable(ids, kMin));
      Spread os = spread(ids, old);
      oldRatio = std::max(oldRatio, os.ratio());
      if (os.lo == 0) ++oldStarved;
      const double oldShare = shareOf(old, ids[gone]);
      if (oldShare > 0) {
        auto old2 = tableIdentities(rest, kst::rendezvousTable(rest, kMin));
        oldRm = std::max(oldRm, movedShare(old, old2) / oldShare);
      }
    }
    std::printf("%4zu %5u %7.3f %7.3f %8.3f %7.3f %9s %6.3f\n", n, kst::vipBucketCount(kMin, n),
                ratio, rmPub, rmFresh, add, fmtRatio(oldRatio).c_str(), oldRm);
    wRatio = std::max(wRatio, ratio);
    wRmPub = std::max(wRmPub, rmPub);
    wRmFresh = std::max(wRmFresh, rmFresh);
    wAdd = std::max(wAdd, add);
    wOldRatio = std::max(wOldRatio, oldRatio);
    wOldRm = std::max(wOldRm, oldRm);
  }
  // The example: 4 endpoints, 32 buckets.
  std::vector<std::string> four{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"};
  auto c4 = [&](const std::vector<uint32_t>& t) {
    std::string out;
    std::vector<size_t> c(4, 0);
    for (uint32_t e : t) ++c[e];
    for (size_t k = 0; k < 4; ++k) out += (k ? "/" : "") + std::to_string(c[k]);
    return out;
  };
  std::printf("RESULT bench=spread n=2..300 sets=%d worst_ratio=%.3f worst_remove_published=%.3f "
              "worst_remove_fresh=%.3f worst_add_published=%.3f\n",
              sets, wRatio, wRmPub, wRmFresh, wAdd);
  std::printf("RESULT bench=spread_old algo=rendezvous B=64 n=2..300 sets=%d worst_ratio=%s "
              "sets_with_a_starved_endpoint=%zu worst_remove=%.3f\n",
              sets, fmtRatio(wOldRatio).c_str(), oldStarved, wOldRm);
  std::printf("RESULT bench=spread_example n=4 B=32 rendezvous=%s balanced=%s\n",
              c4(kst::rendezvousTable(four, 32)).c_str(), c4(balancedTable(four, 32)).c_str());
  return 0;
}
