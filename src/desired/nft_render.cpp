#include "desired/nft_render.h"

#include <algorithm>
#include <iterator>

#include <fmt/format.h>

#include "hashing/balance.h"
#include "hashing/maglev.h"

namespace kst {

namespace {

constexpr uint32_t kFlowSeedA = 0x6b737431, kFlowSeedB = 0x6b737432;

std::string familyRules(const DataplaneConfig& cfg, bool v6) {
  const char* ip = v6 ? "ip6" : "ip";
  const char* n = v6 ? "6" : "4";
  std::string flowKey =
      v6 ? fmt::format("jhash ip6 saddr . ip6 daddr . th sport . th dport mod 4294967295 seed "
                       "{:#x} . jhash ip6 saddr . ip6 daddr . th sport . th dport mod 4294967295 "
                       "seed {:#x}",
                       kFlowSeedA, kFlowSeedB)
         : std::string("ip saddr . th sport . ip daddr . th dport");
  std::string l4 = "meta l4proto { tcp, udp, sctp }";
  std::string r;
  // Rules of the per-family chain, entered once per packet by the VIP set lookup in classify.
  auto line = [&](const std::string& s) { r += "    " + s + "\n"; };
  // Source ranges (loadBalancerSourceRanges), every packet and protocol, before the flow
  // table: a VIP in ranged accepts only sources in its src intervals; the others go to
  // refuse_source (counted per VIP and in total, dropped). One hash lookup for other VIPs.
  line(fmt::format("{ip} daddr @ranged{n} {ip} daddr . {ip} saddr != @src{n} goto refuse_source",
                   fmt::arg("ip", ip), fmt::arg("n", n)));
  // NOTE Performance: an established flow finds its slot mark in the flow table, checks that
  // the (VIP, slot) it is pinned to is still live, refreshes its entry and leaves, all in one
  // rule (a miss of either lookup ends the rule: NFT_BREAK). The other rules run for a flow's
  // first packet, and for every packet of a flow pinned to a released slot.
  // [flowtable] Lazy invalidation (docs/load-balancing.md "Released slots"): releasing a slot
  // is one live-set deletion, not a walk of the flow table; a stale pin is never refreshed.
  line(fmt::format("{l4} meta mark set {k} map @flow{n} {ip} daddr . meta mark @live{n} "
                   "update @flow{n} {{ {k} : meta mark }} accept",
                   fmt::arg("l4", l4), fmt::arg("k", flowKey), fmt::arg("n", n),
                   fmt::arg("ip", ip)));
  // New flow: the VIP's bucket count class, then the bucket from the fixed-seed hash mod that
  // count (whatever mark the packet carried before is overwritten, never taken for a slot).
  line(fmt::format("meta mark set {:#x}", kCountMarkBase));
  line(fmt::format("meta mark set {} daddr map @bcount{}", ip, n));
  for (uint32_t b = cfg.buckets, cap = vipBucketCap(cfg.buckets); b != 0 && b <= cap; b *= 2) {
    line(fmt::format("meta mark {:#x} {} meta mark set jhash {ip} saddr . {ip} daddr . th sport "
                     ". th dport mod {} seed {:#x} offset {:#x}",
                     kCountMarkBase | b, l4, b, cfg.hashSeed, kBucketMarkBase, fmt::arg("ip", ip)));
    line(fmt::format("meta mark {:#x} meta mark set jhash {ip} saddr . {ip} daddr mod {} seed "
                     "{:#x} offset {:#x}",
                     kCountMarkBase | b, b, cfg.hashSeed, kBucketMarkBase, fmt::arg("ip", ip)));
    if (b == cap) break;
  }
  line(fmt::format("meta mark set {} daddr . meta mark map @b2s{}", ip, n));
  // A bucket without an element (mark still base + bucket) is dropped, never routed by main.
  // Counted per VIP (refused set) and in total (named counter refused_no_bucket).
  line(fmt::format("meta mark >= {:#x} {} daddr @refused{}", kBucketMarkBase, ip, n));
  line(fmt::format("meta mark >= {:#x} counter name \"refused_no_bucket\" drop", kBucketMarkBase));
  // [flowtable] `add`, not `update`: a flow whose pin went stale keeps its old element (the
  // kernel neither replaces an element's data nor may a rule delete from a map), and `add`
  // leaves that element's timeout alone, so it expires --flow-timeout after the release at
  // the latest; the flow is hashed per packet until then and pinned afresh after. The
  // planner does not give a released slot of a VIP to another endpoint for that long.
  // New flows are counted here (named counter new_flows, both families): only a key the flow
  // table does not hold yet, and only once it is added (a full table ends the rule at the
  // `add`), so a stale pin's packets are not counted again. The extra lookup is on the
  // new-flow path only.
  // A kernel that refuses a lookup in a map without a data register (cfg.nftMapLookup false)
  // gets the rule without the check: a stale pin's packets are then counted too.
  line(fmt::format("{l4} {chk}add @flow{n} {{ {k} : meta mark }} counter name \"new_flows\"",
                   fmt::arg("l4", l4), fmt::arg("k", flowKey), fmt::arg("n", n),
                   fmt::arg("chk", cfg.nftMapLookup
                                       ? fmt::format("{} != @flow{} ", flowKey, n)
                                       : std::string())));
  return r;
}

}  // namespace

std::string renderSkeleton(const DataplaneConfig& cfg) {
  std::string flowOpts = fmt::format("flags dynamic,timeout; timeout {}s; size {};",
                                     cfg.flowTimeoutSeconds, cfg.flowTableSize);
  std::string body;
  // Counters (dataplane/counters.h), read by GETSETELEM dumps and a GETOBJ dump: per VIP the
  // VIP set's element counters (the lookup every VIP packet makes anyway), per VIP × endpoint
  // the ep elements' (key VIP . slot mark, comment the endpoint; looked up in chain unmark,
  // once per forwarded packet), refused per VIP the refused elements' (looked up on the drop
  // paths only), refused per reason two named counters, flows added to the flow tables one
  // (new_flows, in the rule that pins a new flow).
  body += "  counter refused_no_bucket { }\n";
  body += "  counter refused_source_range { }\n";
  body += "  counter new_flows { }\n";
  body += "  set vip4 { type ipv4_addr; counter; }\n";
  body += "  set vip6 { type ipv6_addr; counter; }\n";
  body += "  set refused4 { type ipv4_addr; counter; }\n";
  body += "  set refused6 { type ipv6_addr; counter; }\n";
  body += "  set ep4 { typeof ip daddr . meta mark; counter; }\n";
  body += "  set ep6 { typeof ip6 daddr . meta mark; counter; }\n";
  // Source ranges: the filtered VIPs, and their allowed (VIP . source interval) elements.
  body += "  set ranged4 { type ipv4_addr; }\n";
  body += "  set ranged6 { type ipv6_addr; }\n";
  body += "  set src4 { typeof ip daddr . ip saddr; flags interval; }\n";
  body += "  set src6 { typeof ip6 daddr . ip6 saddr; flags interval; }\n";
  body += "  map b2s4 { typeof ip daddr . meta mark : meta mark; }\n";
  body += "  map b2s6 { typeof ip6 daddr . meta mark : meta mark; }\n";
  body += "  map bcount4 { typeof ip daddr : meta mark; }\n";
  body += "  map bcount6 { typeof ip6 daddr : meta mark; }\n";
  // [flowtable] The (VIP, slot mark) pairs that hold an endpoint (draining ones too).
  body += "  set live4 { typeof ip daddr . meta mark; }\n";
  body += "  set live6 { typeof ip6 daddr . meta mark; }\n";
  body += fmt::format(
      "  map flow4 {{ typeof ip saddr . th sport . ip daddr . th dport : meta mark; {} }}\n",
      flowOpts);
  body += fmt::format(
      "  map flow6 {{ typeof numgen inc mod 2 . numgen inc mod 2 : meta mark; {} }}\n", flowOpts);
  // NOTE Performance: one VIP set lookup per packet and family (not one per rule): traffic
  // to other destinations leaves after it, VIP traffic runs the family chain.
  body += "  chain classify {\n";
  body += "    type filter hook prerouting priority mangle; policy accept;\n";
  body += "    ip daddr @vip4 jump classify4\n";
  body += "    ip6 daddr @vip6 jump classify6\n";
  body += "  }\n";
  // NOTE Performance: the slot mark has done its job once the packet is routed. Left on the
  // packet it disables the tunnel's route cache (ip_tunnel_dst_cache_usable() refuses marked
  // skbs), so vxlan/ipip/gre would look the outer route up through the policy rules for every
  // packet: ≈ 7 % of small-packet throughput in an A/B on this machine (docs/performance.md).
  // The per-endpoint counter is this chain's lookup (VIP . slot mark): what was forwarded
  // toward each endpoint. A packet whose slot has no element (none expected) still loses its
  // mark by the range test, which needs no lookup (the slot marks are the daemon's own).
  body += "  chain unmark {\n";
  body += "    type filter hook forward priority mangle; policy accept;\n";
  body += "    ip daddr . meta mark @ep4 meta mark set 0 accept\n";
  body += "    ip6 daddr . meta mark @ep6 meta mark set 0 accept\n";
  body += fmt::format("    meta mark >= {:#x} meta mark < {:#x} meta mark set 0\n", cfg.tableOffset,
                      cfg.tableOffset + cfg.maxSlots);
  body += "  }\n";
  body += "  chain refuse_source {\n";
  body += "    ip daddr @refused4\n";
  body += "    ip6 daddr @refused6\n";
  body += "    counter name \"refused_source_range\" drop\n";
  body += "  }\n";
  body += "  chain classify4 {\n" + familyRules(cfg, false) + "  }\n";
  body += "  chain classify6 {\n" + familyRules(cfg, true) + "  }\n";
  return body;
}

std::string skeletonId(const std::string& skeleton) {
  return fmt::format("{:016x}", stableHash(skeleton, 1));
}

namespace {

std::string elementKey(const std::pair<IpAddress, uint32_t>& k) {
  return fmt::format("{} . {:#x}", k.first.str(), kBucketMarkBase + k.second);
}

// Emits "add/delete element" commands in chunks so a single command line stays small.
void emit(std::string& out, const std::string& verb, const std::string& table,
          const std::string& set, const std::vector<std::string>& items) {
  constexpr size_t kChunk = 2048;
  for (size_t i = 0; i < items.size(); i += kChunk) {
    out += fmt::format("{} element inet {} {} {{ ", verb, table, set);
    for (size_t j = i; j < std::min(items.size(), i + kChunk); ++j) {
      if (j > i) out += ", ";
      out += items[j];
    }
    out += " }\n";
  }
}

/** Walks two maps keyed by VIP in order: fn(vip, desired value, base value, in desired, in
 *  base), with `none` for the side that lacks the VIP. */
template <typename V, typename Fn>
void mergeByVip(const std::map<IpAddress, V>& desired, const std::map<IpAddress, V>& base,
                const V& none, Fn&& fn) {
  auto d = desired.begin(), o = base.begin();
  while (d != desired.end() || o != base.end()) {
    const bool takeD = o == base.end() || (d != desired.end() && d->first <= o->first);
    const bool takeO = d == desired.end() || (o != base.end() && o->first <= d->first);
    fn(takeD ? d->first : o->first, takeD ? d->second : none, takeO ? o->second : none, takeD,
       takeO);
    if (takeD) ++d;
    if (takeO) ++o;
  }
}

}  // namespace

NftTableStep nftTableStep(const dp::NftState& desired, const dp::NftState& observed) {
  if (!desired.present) return observed.present ? NftTableStep::Delete : NftTableStep::Keep;
  if (!observed.present) return NftTableStep::Create;
  return observed.skeletonId == desired.skeletonId ? NftTableStep::Keep : NftTableStep::Rebuild;
}

std::string renderNftStep(const DataplaneConfig& cfg, NftTableStep step,
                          const std::string& skeletonId, const std::string& skeleton,
                          const dp::NftElementChanges& d) {
  if (step == NftTableStep::Delete) return renderNftDelete(cfg);
  std::string out;
  if (step == NftTableStep::Rebuild) out += fmt::format("delete table inet {}\n", cfg.nftTable);
  if (step == NftTableStep::Rebuild || step == NftTableStep::Create)
    out += fmt::format("table inet {} {{\n  comment \"kst:{}\"\n{}}}\n", cfg.nftTable, skeletonId,
                       skeleton);
  // Deletions first (a changed bucket is delete + add of the same key, atomic in one batch).
  std::vector<std::string> del4, del6, delv4, delv6, add4, add6, addv4, addv6;
  std::vector<std::string> dell4, dell6, addl4, addl6;
  auto liveKey = [](const dp::SlotMark& l) { return fmt::format("{} . {:#x}", l.vip.str(), l.mark); };
  for (auto& l : d.liveDeletes) (l.vip.isV4() ? dell4 : dell6).push_back(liveKey(l));
  for (auto& l : d.liveAdds) (l.vip.isV4() ? addl4 : addl6).push_back(liveKey(l));
  for (auto& b : d.bucketDeletes)
    (b.vip.isV4() ? del4 : del6).push_back(elementKey({b.vip, b.bucket}));
  for (auto& b : d.bucketAdds)
    (b.vip.isV4() ? add4 : add6).push_back(fmt::format("{} : {}", elementKey({b.vip, b.bucket}), b.mark));
  std::vector<std::string> delc4, delc6, addc4, addc6;
  for (auto& c : d.countDeletes) (c.vip.isV4() ? delc4 : delc6).push_back(c.vip.str());
  for (auto& c : d.countAdds)
    (c.vip.isV4() ? addc4 : addc6)
        .push_back(fmt::format("{} : {:#x}", c.vip.str(), kCountMarkBase | c.buckets));
  for (auto& v : d.vipDeletes) (v.isV4() ? delv4 : delv6).push_back(v.str());
  for (auto& v : d.vipAdds) (v.isV4() ? addv4 : addv6).push_back(v.str());
  std::vector<std::string> delEp4, delEp6, addEp4, addEp6, delR4, delR6, addR4, addR6, delS4,
      delS6, addS4, addS6;
  for (auto& e : d.endpointDeletes)
    (e.vip.isV4() ? delEp4 : delEp6).push_back(fmt::format("{} . {:#x}", e.vip.str(), e.mark));
  for (auto& e : d.endpointAdds)
    (e.vip.isV4() ? addEp4 : addEp6)
        .push_back(fmt::format("{} . {:#x} comment \"{}\"", e.vip.str(), e.mark, e.endpoint.str()));
  for (auto& v : d.rangedDeletes) (v.isV4() ? delR4 : delR6).push_back(v.str());
  for (auto& v : d.rangedAdds) (v.isV4() ? addR4 : addR6).push_back(v.str());
  auto range = [](const dp::NftElementChanges::SourceRange& r) {
    return fmt::format("{} . {}-{}", r.vip.str(), r.src.first.str(), r.src.last.str());
  };
  for (auto& r : d.rangeDeletes) (r.vip.isV4() ? delS4 : delS6).push_back(range(r));
  for (auto& r : d.rangeAdds) (r.vip.isV4() ? addS4 : addS6).push_back(range(r));
  // Order for hitlessness: a removed VIP leaves the set before its buckets go; a new VIP's
  // buckets exist before the VIP enters the set. (One transaction: the order matters to the
  // kernel's checks, not to packets.)
  emit(out, "delete", cfg.nftTable, "vip4", delv4);
  emit(out, "delete", cfg.nftTable, "vip6", delv6);
  emit(out, "delete", cfg.nftTable, "refused4", delv4);
  emit(out, "delete", cfg.nftTable, "refused6", delv6);
  emit(out, "delete", cfg.nftTable, "src4", delS4);
  emit(out, "delete", cfg.nftTable, "src6", delS6);
  emit(out, "delete", cfg.nftTable, "ranged4", delR4);
  emit(out, "delete", cfg.nftTable, "ranged6", delR6);
  emit(out, "delete", cfg.nftTable, "ep4", delEp4);
  emit(out, "delete", cfg.nftTable, "ep6", delEp6);
  emit(out, "delete", cfg.nftTable, "bcount4", delc4);
  emit(out, "delete", cfg.nftTable, "bcount6", delc6);
  emit(out, "delete", cfg.nftTable, "b2s4", del4);
  emit(out, "delete", cfg.nftTable, "b2s6", del6);
  // [flowtable] A released slot's live element goes with (after) its buckets, a new slot's is
  // added before any bucket points at it.
  emit(out, "delete", cfg.nftTable, "live4", dell4);
  emit(out, "delete", cfg.nftTable, "live6", dell6);
  emit(out, "add", cfg.nftTable, "live4", addl4);
  emit(out, "add", cfg.nftTable, "live6", addl6);
  emit(out, "add", cfg.nftTable, "b2s4", add4);
  emit(out, "add", cfg.nftTable, "b2s6", add6);
  emit(out, "add", cfg.nftTable, "bcount4", addc4);
  emit(out, "add", cfg.nftTable, "bcount6", addc6);
  emit(out, "add", cfg.nftTable, "ep4", addEp4);
  emit(out, "add", cfg.nftTable, "ep6", addEp6);
  emit(out, "add", cfg.nftTable, "ranged4", addR4);
  emit(out, "add", cfg.nftTable, "ranged6", addR6);
  emit(out, "add", cfg.nftTable, "src4", addS4);
  emit(out, "add", cfg.nftTable, "src6", addS6);
  emit(out, "add", cfg.nftTable, "refused4", addv4);
  emit(out, "add", cfg.nftTable, "refused6", addv6);
  emit(out, "add", cfg.nftTable, "vip4", addv4);
  emit(out, "add", cfg.nftTable, "vip6", addv6);
  return out;
}

std::string renderNftChanges(const DataplaneConfig& cfg, const dp::NftState& desired,
                             const dp::NftState& observed, size_t* elementChanges) {
  NftTableStep step = nftTableStep(desired, observed);
  if (!desired.present) {
    if (elementChanges) *elementChanges = 0;
    return step == NftTableStep::Delete ? renderNftDelete(cfg) : std::string();
  }
  const bool rebuild = step != NftTableStep::Keep;
  auto d = nftElementChanges(desired, rebuild ? dp::NftState{} : observed);
  if (elementChanges) *elementChanges = d.size();
  return renderNftStep(cfg, step, desired.skeletonId, desired.skeleton, d);
}

dp::NftElementChanges nftElementChanges(const dp::NftState& desired, const dp::NftState& base) {
  dp::NftElementChanges out;
  // Merge over the VIPs (both sorted), then over each VIP's bucket indices: the changes come
  // out in (VIP, bucket) order (640k elements at V = 10k, B = 64).
  if (base.buckets.empty()) out.bucketAdds.reserve(desired.buckets.size());  // cold start
  const auto& dv = desired.buckets.perVip();
  const auto& ov = base.buckets.perVip();
  auto addAll = [](std::vector<dp::NftElementChanges::Bucket>& to, const IpAddress& vip,
                   const std::vector<uint32_t>& marks) {
    for (uint32_t b = 0; b < marks.size(); ++b)
      if (marks[b]) to.push_back({vip, b, marks[b]});
  };
  auto d = dv.begin(), o = ov.begin();
  while (d != dv.end() || o != ov.end()) {
    if (o == ov.end() || (d != dv.end() && d->first < o->first)) {
      addAll(out.bucketAdds, d->first, d->second);
      ++d;
    } else if (d == dv.end() || o->first < d->first) {
      addAll(out.bucketDeletes, o->first, o->second);
      ++o;
    } else {
      const IpAddress& vip = d->first;
      const auto& dm = d->second;
      const auto& om = o->second;
      const size_t n = std::max(dm.size(), om.size());
      for (uint32_t b = 0; b < n; ++b) {
        uint32_t want = b < dm.size() ? dm[b] : 0, have = b < om.size() ? om[b] : 0;
        if (want == have) continue;
        if (have) out.bucketDeletes.push_back({vip, b, have});
        if (want) out.bucketAdds.push_back({vip, b, want});
      }
      ++d;
      ++o;
    }
  }
  // Per-endpoint counters: an element whose endpoint changed is deleted and added again (its
  // counter restarts with the endpoint it counts).
  static const std::map<uint32_t, IpAddress> kNoEndpoints;
  mergeByVip(desired.endpoints, base.endpoints, kNoEndpoints,
             [&](const IpAddress& vip, const auto& dm, const auto& om, bool, bool) {
               for (auto& [mark, ep] : om)
                 if (auto it = dm.find(mark); it == dm.end() || it->second != ep)
                   out.endpointDeletes.push_back({vip, mark, ep});
               for (auto& [mark, ep] : dm)
                 if (auto it = om.find(mark); it == om.end() || it->second != ep)
                   out.endpointAdds.push_back({vip, mark, ep});
             });
  // Source ranges: the filtered VIPs, then their intervals (set differences per VIP).
  static const std::vector<dp::SourceInterval> kNoIntervals;
  mergeByVip(desired.sourceRanges, base.sourceRanges, kNoIntervals,
             [&](const IpAddress& vip, const auto& dv, const auto& ov, bool inD, bool inO) {
               if (inD && !inO) out.rangedAdds.push_back(vip);
               if (inO && !inD) out.rangedDeletes.push_back(vip);
               std::vector<dp::SourceInterval> gone, fresh;
               std::set_difference(ov.begin(), ov.end(), dv.begin(), dv.end(),
                                   std::back_inserter(gone));
               std::set_difference(dv.begin(), dv.end(), ov.begin(), ov.end(),
                                   std::back_inserter(fresh));
               for (auto& iv : gone) out.rangeDeletes.push_back({vip, iv});
               for (auto& iv : fresh) out.rangeAdds.push_back({vip, iv});
             });
  // Bucket counts: a changed count is a deletion plus an addition of the VIP's element.
  auto dc = desired.vipBuckets.begin(), oc = base.vipBuckets.begin();
  while (dc != desired.vipBuckets.end() || oc != base.vipBuckets.end()) {
    if (oc == base.vipBuckets.end() || (dc != desired.vipBuckets.end() && dc->first < oc->first)) {
      out.countAdds.push_back({dc->first, dc->second});
      ++dc;
    } else if (dc == desired.vipBuckets.end() || oc->first < dc->first) {
      out.countDeletes.push_back({oc->first, oc->second});
      ++oc;
    } else {
      if (dc->second != oc->second) {
        out.countDeletes.push_back({oc->first, oc->second});
        out.countAdds.push_back({dc->first, dc->second});
      }
      ++dc;
      ++oc;
    }
  }
  std::set_difference(base.live.begin(), base.live.end(), desired.live.begin(), desired.live.end(),
                      std::back_inserter(out.liveDeletes));
  std::set_difference(desired.live.begin(), desired.live.end(), base.live.begin(), base.live.end(),
                      std::back_inserter(out.liveAdds));
  std::set_difference(base.vips.begin(), base.vips.end(), desired.vips.begin(), desired.vips.end(),
                      std::back_inserter(out.vipDeletes));
  std::set_difference(desired.vips.begin(), desired.vips.end(), base.vips.begin(), base.vips.end(),
                      std::back_inserter(out.vipAdds));
  return out;
}

std::string renderNftDelete(const DataplaneConfig& cfg) {
  return fmt::format("delete table inet {}\n", cfg.nftTable);
}

}  // namespace kst
