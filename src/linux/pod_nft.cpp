// The pod-side nft table that makes UDP replies leave from the VIP (see NetnsProvider).
// Requests through the decap link are not tracked: otherwise the NATed reply's tuple would
// clash with the request's conntrack entry and nf_nat would pick another source port.
#include <nftables/libnftables.h>

#include <fmt/format.h>

#include "linux/netns.h"
#include "linux/netns_provider.h"

namespace kst {

namespace {

constexpr const char* kPodTable = "kube_service_tunnel_pod";

// nft 1.0.6 cannot update dynamic maps with keys or data wider than 16 bytes (see
// nft_render.h), so the IPv6 peer key is the client address alone (a client talking UDP to two
// IPv6 VIPs of the same pod gets its replies from the VIP it wrote to last) and the source port
// is kept explicitly (": udp sport"); without a port, nf_nat may pick a random one.
std::string podScript(const std::string& link) {
  return fmt::format(R"(table inet {0} {{
  comment "kst-pod:{1}"
  map peers4 {{ typeof ip saddr . udp sport : ip daddr . udp dport; flags dynamic,timeout; timeout 120s; size 65536; }}
  map peers6 {{ typeof ip6 saddr : ip6 daddr; flags dynamic,timeout; timeout 120s; size 65536; }}
  chain learn {{
    type filter hook prerouting priority raw; policy accept;
    iifname "{1}" meta nfproto ipv4 meta l4proto udp update @peers4 {{ ip saddr . udp sport : ip daddr . udp dport }}
    iifname "{1}" meta nfproto ipv6 meta l4proto udp update @peers6 {{ ip6 saddr : ip6 daddr }}
    iifname "{1}" meta l4proto udp notrack
  }}
  chain answer {{
    type nat hook postrouting priority srcnat; policy accept;
    meta nfproto ipv4 meta l4proto udp snat ip to ip daddr . udp dport map @peers4
    meta nfproto ipv6 meta l4proto udp snat ip6 to ip6 daddr map @peers6 : udp sport
  }}
}}
)",
                     kPodTable, link);
}

Status runNft(const std::string& cmd, std::string* out = nullptr) {
  nft_ctx* ctx = nft_ctx_new(NFT_CTX_DEFAULT);
  nft_ctx_buffer_output(ctx);
  nft_ctx_buffer_error(ctx);
  int rc = nft_run_cmd_from_buffer(ctx, cmd.c_str());
  std::string err = nft_ctx_get_error_buffer(ctx);
  if (out) *out = nft_ctx_get_output_buffer(ctx);
  nft_ctx_free(ctx);
  if (rc != 0) return fail(EINVAL, "nft: " + err);
  return {};
}

}  // namespace

Status NetnsProviderImpl::udpReplyFix(const Ns& ns, const std::string& decapLink, bool enabled) {
  auto it = udpFixed_.find(ns.id);
  if (enabled && it != udpFixed_.end() && it->second == decapLink) return {};
  auto st = runInNetns(ns.path, [&]() -> Status {
    std::string listing;
    bool present = static_cast<bool>(runNft(fmt::format("list table inet {}", kPodTable), &listing));
    bool current = present && listing.find("\"kst-pod:" + decapLink + "\"") != std::string::npos;
    if (enabled && current) return {};
    std::string script;
    if (present) script += fmt::format("delete table inet {}\n", kPodTable);
    if (enabled) script += podScript(decapLink);
    if (script.empty()) return {};
    return runNft(script);
  });
  if (!st) return st;
  if (enabled) udpFixed_[ns.id] = decapLink;
  else udpFixed_.erase(ns.id);
  return {};
}

}  // namespace kst
