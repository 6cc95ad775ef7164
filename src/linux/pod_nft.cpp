// Requests through the decap link are not tracked: otherwise the NATed reply's tuple would
// clash with the request's conntrack entry and nf_nat would pick another source port.
#include "linux/pod_nft.h"

#include <nftables/libnftables.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "desired/agent.h"
#include "linux/netns.h"

namespace kst {

namespace {

Status runNft(const std::string& cmd, std::string* out = nullptr, unsigned flags = 0) {
  nft_ctx* ctx = nft_ctx_new(NFT_CTX_DEFAULT);
  nft_ctx_output_set_flags(ctx, flags);
  nft_ctx_buffer_output(ctx);
  nft_ctx_buffer_error(ctx);
  int rc = nft_run_cmd_from_buffer(ctx, cmd.c_str());
  std::string err = nft_ctx_get_error_buffer(ctx);
  if (out) *out = nft_ctx_get_output_buffer(ctx);
  nft_ctx_free(ctx);
  if (rc != 0) return fail(EINVAL, "nft: " + err);
  return {};
}

/** Elements of an address set of the pod table (absent set: none). */
void readVipSet(const char* set, std::set<IpAddress>& out) {
  std::string json;
  if (!runNft(fmt::format("list set inet {} {}", kPodTableName, set), &json, NFT_CTX_OUTPUT_JSON))
    return;
  auto doc = nlohmann::json::parse(json, nullptr, false);
  if (!doc.is_object() || !doc.contains("nftables")) return;
  for (auto& item : doc["nftables"]) {
    if (!item.contains("set") || !item["set"].contains("elem")) continue;
    for (auto& e : item["set"]["elem"])
      if (e.is_string())
        if (auto ip = IpAddress::parse(e.get<std::string>())) out.insert(*ip);
  }
}

/** The table as it is: present, comment (terse text listing: JSON omits it), VIP sets. */
ObservedPodTable observe() {
  ObservedPodTable have;
  std::string listing;
  // Terse: the learned UDP peers (up to 2 × 65536 elements) are not listed.
  have.present = static_cast<bool>(runNft(fmt::format("list table inet {}", kPodTableName),
                                          &listing, NFT_CTX_OUTPUT_TERSE));
  if (!have.present) return have;
  auto c = listing.find("comment \"");
  if (c != std::string::npos) {
    auto start = c + 9, end = listing.find('"', start);
    if (end != std::string::npos) have.comment = listing.substr(start, end - start);
  }
  readVipSet("vips4", have.vips);
  readVipSet("vips6", have.vips);
  return have;
}

}  // namespace

Status PodNftTables::apply(const std::string& nsId, int nsFd, const dp::PodTable* want) {
  auto it = installed_.find(nsId);
  if (want && it != installed_.end() && it->second == *want) return {};
  auto st = runInNetns(nsFd, [&]() -> Status {
    std::string script = podTableScript(want, observe());
    if (script.empty()) return {};
    return runNft(script);
  });
  if (!st) {
    installed_.erase(nsId);  // unknown state: observe again next time
    return st;
  }
  if (want) installed_[nsId] = *want;
  else installed_.erase(nsId);
  return {};
}

}  // namespace kst
