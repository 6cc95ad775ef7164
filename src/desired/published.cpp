#include "desired/published.h"

#include <string_view>

#include <nlohmann/json.hpp>

#include <fmt/format.h>

namespace kst {

namespace {

std::string ranges(const std::vector<uint32_t>& sorted) {
  std::string out;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j + 1 < sorted.size() && sorted[j + 1] == sorted[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += j == i ? fmt::format("{}", sorted[i]) : fmt::format("{}-{}", sorted[i], sorted[j]);
    i = j + 1;
  }
  return out;
}

/** Parses "0-3,17" into the buckets it names, each < limit. Bounds before expanding: a range
 *  reaching past the table, or more buckets than the table has, is rejected without building
 *  anything (a short hostile string cannot make this allocate or loop beyond `limit`). */
bool parseRanges(std::string_view s, uint32_t limit, std::vector<uint32_t>& out) {
  auto number = [](std::string_view t, uint32_t& v) {
    if (t.empty() || t.size() > 10) return false;
    uint64_t x = 0;
    for (char c : t) {
      if (c < '0' || c > '9') return false;
      x = x * 10 + uint64_t(c - '0');
    }
    if (x > UINT32_MAX) return false;
    v = uint32_t(x);
    return true;
  };
  size_t total = 0;
  while (!s.empty()) {
    size_t comma = s.find(',');
    std::string_view part = s.substr(0, comma);
    s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
    if (comma != std::string_view::npos && s.empty()) return false;  // trailing comma
    auto dash = part.find('-');
    uint32_t a = 0, b = 0;
    if (!number(part.substr(0, dash), a)) return false;
    if (dash == std::string_view::npos) b = a;
    else if (!number(part.substr(dash + 1), b)) return false;
    if (b < a || b >= limit) return false;
    total += size_t(b - a) + 1;
    if (total > limit) return false;  // more buckets than the table: some twice
    for (uint32_t x = a; x <= b; ++x) out.push_back(x);
  }
  return true;
}

}  // namespace

std::string publishedConfigMapName(const std::string& ns, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : ns + "/" + name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return fmt::format("kst-buckets-{:016x}", h);
}

std::string encodePublished(const VipPlan& plan, const DataplaneConfig& cfg) {
  std::vector<std::vector<uint32_t>> of(plan.endpoints.size());
  for (uint32_t b = 0; b < plan.buckets.size(); ++b)
    if (plan.buckets[b] >= 0) of[plan.buckets[b]].push_back(b);
  nlohmann::ordered_json j;
  j["v"] = 1;
  j["buckets"] = static_cast<uint32_t>(plan.buckets.size());  // this VIP's bucket count
  j["seed"] = cfg.hashSeed;
  j["endpoints"] = nlohmann::ordered_json::array();
  for (size_t i = 0; i < plan.endpoints.size(); ++i) {
    nlohmann::ordered_json e;
    e["ip"] = plan.endpoints[i].ip.str();
    e["slot"] = plan.slots[i];
    if (plan.endpoints[i].draining) e["draining"] = true;
    e["buckets"] = ranges(of[i]);
    j["endpoints"].push_back(e);
  }
  return j.dump();
}

std::optional<PublishedTable> decodePublished(std::string_view text) {
  // Written by the elected router, but read as untrusted: whoever can write where it is stored
  // must not be able to crash or stall a router (every field's type is checked; nothing is
  // expanded before it is bounded by the bucket count).
  if (text.size() > kMaxPublishedBytes) return std::nullopt;
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  auto field = [&](const nlohmann::json& o, const char* key) -> const nlohmann::json* {
    auto it = o.find(key);
    return it == o.end() ? nullptr : &*it;
  };
  auto u32 = [](const nlohmann::json* v, uint32_t& out) {
    if (!v || !v->is_number_unsigned()) return false;
    auto x = v->get<uint64_t>();
    if (x > UINT32_MAX) return false;
    out = uint32_t(x);
    return true;
  };
  uint32_t version = 0;
  if (!u32(field(j, "v"), version) || version != 1) return std::nullopt;
  PublishedTable t;
  if (!u32(field(j, "buckets"), t.buckets) || t.buckets == 0 || t.buckets > kMaxPublishedBuckets)
    return std::nullopt;
  if (auto* seed = field(j, "seed"); seed && !u32(seed, t.seed)) return std::nullopt;
  auto* eps = field(j, "endpoints");
  if (!eps || !eps->is_array() || eps->size() > t.buckets + kMaxPublishedDraining)
    return std::nullopt;
  t.table.assign(t.buckets, -1);
  std::vector<uint32_t> bs;
  for (const auto& e : *eps) {
    if (!e.is_object()) return std::nullopt;
    auto* ipv = field(e, "ip");
    uint32_t slot = 0;
    if (!ipv || !ipv->is_string() || !u32(field(e, "slot"), slot)) return std::nullopt;
    auto ip = IpAddress::parse(ipv->get_ref<const std::string&>());
    if (!ip) return std::nullopt;
    bool draining = false;
    if (auto* d = field(e, "draining")) {
      if (!d->is_boolean()) return std::nullopt;
      draining = d->get<bool>();
    }
    std::string_view ranges;
    if (auto* r = field(e, "buckets")) {
      if (!r->is_string()) return std::nullopt;
      ranges = r->get_ref<const std::string&>();
    }
    int32_t idx = static_cast<int32_t>(t.endpoints.size());
    t.endpoints.push_back({*ip, slot, draining});
    bs.clear();
    if (!parseRanges(ranges, t.buckets, bs)) return std::nullopt;
    for (uint32_t b : bs) {
      if (t.table[b] != -1) return std::nullopt;
      t.table[b] = idx;
    }
  }
  return t;
}

}  // namespace kst
