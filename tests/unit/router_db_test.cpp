// desired/router_db.h, pure: nexthop ids stay in the owned range, a restart (a database seeded
// with what the kernel holds) changes nothing, and partial updates end in the state a whole
// update of a fresh database finds nothing to change in.
#include "desired/router_db.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <variant>

#include <fmt/format.h>

#include "dataplane/diff.h"

namespace kst {
namespace {

IpAddress v4(uint32_t host) { return IpAddress::fromV4(htonl(host)); }

TunnelService service(uint32_t i, std::vector<uint32_t> eps) {
  TunnelService s;
  s.key = {"t", "svc" + std::to_string(i)};
  s.vip = v4(0xcb000000 + i);
  for (auto e : eps) s.endpoints.push_back({v4(0x0a000000 + e), "n1", true, false, ""});
  std::sort(s.endpoints.begin(), s.endpoints.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
  return s;
}

void normalize(Model& m) {
  std::sort(m.services.begin(), m.services.end(), [](auto& a, auto& b) { return a.vip < b.vip; });
}

/** A stand-in kernel: holds what the applied deltas left. */
struct Kernel {
  std::map<std::string, dp::Link> links;
  std::map<uint32_t, dp::Nexthop> nexthops;
  std::map<dp::RouteKey, dp::Route> routes;
  std::set<dp::Rule> rules;
  dp::NftState nft;

  dp::RouterState state() const {
    dp::RouterState k;
    for (auto& [n, l] : links) k.links.push_back(l);
    for (auto& [id, n] : nexthops) k.nexthops.push_back(n);
    for (auto& [key, r] : routes) k.routes.push_back(r);
    k.rules.assign(rules.begin(), rules.end());
    k.nft = nft;
    return k;
  }
  void apply(const RouterDelta& d) {
    using A = dp::Change::Action;
    auto put = [](auto& map, const auto& key, const auto& o, A action) {
      if (action == A::Delete) map.erase(key);
      else map.insert_or_assign(key, o);
    };
    for (const auto& c : d.changes) {
      std::visit(
          [&](const auto& o) {
            using T = std::decay_t<decltype(o)>;
            if constexpr (std::is_same_v<T, dp::Link>) put(links, o.name, o, c.action);
            else if constexpr (std::is_same_v<T, dp::Nexthop>) put(nexthops, o.id, o, c.action);
            else if constexpr (std::is_same_v<T, dp::Route>) put(routes, o.key, o, c.action);
            else if constexpr (std::is_same_v<T, dp::Rule>) {
              if (c.action == A::Delete) rules.erase(o);
              else rules.insert(o);
            } else if constexpr (std::is_same_v<T, dp::LinkMtu>) {
              if (auto it = links.find(o.name); it != links.end()) it->second.mtu = o.mtu;
            }
          },
          c.object);
    }
    switch (d.table) {
      case NftTableStep::Delete: nft = {}; return;
      case NftTableStep::Create:
      case NftTableStep::Rebuild:
        nft = {};
        nft.present = true;
        nft.skeleton = d.skeleton;
        nft.skeletonId = d.skeletonId;
        break;
      case NftTableStep::Keep: break;
    }
    for (auto& v : d.elements.vipDeletes) nft.vips.erase(v);
    for (auto& c : d.elements.countDeletes) nft.vipBuckets.erase(c.vip);
    for (auto& c : d.elements.countAdds) nft.vipBuckets[c.vip] = c.buckets;
    for (auto& b : d.elements.bucketDeletes) nft.buckets.erase(b.vip, b.bucket);
    for (auto& b : d.elements.bucketAdds) nft.buckets.set(b.vip, b.bucket, b.mark);
    for (auto& v : d.elements.vipAdds) nft.vips.insert(v);
    for (auto& e : d.elements.endpointDeletes) {
      nft.endpoints[e.vip].erase(e.mark);
      if (nft.endpoints[e.vip].empty()) nft.endpoints.erase(e.vip);
    }
    for (auto& e : d.elements.endpointAdds) nft.endpoints[e.vip][e.mark] = e.endpoint;
    for (auto& r : d.elements.rangeDeletes) std::erase(nft.sourceRanges[r.vip], r.src);
    for (auto& v : d.elements.rangedDeletes) nft.sourceRanges.erase(v);
    for (auto& v : d.elements.rangedAdds) nft.sourceRanges[v];
    for (auto& r : d.elements.rangeAdds) {
      auto& l = nft.sourceRanges[r.vip];
      l.insert(std::upper_bound(l.begin(), l.end(), r.src), r.src);
    }
    for (auto& l : d.elements.liveDeletes) nft.live.erase(l);
    for (auto& l : d.elements.liveAdds) nft.live.insert(l);
  }
};

bool nothingToDo(const RouterDelta& d) {
  return d.changes.empty() && d.table == NftTableStep::Keep && d.elements.size() == 0;
}

TEST(RouterDb, NexthopIdsStayInTheOwnedRangeAndUniqueAt100kEndpoints) {
  DataplaneConfig cfg;
  cfg.buckets = 4;
  ASSERT_GT(cfg.nexthopIdEnd() - cfg.nexthopIdBase, 100000u);
  Model m;
  for (uint32_t i = 0; i < 25000; ++i)
    m.services.push_back(service(i, {4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4}));
  normalize(m);
  RouterDb db(cfg);
  db.seed({});
  Kernel kernel;
  auto d = db.update(m);
  EXPECT_TRUE(d.problems.empty());
  kernel.apply(d);
  db.commit(m);
  auto check = [&](const std::string& where) {
    std::set<uint32_t> ids;
    for (auto& [id, nh] : kernel.nexthops) {
      EXPECT_GE(nh.id, cfg.nexthopIdBase) << where;
      EXPECT_LT(nh.id, cfg.nexthopIdEnd()) << where;
      EXPECT_TRUE(ids.insert(nh.id).second) << where << ": id " << nh.id << " twice";
    }
    for (auto& [key, r] : kernel.routes)
      if (!r.unreachable) EXPECT_TRUE(ids.contains(r.nhid)) << where;
  };
  EXPECT_EQ(kernel.nexthops.size(), 100000u);
  check("whole");
  // Partial updates (one endpoint replaced by a new one, 50 times) take ids in the range too,
  // the lowest free ones (the replaced endpoint's id is free from the next update on).
  for (uint32_t k = 0; k < 50; ++k) {
    std::set<IpAddress> changed{m.services[k * 97].vip};
    auto& eps = m.services[k * 97].endpoints;
    eps[0].ip = v4(0x0b000000 + k);
    std::sort(eps.begin(), eps.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
    d = db.update(m, &changed);
    // The new endpoint takes slot 4 (slot 0, which the old one leaves, is held): the first
    // such change adds a slot table, yet only that VIP's routes and the new table's rule.
    EXPECT_FALSE(d.whole) << k;
    EXPECT_EQ(d.vipsPlanned, 1u) << k;
    EXPECT_LE(d.changes.size(), 4u + (k == 0)) << k;
    kernel.apply(d);
    db.commit(m);
  }
  EXPECT_EQ(kernel.nexthops.size(), 100000u);
  check("partial");
  EXPECT_EQ(kernel.nexthops.rbegin()->first, cfg.nexthopIdBase + 100000);  // 49 reused, one new
  // A restart adopts all of it without a change.
  RouterDb restarted(cfg);
  restarted.seed(kernel.state());
  EXPECT_TRUE(nothingToDo(restarted.update(m)));
}

TEST(RouterDb, PartialUpdatesEndWhereAWholeUpdateOfARestartedDatabaseChangesNothing) {
  DataplaneConfig cfg;
  cfg.buckets = 16;
  Model m;
  for (uint32_t i = 0; i < 40; ++i) m.services.push_back(service(i, {3 * i + 1, 3 * i + 2}));
  normalize(m);
  RouterDb db(cfg);
  db.seed({});
  Kernel kernel;
  kernel.apply(db.update(m));
  db.commit(m);
  std::mt19937 rng(7);
  uint32_t fresh = 1000;
  int partial = 0, partialSlotCount = 0;
  for (int step = 0; step < 300; ++step) {
    Model before = m;
    // Held slots for a while (as after releases or a restart): new endpoints take higher
    // slots, so the slot count grows (and shrinks when the VIPs that reached it go).
    db.setHeld({}, step % 60 < 30 ? 2 + static_cast<uint32_t>(step % 5) : 0);
    const uint32_t slotCount = db.plan().slotCount;
    auto& s = m.services[rng() % m.services.size()];
    switch (rng() % 6) {
      case 5:  // source ranges: none, or one or two /24s (a partial update's nft elements)
        s.sourceRanges.clear();
        for (uint32_t k = rng() % 3; k > 0; --k)
          s.sourceRanges.push_back(IpPrefix::of(v4(0xc6336400 + (rng() % 4) * 256), 24));
        std::sort(s.sourceRanges.begin(), s.sourceRanges.end());
        s.sourceRanges.erase(std::unique(s.sourceRanges.begin(), s.sourceRanges.end()),
                             s.sourceRanges.end());
        break;
      case 0: s.endpoints[rng() % s.endpoints.size()].ip = v4(0x0a000000 + ++fresh); break;
      case 1: s.endpoints.push_back({v4(0x0a000000 + 1 + rng() % 150), "n1", true, false, ""}); break;
      case 2: if (s.endpoints.size() > 1) s.endpoints.pop_back(); break;
      case 3: s.endpoints[0].draining ^= true; break;
      case 4:
        if (m.services.size() > 30 && rng() % 2) {
          // Sometimes the VIP with the most slot tables: the slot count may shrink.
          auto& vips = db.plan().vips;
          auto top = std::max_element(vips.begin(), vips.end(),
                                      [](auto& a, auto& b) { return a.tables < b.tables; });
          IpAddress gone = rng() % 2 ? top->vip : m.services[rng() % m.services.size()].vip;
          std::erase_if(m.services, [&](const TunnelService& t) { return t.vip == gone; });
        } else {
          m.services.push_back(service(100 + static_cast<uint32_t>(step), {++fresh}));
        }
        break;
    }
    for (auto& t : m.services) {
      std::sort(t.endpoints.begin(), t.endpoints.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
      t.endpoints.erase(std::unique(t.endpoints.begin(), t.endpoints.end(),
                                    [](auto& a, auto& b) { return a.ip == b.ip; }),
                        t.endpoints.end());
    }
    normalize(m);
    std::set<IpAddress> changed;
    for (auto& t : m.services) changed.insert(t.vip);
    for (auto& t : before.services) changed.insert(t.vip);
    std::erase_if(changed, [&](const IpAddress& v) {
      auto f = [&](const Model& x) -> const TunnelService* {
        for (auto& t : x.services)
          if (t.vip == v) return &t;
        return nullptr;
      };
      auto a = f(before), b = f(m);
      return a && b && *a == *b;
    });
    auto d = db.update(m, &changed);
    partial += !d.whole;
    partialSlotCount += !d.whole && db.plan().slotCount != slotCount;
    kernel.apply(d);
    db.commit(m);
    RouterDb fresh(cfg);
    fresh.seed(kernel.state());
    auto again = fresh.update(m);
    EXPECT_TRUE(again.whole);
    ASSERT_TRUE(nothingToDo(again)) << "step " << step << ": "
                                   << (again.changes.empty() ? "nft" : dp::describe(again.changes[0]));
    EXPECT_EQ(fresh.plan().vips.size(), db.plan().vips.size());
    for (size_t i = 0; i < db.plan().vips.size(); ++i) {
      EXPECT_EQ(fresh.plan().vips[i].slots, db.plan().vips[i].slots) << "step " << step;
      EXPECT_EQ(fresh.plan().vips[i].buckets, db.plan().vips[i].buckets) << "step " << step;
      EXPECT_EQ(fresh.plan().vips[i].tables, db.plan().vips[i].tables) << "step " << step;
    }
    EXPECT_EQ(fresh.plan().slotCount, db.plan().slotCount) << "step " << step;
    std::set<uint32_t> ruleTables;
    for (auto& r : kernel.rules) ruleTables.insert(r.table);
    EXPECT_EQ(ruleTables.size(), db.plan().slotCount) << "step " << step;
  }
  EXPECT_GT(partial, 150);
  EXPECT_GT(partialSlotCount, 5) << partialSlotCount;  // slot-count changes were partial too
}

TEST(RouterDb, UncommittedUpdateLeavesTheKnownStateAlone) {
  DataplaneConfig cfg;
  Model m;
  m.services.push_back(service(1, {1, 2}));
  RouterDb db(cfg);
  db.seed({});
  auto first = db.update(m);
  EXPECT_FALSE(first.changes.empty());
  // Not applied (no commit): the same update again yields the same changes.
  auto second = db.update(m);
  EXPECT_EQ(second.changes.size(), first.changes.size());
  db.forget();
  EXPECT_FALSE(db.known());
}

}  // namespace
}  // namespace kst
