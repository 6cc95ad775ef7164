#include "model/vip_policy.h"

#include <algorithm>

#include <fmt/format.h>

namespace kst {

namespace {

bool isDnsLabel(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(s.front()) || !alnum(s.back())) return false;
  return std::all_of(s.begin(), s.end(), [&](char c) { return alnum(c) || c == '-'; });
}

}  // namespace

Result<VipPool> parseVipPool(std::string_view text) {
  constexpr size_t kMaxNamespaces = 64;
  auto at = text.find('@');
  auto cidr = text.substr(0, at);
  auto prefix = IpPrefix::parse(cidr);
  if (!prefix)
    return fail(fmt::format("VIP pool {:?}: {:?} is not a CIDR block with zero host bits "
                            "(e.g. 203.0.113.0/24)",
                            std::string(text), std::string(cidr)));
  VipPool pool{*prefix, {}};
  if (at != std::string_view::npos) {
    std::string_view rest = text.substr(at + 1);
    if (rest.empty()) return fail(fmt::format("VIP pool {:?}: empty namespace list after '@'", std::string(text)));
    while (true) {
      auto comma = rest.find(',');
      auto ns = rest.substr(0, comma);
      if (!isDnsLabel(ns))
        return fail(fmt::format("VIP pool {:?}: {:?} is not a namespace name", std::string(text),
                                std::string(ns)));
      pool.namespaces.emplace(ns);
      if (pool.namespaces.size() > kMaxNamespaces)
        return fail(fmt::format("VIP pool {:?}: more than {} namespaces", std::string(text),
                                kMaxNamespaces));
      if (comma == std::string_view::npos) break;
      rest = rest.substr(comma + 1);
    }
  }
  return pool;
}

Result<std::vector<VipPool>> parseVipPools(std::string_view text) {
  std::vector<VipPool> out;
  size_t i = 0;
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (i < text.size()) {
    while (i < text.size() && space(text[i])) ++i;
    size_t j = i;
    while (j < text.size() && !space(text[j])) ++j;
    if (j > i) {
      auto pool = parseVipPool(text.substr(i, j - i));
      if (!pool) return std::unexpected(pool.error());
      out.push_back(std::move(*pool));
    }
    i = j;
  }
  return out;
}

const std::vector<IpPrefix>& reservedVipRanges() {
  static const std::vector<IpPrefix> kReserved = [] {
    std::vector<IpPrefix> r;
    for (const char* s : {"0.0.0.0/8",       // "this network", unspecified
                          "127.0.0.0/8",     // loopback
                          "169.254.0.0/16",  // link-local (cloud metadata 169.254.169.254)
                          "224.0.0.0/4",     // multicast
                          "240.0.0.0/4",     // class E and the limited broadcast
                          "::/128", "::1/128",
                          "::ffff:0:0/96",   // IPv4-mapped: the IPv4 rules above apply
                          "fe80::/10",       // link-local
                          "ff00::/8"})       // multicast
      r.push_back(*IpPrefix::parse(s));
    return r;
  }();
  return kReserved;
}

std::optional<std::string> vipRefusal(const VipPolicy& policy, const std::string& ns,
                                      const IpAddress& vip) {
  for (const auto& r : reservedVipRanges())
    if (r.contains(vip))
      return fmt::format("VIP {} is in the reserved range {}", vip.str(), r.str());
  for (const auto& r : policy.clusterRanges)
    if (r.contains(vip))
      return fmt::format("VIP {} is in the cluster's own range {} (pods, Services or nodes)",
                         vip.str(), r.str());
  const VipPool* closed = nullptr;
  for (const auto& p : policy.pools) {
    if (!p.prefix.contains(vip)) continue;
    if (p.allows(ns)) return std::nullopt;
    if (!closed) closed = &p;
  }
  // The messages name the ranges (bounded: an operator may configure many pools).
  auto listed = [](const auto& items, auto str) {
    constexpr size_t kShown = 4;
    std::string out;
    size_t n = 0;
    for (const auto& i : items) {
      if (n == kShown) return out + fmt::format(", … ({} more)", items.size() - kShown);
      out += (n++ ? ", " : "") + str(i);
    }
    return out;
  };
  if (closed)
    return fmt::format("VIP {} is in the pool {} that is not open to namespace {} (only to {})",
                       vip.str(), closed->prefix.str(), ns,
                       listed(closed->namespaces, [](const std::string& s) { return s; }));
  if (policy.pools.empty())
    return fmt::format("VIP {} refused: no VIP pool is configured (--vip-pool), every VIP is "
                       "denied",
                       vip.str());
  return fmt::format("VIP {} is outside every VIP pool ({})", vip.str(),
                     listed(policy.pools, [](const VipPool& p) { return p.prefix.str(); }));
}

std::optional<IpAddress> allocateVip(const VipPolicy& policy, const std::string& ns, Family family,
                                     const std::set<IpAddress>& taken, uint64_t limit) {
  for (const auto& p : policy.pools) {
    if (p.prefix.family() != family || !p.allows(ns)) continue;
    uint64_t n = p.prefix.size(), first = 0, last = n;  // [first, last)
    if (family == Family::V4 && p.prefix.length() <= 30) {
      first = 1;  // network address
      last = n - 1;  // broadcast address
    }
    for (uint64_t i = first; i < last && i - first < limit; ++i) {
      IpAddress a = p.prefix.at(i);
      if (taken.contains(a)) continue;
      if (vipRefusal(policy, ns, a)) continue;  // reserved or cluster range inside the pool
      return a;
    }
  }
  return std::nullopt;
}

}  // namespace kst
