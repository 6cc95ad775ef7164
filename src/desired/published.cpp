#include "desired/published.h"

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

bool parseRanges(const std::string& s, std::vector<uint32_t>& out) {
  size_t i = 0;
  while (i < s.size()) {
    size_t comma = s.find(',', i);
    std::string part = s.substr(i, comma == std::string::npos ? std::string::npos : comma - i);
    auto dash = part.find('-');
    try {
      uint32_t a = std::stoul(part.substr(0, dash));
      uint32_t b = dash == std::string::npos ? a : std::stoul(part.substr(dash + 1));
      if (b < a || b - a > (1u << 22)) return false;
      for (uint32_t x = a; x <= b; ++x) out.push_back(x);
    } catch (...) {
      return false;
    }
    if (comma == std::string::npos) break;
    i = comma + 1;
  }
  return true;
}

}  // namespace

std::string encodePublished(const VipPlan& plan, const DataplaneConfig& cfg) {
  std::vector<std::vector<uint32_t>> of(plan.endpoints.size());
  for (uint32_t b = 0; b < plan.buckets.size(); ++b)
    if (plan.buckets[b] >= 0) of[plan.buckets[b]].push_back(b);
  nlohmann::ordered_json j;
  j["v"] = 1;
  j["buckets"] = cfg.buckets;
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

std::optional<PublishedTable> decodePublished(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.value("v", 0) != 1) return std::nullopt;
  PublishedTable t;
  if (!j.contains("buckets") || !j["buckets"].is_number_unsigned()) return std::nullopt;
  t.buckets = j["buckets"].get<uint32_t>();
  t.seed = j.value("seed", 0u);
  if (t.buckets == 0 || t.buckets > (1u << 22) || !j.contains("endpoints") ||
      !j["endpoints"].is_array())
    return std::nullopt;
  t.table.assign(t.buckets, -1);
  for (const auto& e : j["endpoints"]) {
    if (!e.is_object() || !e.contains("ip") || !e["ip"].is_string() || !e.contains("slot") ||
        !e["slot"].is_number_unsigned())
      return std::nullopt;
    auto ip = IpAddress::parse(e["ip"].get<std::string>());
    if (!ip) return std::nullopt;
    int32_t idx = static_cast<int32_t>(t.endpoints.size());
    t.endpoints.push_back({*ip, e["slot"].get<uint32_t>(), e.value("draining", false)});
    std::vector<uint32_t> bs;
    if (!parseRanges(e.value("buckets", std::string()), bs)) return std::nullopt;
    for (uint32_t b : bs) {
      if (b >= t.buckets || t.table[b] != -1) return std::nullopt;
      t.table[b] = idx;
    }
  }
  return t;
}

}  // namespace kst
