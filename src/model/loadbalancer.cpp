#include "model/loadbalancer.h"

#include <algorithm>
#include <set>
#include <tuple>

#include <fmt/format.h>

namespace kst {

namespace {

std::string trimmed(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

bool inSomePool(const VipPolicy& policy, const IpAddress& a) {
  return std::any_of(policy.pools.begin(), policy.pools.end(),
                     [&](const VipPool& p) { return p.prefix.contains(a); });
}

}  // namespace

bool isOurLoadBalancer(const ServiceObject& s, const std::string& lbClass) {
  return s.type == "LoadBalancer" && s.loadBalancerClass == lbClass;
}

std::optional<std::string> requestedVip(const ServiceObject& s, const std::string& annotation,
                                        const std::string& lbClass) {
  if (auto a = s.annotations.find(annotation); a != s.annotations.end()) return trimmed(a->second);
  if (isOurLoadBalancer(s, lbClass) && !s.ingressIps.empty()) return trimmed(s.ingressIps.front());
  return std::nullopt;
}

Result<std::vector<IpPrefix>> sourceRangesOf(const ServiceObject& s) {
  if (s.loadBalancerSourceRanges.size() > kMaxSourceRanges)
    return fail(fmt::format("loadBalancerSourceRanges has {} entries, more than {}",
                            s.loadBalancerSourceRanges.size(), kMaxSourceRanges));
  std::vector<IpPrefix> out;
  for (const auto& text : s.loadBalancerSourceRanges) {
    std::string t = trimmed(text);
    auto slash = t.find('/');
    auto a = IpAddress::parse(std::string_view(t).substr(0, slash));
    std::optional<IpPrefix> p;
    if (a) {
      unsigned len = a->hostPrefixLen();
      bool ok = true;
      if (slash != std::string::npos) {
        std::string d = t.substr(slash + 1);
        ok = !d.empty() && d.size() <= 3 &&
             std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (ok) len = unsigned(std::stoul(d));
        ok = ok && len <= a->hostPrefixLen();
      }
      if (ok) p = IpPrefix::of(*a, uint8_t(len));
    }
    if (!p)
      return fail(fmt::format("loadBalancerSourceRanges entry {:?} is not a CIDR block",
                              text.substr(0, 64)));
    out.push_back(*p);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

LoadBalancerStatusPlan planLoadBalancerStatus(const ClusterObjects& objects, const VipPolicy& policy,
                                              const std::string& annotation,
                                              const std::string& lbClass) {
  LoadBalancerStatusPlan plan;
  // Every annotated VIP is someone's explicit claim: never allocated to another Service.
  std::set<IpAddress> annotated;
  for (const auto& [k, s] : objects.services)
    if (auto a = s.annotations.find(annotation); a != s.annotations.end())
      if (auto ip = IpAddress::parse(trimmed(a->second))) annotated.insert(*ip);

  // Addresses other Services' status shows (another implementation's LoadBalancers): never
  // allocated to ours, though they do not take an address ours already has.
  std::set<IpAddress> elsewhere;
  std::vector<const ServiceObject*> ours;
  for (const auto& [k, s] : objects.services) {
    if (isOurLoadBalancer(s, lbClass)) {
      ours.push_back(&s);
      continue;
    }
    // Left our class (type or class changed) but still shows an address we wrote.
    bool wrote = s.ingressProxyMode && std::any_of(s.ingressIps.begin(), s.ingressIps.end(),
                                                   [&](const std::string& t) {
                                                     auto ip = IpAddress::parse(t);
                                                     return ip && inSomePool(policy, *ip);
                                                   });
    if (wrote) {
      plan.changes.push_back({k, {}, "left class"});
      continue;
    }
    for (const auto& t : s.ingressIps)
      if (auto ip = IpAddress::parse(trimmed(t))) elsewhere.insert(*ip);
  }
  // Older Services first: the one that had an address keeps it against newer ones.
  std::sort(ours.begin(), ours.end(), [](const ServiceObject* a, const ServiceObject* b) {
    return std::tie(a->creationTimestamp, a->key) < std::tie(b->creationTimestamp, b->key);
  });
  std::set<IpAddress> taken;
  std::vector<const ServiceObject*> needAddress;
  auto current = [](const ServiceObject& s) {
    std::vector<IpAddress> v;
    for (const auto& t : s.ingressIps)
      if (auto ip = IpAddress::parse(trimmed(t))) v.push_back(*ip);
    return v;
  };
  auto set = [&](const ServiceObject& s, std::vector<IpAddress> want, const char* why) {
    if (current(s) != want || (!want.empty() && !s.ingressProxyMode) ||
        (want.empty() && !s.ingressIps.empty()))
      plan.changes.push_back({s.key, std::move(want), why});
  };
  // 1. Annotated or keeping their address (in age order), 2. allocations for the rest.
  for (const ServiceObject* s : ours) {
    if (auto a = s->annotations.find(annotation); a != s->annotations.end()) {
      auto ip = IpAddress::parse(trimmed(a->second));
      if (ip && !vipRefusal(policy, s->key.ns, *ip)) {
        taken.insert(*ip);
        set(*s, {*ip}, "annotation");
      } else {
        set(*s, {}, "annotation refused");  // the model reports why
      }
      continue;
    }
    auto have = current(*s);
    if (have.size() == 1 && !taken.contains(have[0]) && !annotated.contains(have[0]) &&
        !vipRefusal(policy, s->key.ns, have[0])) {
      taken.insert(have[0]);
      set(*s, have, "kept");
      continue;
    }
    needAddress.push_back(s);
  }
  for (const ServiceObject* s : needAddress) {
    std::set<IpAddress> avoid = taken;
    avoid.insert(annotated.begin(), annotated.end());
    avoid.insert(elsewhere.begin(), elsewhere.end());
    Family fam = s->ipFamily == "IPv6" ? Family::V6 : Family::V4;
    if (auto a = allocateVip(policy, s->key.ns, fam, avoid)) {
      taken.insert(*a);
      set(*s, {*a}, "allocated");
    } else {
      plan.unallocated.push_back(
          {s->key, fmt::format("no free {} address in a VIP pool open to namespace {}",
                               fam == Family::V6 ? "IPv6" : "IPv4", s->key.ns)});
      set(*s, {}, "pool exhausted");
    }
  }
  std::sort(plan.changes.begin(), plan.changes.end(),
            [](const auto& a, const auto& b) { return a.service < b.service; });
  return plan;
}

}  // namespace kst
