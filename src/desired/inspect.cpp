#include "desired/inspect.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "desired/nft_render.h"
#include "desired/router.h"
#include "hashing/jhash.h"

namespace kst {

namespace {

struct ProtoName {
  const char* name;
  uint8_t number;
};
constexpr ProtoName kProtocols[] = {{"tcp", 6}, {"udp", 17}, {"sctp", 132}, {"icmp", 1},
                                    {"icmpv6", 58}};

/** The register bytes of one packet field named as nft's JSON names it. */
bool addField(NftRegisters& r, const std::string& field, const FlowQuery& q) {
  const std::string ip = q.vip.isV4() ? "ip " : "ip6 ";
  if (field == ip + "saddr") r.add(q.src);
  else if (field == ip + "daddr") r.add(q.vip);
  else if (field == "th sport") r.port(q.sport);
  else if (field == "th dport") r.port(q.dport);
  else return false;
  return true;
}

Result<NftRegisters> registersOf(const std::vector<std::string>& fields, const FlowQuery& q) {
  NftRegisters r;
  for (const auto& f : fields)
    if (!addField(r, f, q))
      return fail(EINVAL, "the kernel's hash reads " + (f.empty() ? std::string("an expression") : f) +
                              ", which explain does not know for this packet");
  return r;
}

/** The rule whose hash the packet takes: among the rules of its protocol class, the one whose
 *  mod is the VIP's bucket count; else the only one there is. */
const dp::BucketHashRule* bucketRule(const dp::ClassifierHashes& h, bool ports, uint32_t buckets,
                                     std::string& note) {
  std::vector<const dp::BucketHashRule*> fit;
  for (const auto& r : h.buckets) {
    using P = dp::BucketHashRule::Protocols;
    if (r.protocols == P::Any || (r.protocols == P::WithPorts) == ports) fit.push_back(&r);
  }
  for (const auto* r : fit)
    if (r->hash.mod == buckets) return r;
  if (fit.size() == 1) {
    if (buckets != 0)
      note = fmt::format(" (the rule's mod {} is not the VIP's {} bucket elements)",
                         fit[0]->hash.mod, buckets);
    return fit[0];
  }
  return nullptr;
}

/** mark → (table, endpoint) through the policy rule of the mark and the table's route. */
void route(const dp::RouterState& st, const IpAddress& vip, uint32_t mark,
           std::optional<uint32_t>& table, std::optional<IpAddress>& endpoint) {
  const dp::Rule* best = nullptr;
  for (const auto& r : st.rules)
    if (r.family == vip.family() && r.fwmark == mark && (!best || r.priority < best->priority))
      best = &r;
  if (!best) return;
  table = best->table;
  std::map<uint32_t, const dp::Nexthop*> byId;
  for (const auto& nh : st.nexthops) byId[nh.id] = &nh;
  for (const auto& r : st.routes)
    if (r.key.table == best->table && r.key.dst == vip && r.key.prefixLen == vip.hostPrefixLen() &&
        !r.unreachable)
      endpoint = routeEndpoint(r, byId, st.links);
}

std::string hex(uint32_t v) { return fmt::format("{:#x}", v); }

}  // namespace

std::optional<uint8_t> parseProtocol(const std::string& name) {
  for (auto p : kProtocols)
    if (name == p.name) return p.number;
  if (name.empty() || name.size() > 3 ||
      !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  int n = std::stoi(name);
  if (n > 255) return std::nullopt;
  return uint8_t(n);
}

std::string protocolName(uint8_t protocol) {
  for (auto p : kProtocols)
    if (protocol == p.number) return p.name;
  return std::to_string(protocol);
}

bool protocolHasPorts(uint8_t p) { return p == 6 || p == 17 || p == 132; }

uint32_t vipBucketCount(const dp::NftState& nft, const IpAddress& vip) {
  const auto& per = nft.buckets.perVip();
  auto it = per.find(vip);
  if (it == per.end()) return 0;
  const auto& marks = it->second;
  for (size_t b = marks.size(); b > 0; --b)
    if (marks[b - 1] != 0) return uint32_t(b);
  return 0;
}

Result<std::optional<std::vector<uint8_t>>> flowKey(const FlowQuery& q,
                                                    const dp::ClassifierHashes& hashes) {
  if (!protocolHasPorts(q.protocol) || hashes.flowKey.empty())
    return std::optional<std::vector<uint8_t>>();
  NftRegisters key;
  for (const auto& part : hashes.flowKey) {
    if (part.hash) {
      auto in = registersOf(part.hash->fields, q);
      if (!in) return std::unexpected(in.error());
      NftJhash h{part.hash->mod, part.hash->seed, part.hash->offset};
      key.word(h.eval(in->bytes()));
    } else if (!addField(key, part.field, q)) {
      return fail(EINVAL, "the flow key reads " + part.field + ", which explain does not know");
    }
  }
  return std::vector<uint8_t>(key.bytes().begin(), key.bytes().end());
}

Result<Explanation> explainFlow(const FlowQuery& q, const dp::RouterState& st,
                                const dp::ClassifierHashes& hashes, std::optional<uint32_t> pinned) {
  Explanation e;
  e.query = q;
  if (q.src.family() != q.vip.family()) return fail(EINVAL, "source and VIP of different families");
  e.vipKnown = st.nft.vips.contains(q.vip);
  e.buckets = vipBucketCount(st.nft, q.vip);
  std::string note;
  const auto* rule = bucketRule(hashes, protocolHasPorts(q.protocol), e.buckets, note);
  if (!rule && !e.vipKnown) {
    // (A router's classifier has a rule pair per bucket count class: for an address without a
    // count none is the one; the packet never reaches them anyway.)
    e.verdict = "not a VIP of this router: the classifier does not touch the packet";
    return e;
  }
  if (!rule)
    return fail(ENOENT, fmt::format("no bucket hash rule of the {} classifier fits {} with {} buckets",
                                    q.vip.isV4() ? "IPv4" : "IPv6", protocolName(q.protocol),
                                    e.buckets));
  e.hash = rule->hash;
  auto in = registersOf(rule->hash.fields, q);
  if (!in) return std::unexpected(in.error());
  const NftJhash h{rule->hash.mod, rule->hash.seed, rule->hash.offset};
  e.hashMark = h.eval(in->bytes());
  e.bucket = e.hashMark - rule->hash.offset;
  // The bucket map's key is VIP . hash value; BucketMap indexes it from kBucketMarkBase.
  if (e.hashMark >= kBucketMarkBase) {
    uint32_t b = e.hashMark - kBucketMarkBase;
    const auto& per = st.nft.buckets.perVip();
    if (auto it = per.find(q.vip); it != per.end() && b < it->second.size() && it->second[b])
      e.bucketMark = it->second[b];
  }
  if (!e.vipKnown) {
    e.verdict = "not a VIP of this router: the classifier does not touch the packet";
    return e;
  }
  // [flowtable] The established-flow rule takes a pin only while (VIP, mark) is in the
  // live-slot set: a pin to a released slot is stale, the packet is hashed again.
  if (pinned && !st.nft.live.contains({q.vip, *pinned})) {
    e.stalePinMark = pinned;
    pinned.reset();
  }
  e.pinnedMark = pinned;
  e.mark = pinned ? pinned : e.bucketMark;
  if (!e.mark) {
    e.verdict = "the bucket has no element: dropped (the VIP has no serving endpoint)";
    return e;
  }
  route(st, q.vip, *e.mark, e.table, e.endpoint);
  if (!e.table) e.verdict = fmt::format("no policy rule for mark {}: not tunnelled", *e.mark);
  else if (!e.endpoint)
    e.verdict = fmt::format("table {} has no route to an endpoint for the VIP: unreachable", *e.table);
  else
    e.verdict = fmt::format("{} to {} through table {}{}", pinned ? "pinned" : "hashed",
                            e.endpoint->str(), *e.table, note);
  return e;
}

nlohmann::json toJson(const Explanation& e) {
  using nlohmann::json;
  auto opt = [](const auto& v) -> json { return v ? json(*v) : json(nullptr); };
  json j;
  j["vip"] = e.query.vip.str();
  j["src"] = e.query.src.str();
  j["sport"] = e.query.sport;
  j["dport"] = e.query.dport;
  j["protocol"] = protocolName(e.query.protocol);
  j["vipKnown"] = e.vipKnown;
  j["buckets"] = e.buckets;
  j["bucket"] = opt(e.bucket);
  j["hash"] = {{"fields", e.hash.fields}, {"mod", e.hash.mod}, {"seed", e.hash.seed},
               {"offset", e.hash.offset}, {"value", e.hashMark}};
  j["bucketMark"] = opt(e.bucketMark);
  j["pinned"] = e.pinnedMark.has_value();
  j["pinnedMark"] = opt(e.pinnedMark);
  j["stalePinMark"] = opt(e.stalePinMark);
  j["mark"] = opt(e.mark);
  j["table"] = opt(e.table);
  j["endpoint"] = e.endpoint ? json(e.endpoint->str()) : json(nullptr);
  j["verdict"] = e.verdict;
  return j;
}

std::string toText(const Explanation& e) {
  const auto& q = e.query;
  std::string s = fmt::format("{} {}:{} → {}:{}\n", protocolName(q.protocol), q.src.str(), q.sport,
                              q.vip.str(), q.dport);
  std::string fields;
  for (const auto& f : e.hash.fields) fields += (fields.empty() ? "" : " . ") + f;
  s += fmt::format("  hash      jhash {} mod {} seed {} offset {} = {}\n", fields, e.hash.mod,
                   hex(e.hash.seed), hex(e.hash.offset), hex(e.hashMark));
  s += fmt::format("  bucket    {} of {}{}\n", e.bucket ? std::to_string(*e.bucket) : "-",
                   e.buckets, e.bucketMark ? " → mark " + std::to_string(*e.bucketMark) : "");
  s += fmt::format("  pinned    {}\n",
                   e.pinnedMark     ? "yes, mark " + std::to_string(*e.pinnedMark)
                   : e.stalePinMark ? "stale, mark " + std::to_string(*e.stalePinMark) +
                                          " (a released slot: not followed)"
                                    : std::string("no"));
  s += fmt::format("  mark      {}\n", e.mark ? std::to_string(*e.mark) : "-");
  s += fmt::format("  table     {}\n", e.table ? std::to_string(*e.table) : "-");
  s += fmt::format("  endpoint  {}\n", e.endpoint ? e.endpoint->str() : "-");
  s += "  " + e.verdict + "\n";
  return s;
}

// ---- status ----

std::vector<VipStatus> routerStatus(const dp::RouterState& st,
                                    const std::optional<std::vector<dp::Route>>& announced) {
  std::set<IpAddress> vips = st.nft.vips;
  for (const auto& [vip, marks] : st.nft.buckets.perVip()) vips.insert(vip);
  std::vector<VipStatus> out;
  for (const auto& vip : vips) {
    VipStatus v;
    v.vip = vip;
    v.inVipSet = st.nft.vips.contains(vip);
    v.buckets = vipBucketCount(st.nft, vip);
    // Slots: every owned rule whose table routes the VIP to an endpoint.
    std::map<uint32_t, EndpointStatus> byMark;
    for (const auto& r : st.rules) {
      if (r.family != vip.family() || byMark.contains(r.fwmark)) continue;
      std::optional<uint32_t> table;
      std::optional<IpAddress> ep;
      route(st, vip, r.fwmark, table, ep);
      if (ep) byMark[r.fwmark] = EndpointStatus{*ep, r.fwmark, *table, 0};
    }
    const auto& per = st.nft.buckets.perVip();
    if (auto it = per.find(vip); it != per.end()) {
      for (uint32_t b = 0; b < v.buckets; ++b) {
        auto e = byMark.find(it->second[b]);
        if (e == byMark.end()) ++v.unassigned;
        else ++e->second.buckets;
      }
    }
    for (auto& [mark, e] : byMark) v.endpoints.push_back(e);
    if (announced)
      v.announced = std::any_of(announced->begin(), announced->end(),
                                [&](const dp::Route& r) { return r.key.dst == vip; });
    out.push_back(std::move(v));
  }
  return out;
}

std::optional<PodStatus> podStatus(const std::string& netns, const std::string& decapDevice,
                                   const std::vector<dp::Link>& links,
                                   const std::vector<dp::Address>& all,
                                   const std::vector<dp::Address>& owned) {
  PodStatus p;
  p.netns = netns;
  p.decapDevice = decapDevice;
  p.decapPresent = decapDevice != "lo" && std::any_of(links.begin(), links.end(), [&](const auto& l) {
    return l.name == decapDevice;
  });
  for (const auto& a : owned) p.vips.push_back(a.ip);
  if (p.vips.empty() && !p.decapPresent) return std::nullopt;
  for (const auto& a : all) {
    if (std::any_of(owned.begin(), owned.end(), [&](const auto& o) { return o.ip == a.ip; })) continue;
    if (a.dev == "lo") continue;
    if (a.ip.isV6() && a.ip.data()[0] == 0xfe && (a.ip.data()[1] & 0xc0) == 0x80) continue;  // fe80::/10
    p.podIps.push_back(a.ip);
  }
  std::sort(p.vips.begin(), p.vips.end());
  p.vips.erase(std::unique(p.vips.begin(), p.vips.end()), p.vips.end());
  std::sort(p.podIps.begin(), p.podIps.end());
  return p;
}

nlohmann::json toJson(const NodeStatus& s) {
  using nlohmann::json;
  json j = json::object();
  if (s.router) {
    json vips = json::array();
    for (const auto& v : s.vips) {
      json eps = json::array();
      for (const auto& e : v.endpoints)
        eps.push_back({{"endpoint", e.endpoint.str()}, {"mark", e.mark}, {"table", e.table},
                       {"buckets", e.buckets}, {"state", e.draining() ? "draining" : "serving"}});
      vips.push_back({{"vip", v.vip.str()}, {"inVipSet", v.inVipSet}, {"buckets", v.buckets},
                      {"unassigned", v.unassigned}, {"endpoints", eps},
                      {"announced", v.announced ? json(*v.announced) : json(nullptr)}});
    }
    j["router"] = {{"datapath", s.datapath}, {"table", s.nftTable}, {"vips", vips},
                   {"drained", s.drained ? json(*s.drained) : json(nullptr)}};
  }
  if (s.agent) {
    json pods = json::array();
    for (const auto& p : s.pods) {
      json vips = json::array(), ips = json::array();
      for (const auto& v : p.vips) vips.push_back(v.str());
      for (const auto& v : p.podIps) ips.push_back(v.str());
      pods.push_back({{"netns", p.netns}, {"podIps", ips}, {"vips", vips},
                      {"decapDevice", p.decapDevice}, {"decapPresent", p.decapPresent}});
    }
    j["agent"] = {{"pods", pods}};
  }
  j["errors"] = s.errors;
  return j;
}

std::string toText(const NodeStatus& s) {
  std::string out;
  if (s.router) {
    if (!s.nftTable)
      out += s.datapath == "bpf" ? "router: no program of the daemon pinned (--datapath bpf)\n"
                                 : "router: no table of the daemon in this namespace\n";
    if (s.drained.value_or(false)) out += "router: drained (`undrain` announces the VIPs again)\n";
    out += fmt::format("{:<28} {:>7}  {:<28} {:>6} {:>6} {:>7}  {:<9} {}\n", "VIP", "BUCKETS",
                       "ENDPOINT", "MARK", "TABLE", "BUCKETS", "STATE", "ANNOUNCED");
    for (const auto& v : s.vips) {
      std::string vip = v.vip.str() + (v.inVipSet ? "" : " (not in set)");
      std::string ann = v.announced ? (*v.announced ? "yes" : "no") : "-";
      if (v.endpoints.empty())
        out += fmt::format("{:<28} {:>7}  {:<28} {:>6} {:>6} {:>7}  {:<9} {}\n", vip, v.buckets, "-",
                           "", "", "", "", ann);
      for (size_t i = 0; i < v.endpoints.size(); ++i) {
        const auto& e = v.endpoints[i];
        out += fmt::format("{:<28} {:>7}  {:<28} {:>6} {:>6} {:>7}  {:<9} {}\n", i ? "" : vip,
                           i ? "" : std::to_string(v.buckets), e.endpoint.str(), e.mark, e.table,
                           e.buckets, e.draining() ? "draining" : "serving", i ? "" : ann);
      }
      if (v.unassigned)
        out += fmt::format("{:<28} {:>7}  {} buckets without a routed slot (dropped)\n", "", "",
                           v.unassigned);
    }
  }
  if (s.agent) {
    if (s.router) out += "\n";
    out += fmt::format("{:<40} {:<28} {:<28} {}\n", "POD NETNS", "POD IP", "VIPS", "DECAP DEVICE");
    for (const auto& p : s.pods) {
      std::string ips, vips;
      for (const auto& a : p.podIps) ips += (ips.empty() ? "" : ",") + a.str();
      for (const auto& a : p.vips) vips += (vips.empty() ? "" : ",") + a.str();
      out += fmt::format("{:<40} {:<28} {:<28} {}\n", p.netns, ips.empty() ? "-" : ips,
                         vips.empty() ? "-" : vips,
                         p.decapDevice == "lo" ? std::string("lo (mpls)")
                                               : p.decapDevice + (p.decapPresent ? "" : " (missing)"));
    }
  }
  for (const auto& e : s.errors) out += "error: " + e + "\n";
  return out;
}

}  // namespace kst
