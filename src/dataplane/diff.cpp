#include "dataplane/diff.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>

namespace kst::dp {

std::string describe(const Change& c) {
  const char* act = c.action == Change::Action::Add       ? "add"
                    : c.action == Change::Action::Replace ? "replace"
                                                          : "delete";
  return std::visit(
      [&](const auto& o) -> std::string {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, Link>)
          return fmt::format("{} link {} ({})", act, o.name, kindName(o.kind));
        else if constexpr (std::is_same_v<T, Nexthop>)
          return fmt::format("{} nexthop {} dev {}{}", act, o.id, o.dev,
                             o.encapDst ? " encap ip dst " + o.encapDst->str() : std::string());
        else if constexpr (std::is_same_v<T, Route>)
          return fmt::format("{} route {}{}/{} table {} nhid {}", act,
                             o.unreachable ? "unreachable " : "", o.key.dst.str(),
                             o.key.prefixLen, o.key.table, o.nhid);
        else if constexpr (std::is_same_v<T, Rule>)
          return fmt::format("{} rule pref {} fwmark {} table {}", act, o.priority, o.fwmark,
                             o.table);
        else if constexpr (std::is_same_v<T, Address>)
          return fmt::format("{} address {}/{} dev {}", act, o.ip.str(), o.prefixLen, o.dev);
        else if constexpr (std::is_same_v<T, LinkMtu>)
          return fmt::format("{} link {} mtu {}", act, o.name, o.mtu);
        else
          return fmt::format("{} mpls label {} dev {}", act, o.label, o.dev);
      },
      c.object);
}

namespace {

using A = Change::Action;

template <typename T, typename KeyFn, typename SameFn>
void diffSet(const std::vector<T>& desired, const std::vector<T>& observed, KeyFn key,
             SameFn same, std::vector<Change>& adds, std::vector<Change>& dels) {
  std::map<decltype(key(desired.front())), const T*> obs;
  for (auto& o : observed) obs.emplace(key(o), &o);
  for (auto& d : desired) {
    auto it = obs.find(key(d));
    if (it == obs.end()) {
      adds.push_back({A::Add, d});
    } else {
      if (!same(d, *it->second)) adds.push_back({A::Replace, d});
      obs.erase(it);
    }
  }
  for (auto& o : observed) {
    if (obs.contains(key(o))) dels.push_back({A::Delete, o});
  }
}

/** Links by name: another kind or tunnel attribute recreates the link (Replace); a differing
 *  MTU alone is set in place (LinkMtu). */
void diffLinks(const std::vector<Link>& desired, const std::vector<Link>& observed,
               std::vector<Change>& adds, std::vector<Change>& dels) {
  std::map<std::string, const Link*> obs;
  for (auto& o : observed) obs.emplace(o.name, &o);
  for (auto& d : desired) {
    auto it = obs.find(d.name);
    if (it == obs.end()) {
      adds.push_back({A::Add, d});
      continue;
    }
    if (!d.sameConfig(*it->second)) adds.push_back({A::Replace, d});
    else if (!d.sameMtu(*it->second)) adds.push_back({A::Replace, LinkMtu{d.name, d.mtu}});
    obs.erase(it);
  }
  for (auto& o : observed)
    if (obs.contains(o.name)) dels.push_back({A::Delete, o});
}

}  // namespace

std::vector<Change> diffRouter(const RouterState& desired, const RouterState& observed) {
  std::vector<Change> adds, dels;
  std::vector<Change> linkAdds, linkDels, nhAdds, nhDels, rtAdds, rtDels, ruAdds, ruDels;
  diffLinks(desired.links, observed.links, linkAdds, linkDels);
  if (!desired.nexthops.empty() || !observed.nexthops.empty())
    diffSet(desired.nexthops, observed.nexthops, [](const Nexthop& n) { return n.id; },
            [](const Nexthop& a, const Nexthop& b) { return a.sameConfig(b); }, nhAdds, nhDels);
  if (!desired.routes.empty() || !observed.routes.empty())
    diffSet(desired.routes, observed.routes, [](const Route& r) { return r.key; },
            [](const Route& a, const Route& b) { return a.sameConfig(b); }, rtAdds, rtDels);
  if (!desired.rules.empty() || !observed.rules.empty())
    diffSet(desired.rules, observed.rules, [](const Rule& r) { return r; },
            [](const Rule&, const Rule&) { return true; }, ruAdds, ruDels);
  std::vector<Change> out;
  for (auto* v : {&linkAdds, &nhAdds, &rtAdds, &ruAdds, &ruDels, &rtDels, &nhDels, &linkDels})
    out.insert(out.end(), v->begin(), v->end());
  return out;
}

std::vector<Change> diffPod(const PodState& desired, const PodState& observed,
                            uint32_t mplsLabel) {
  std::vector<Change> linkAdds, linkDels, addrAdds, addrDels;
  diffLinks(desired.links, observed.links, linkAdds, linkDels);
  if (!desired.addresses.empty() || !observed.addresses.empty())
    diffSet(desired.addresses, observed.addresses, [](const Address& a) { return a; },
            [](const Address&, const Address&) { return true; }, addrAdds, addrDels);
  std::vector<Change> out;
  out.insert(out.end(), linkAdds.begin(), linkAdds.end());
  out.insert(out.end(), addrAdds.begin(), addrAdds.end());
  if (desired.mplsLabelRoute && !observed.mplsLabelRoute)
    out.push_back({A::Add, MplsPop{mplsLabel, "lo"}});
  if (!desired.mplsLabelRoute && observed.mplsLabelRoute)
    out.push_back({A::Delete, MplsPop{mplsLabel, "lo"}});
  out.insert(out.end(), addrDels.begin(), addrDels.end());
  out.insert(out.end(), linkDels.begin(), linkDels.end());
  return out;
}

}  // namespace kst::dp
