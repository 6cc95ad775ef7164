#include "linux/nft_client.h"

#include <nftables/libnftables.h>

#include <nlohmann/json.hpp>

#include "desired/nft_render.h"

namespace kst {

NftClientImpl::NftClientImpl(const DataplaneConfig& cfg) : cfg_(cfg), ctx_(nft_ctx_new(NFT_CTX_DEFAULT)) {
  nft_ctx_buffer_output(ctx_);
  nft_ctx_buffer_error(ctx_);
}

NftClientImpl::~NftClientImpl() { nft_ctx_free(ctx_); }

Result<std::string> NftClientImpl::command(const std::string& cmd, bool json, bool terse) {
  unsigned flags = 0;
  if (json) flags |= NFT_CTX_OUTPUT_JSON;
  if (terse) flags |= NFT_CTX_OUTPUT_TERSE;
  nft_ctx_output_set_flags(ctx_, flags);
  int rc = nft_run_cmd_from_buffer(ctx_, cmd.c_str());
  std::string out = nft_ctx_get_output_buffer(ctx_);
  std::string err = nft_ctx_get_error_buffer(ctx_);
  if (rc != 0) return fail(EINVAL, "nft: " + (err.empty() ? cmd : err));
  return out;
}

Status NftClientImpl::run(const std::string& script) {
  auto r = command(script, false, false);
  if (!r) return std::unexpected(r.error());
  return {};
}

std::string parseSkeletonId(const std::string& text) {
  auto pos = text.find("comment \"kst:");
  if (pos == std::string::npos) return {};
  pos += 13;
  auto end = text.find('"', pos);
  return end == std::string::npos ? std::string() : text.substr(pos, end - pos);
}

Status parseNftElements(const std::string& json, dp::NftState& out) {
  nlohmann::json doc = nlohmann::json::parse(json, nullptr, false);
  if (doc.is_discarded() || !doc.contains("nftables")) return fail("nft: unparsable JSON listing");
  for (const auto& item : doc["nftables"]) {
    const nlohmann::json* obj = nullptr;
    if (item.contains("set")) obj = &item["set"];
    if (item.contains("map")) obj = &item["map"];
    if (!obj || !obj->contains("elem")) continue;
    std::string name = (*obj)["name"].get<std::string>();
    for (const auto& e : (*obj)["elem"]) {
      if (name == "vip4" || name == "vip6") {
        const auto& v = e.is_object() && e.contains("elem") ? e["elem"]["val"] : e;
        if (!v.is_string()) continue;
        if (auto ip = IpAddress::parse(v.get<std::string>())) out.vips.insert(*ip);
      } else if (name == "b2s4" || name == "b2s6") {
        if (!e.is_array() || e.size() != 2) continue;
        const auto& key = e[0];
        if (!key.contains("concat") || key["concat"].size() != 2) continue;
        auto ip = IpAddress::parse(key["concat"][0].get<std::string>());
        if (!ip || !key["concat"][1].is_number() || !e[1].is_number()) continue;
        uint32_t b = key["concat"][1].get<uint32_t>() - kBucketMarkBase;
        out.buckets[{*ip, b}] = e[1].get<uint32_t>();
      }
    }
  }
  return {};
}

Result<dp::NftState> NftClientImpl::observe() {
  dp::NftState st;
  auto tables = command("list tables inet", true, false);
  if (!tables) return std::unexpected(tables.error());
  auto doc = nlohmann::json::parse(*tables, nullptr, false);
  bool found = false;
  if (!doc.is_discarded() && doc.contains("nftables"))
    for (auto& i : doc["nftables"])
      if (i.contains("table") && i["table"]["name"] == cfg_.nftTable) found = true;
  if (!found) return st;
  st.present = true;
  auto terse = command("list table inet " + cfg_.nftTable, false, true);
  if (!terse) return std::unexpected(terse.error());
  st.skeletonId = parseSkeletonId(*terse);
  for (const char* s : {"set inet %s vip4", "set inet %s vip6", "map inet %s b2s4", "map inet %s b2s6"}) {
    std::string cmd = "list " + std::string(s);
    cmd.replace(cmd.find("%s"), 2, cfg_.nftTable);
    auto j = command(cmd, true, false);
    if (!j) return std::unexpected(j.error());
    if (auto ok = parseNftElements(*j, st); !ok) return std::unexpected(ok.error());
  }
  return st;
}

}  // namespace kst
