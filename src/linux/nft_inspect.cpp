#include "linux/nft_inspect.h"

#include <libmnl/libmnl.h>
#include <linux/netfilter/nf_tables.h>
#include <nftables/libnftables.h>
#include <poll.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>

#include <nlohmann/json.hpp>

#include "linux/nft_codec.h"

namespace kst {

namespace {

using json = nlohmann::json;

/** "ip saddr", "th dport", … for a payload expression; "" for anything else. */
std::string fieldName(const json& e) {
  if (!e.is_object() || !e.contains("payload")) return "";
  const json& p = e["payload"];
  if (!p.is_object() || !p.contains("protocol") || !p.contains("field")) return "";
  if (!p["protocol"].is_string() || !p["field"].is_string()) return "";
  return p["protocol"].get<std::string>() + " " + p["field"].get<std::string>();
}

/** A JSON number as the 32-bit value nft meant (nft prints a u32 above INT32_MAX as a
 *  negative number: `mod 4294967295` is -1). */
std::optional<uint32_t> u32(const json& v) {
  if (v.is_number_unsigned()) {
    auto n = v.get<uint64_t>();
    if (n > 0xffffffffu) return std::nullopt;
    return uint32_t(n);
  }
  if (v.is_number_integer()) {
    auto n = v.get<int64_t>();
    if (n < INT32_MIN || n > int64_t(0xffffffffu)) return std::nullopt;
    return uint32_t(n);
  }
  return std::nullopt;
}

/** A {"jhash": {...}} object, else nullopt (also when a part is not what nft writes). */
std::optional<dp::JhashExpr> jhashOf(const json& e) {
  if (!e.is_object() || !e.contains("jhash") || !e["jhash"].is_object()) return std::nullopt;
  const json& j = e["jhash"];
  dp::JhashExpr h;
  if (!j.contains("mod") || !j.contains("expr")) return std::nullopt;
  auto mod = u32(j["mod"]);
  if (!mod) return std::nullopt;
  h.mod = *mod;
  if (j.contains("seed")) {
    auto s = u32(j["seed"]);
    if (!s) return std::nullopt;
    h.seed = *s;
  }
  if (j.contains("offset")) {
    auto o = u32(j["offset"]);
    if (!o) return std::nullopt;
    h.offset = *o;
  }
  const json& x = j["expr"];
  if (x.is_object() && x.contains("concat") && x["concat"].is_array()) {
    for (const auto& f : x["concat"]) h.fields.push_back(fieldName(f));
  } else {
    h.fields.push_back(fieldName(x));
  }
  return h;
}

/** `meta l4proto { tcp, udp, sctp }` (==) or its negation, from a match statement. */
std::optional<dp::BucketHashRule::Protocols> protocolMatch(const json& m) {
  if (!m.is_object() || !m.contains("left") || !m.contains("right") || !m.contains("op"))
    return std::nullopt;
  const json& l = m["left"];
  if (!l.is_object() || !l.contains("meta") || !l["meta"].is_object() ||
      l["meta"].value("key", "") != "l4proto")
    return std::nullopt;
  if (!m["op"].is_string()) return std::nullopt;
  const std::string op = m["op"].get<std::string>();
  if (op == "==" || op == "in") return dp::BucketHashRule::Protocols::WithPorts;
  if (op == "!=") return dp::BucketHashRule::Protocols::WithoutPorts;
  return std::nullopt;
}

}  // namespace

Result<dp::ClassifierHashes> parseClassifierJson(std::string_view text) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("nftables") ||
      !doc["nftables"].is_array())
    return fail(EINVAL, "not an nft JSON listing");
  dp::ClassifierHashes out;
  for (const auto& item : doc["nftables"]) {
    if (!item.is_object() || !item.contains("rule") || !item["rule"].is_object()) continue;
    const json& rule = item["rule"];
    if (!rule.contains("expr") || !rule["expr"].is_array()) continue;
    auto protocols = dp::BucketHashRule::Protocols::Any;
    for (const auto& st : rule["expr"]) {
      if (!st.is_object()) continue;
      if (st.contains("match")) {
        if (auto p = protocolMatch(st["match"])) protocols = *p;
        continue;
      }
      if (!st.contains("mangle") || !st["mangle"].is_object()) continue;
      const json& mg = st["mangle"];
      if (!mg.contains("value")) continue;
      const json& v = mg["value"];
      if (auto h = jhashOf(v)) {  // meta mark set jhash …
        out.buckets.push_back({protocols, *h});
        continue;
      }
      // meta mark set <key> map @flowN: the flow key (plain fields or hashes of them).
      if (!v.is_object() || !v.contains("map") || !v["map"].is_object()) continue;
      const json& m = v["map"];
      if (!m.contains("key") || !m["key"].is_object() || !m["key"].contains("concat") ||
          !m["key"]["concat"].is_array())
        continue;
      std::vector<dp::ClassifierHashes::KeyPart> key;
      for (const auto& part : m["key"]["concat"]) {
        dp::ClassifierHashes::KeyPart k;
        if (auto h = jhashOf(part)) k.hash = *h;
        else k.field = fieldName(part);
        if (!k.hash && k.field.empty()) {  // neither: not a key explain can build
          key.clear();
          break;
        }
        key.push_back(std::move(k));
      }
      if (!key.empty()) out.flowKey = std::move(key);
    }
  }
  return out;
}

NftInspectorImpl::NftInspectorImpl(const DataplaneConfig& cfg)
    : cfg_(cfg), ctx_(nft_ctx_new(NFT_CTX_DEFAULT)) {
  nft_ctx_buffer_output(ctx_);
  nft_ctx_buffer_error(ctx_);
  nft_ctx_output_set_flags(ctx_, NFT_CTX_OUTPUT_JSON);
}

NftInspectorImpl::~NftInspectorImpl() { nft_ctx_free(ctx_); }

Result<dp::ClassifierHashes> NftInspectorImpl::classifier(Family family) {
  std::string cmd = "list chain inet " + cfg_.nftTable + (family == Family::V4 ? " classify4" : " classify6");
  if (nft_run_cmd_from_buffer(ctx_, cmd.c_str()) != 0) {
    std::string err = nft_ctx_get_error_buffer(ctx_);
    return fail(ENOENT, "nft " + cmd + ": " + (err.empty() ? "failed" : err));
  }
  return parseClassifierJson(nft_ctx_get_output_buffer(ctx_));
}

Result<std::optional<uint32_t>> NftInspectorImpl::flowMark(Family family,
                                                           std::span<const uint8_t> key) {
  if (key.size() > 20) return fail(EINVAL, "flow key longer than 20 bytes");
  std::unique_ptr<mnl_socket, int (*)(mnl_socket*)> sock(mnl_socket_open(NETLINK_NETFILTER),
                                                         mnl_socket_close);
  if (!sock) return sysFail(errno, "nfnetlink socket");
  if (mnl_socket_bind(sock.get(), 0, MNL_SOCKET_AUTOPID) < 0) return sysFail(errno, "nfnetlink bind");
  const auto seq = uint32_t(time(nullptr));
  const std::string_view map = family == Family::V4 ? "flow4" : "flow6";
  auto req = nft::getElementsRequest(
      cfg_.nftTable, map, 1,
      [&](size_t, uint8_t (&out)[20]) {
        std::memcpy(out, key.data(), key.size());
        return key.size();
      },
      seq);
  if (mnl_socket_sendto(sock.get(), req.data(), req.size()) < 0) return sysFail(errno, "nfnetlink send");
  std::vector<uint8_t> buf(MNL_SOCKET_BUFFER_SIZE);
  std::optional<uint32_t> mark;
  while (true) {
    pollfd p{mnl_socket_get_fd(sock.get()), POLLIN, 0};
    int pr = poll(&p, 1, 5000);
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) return fail(ETIMEDOUT, "nfnetlink: no answer to a flow lookup");
    ssize_t n = mnl_socket_recvfrom(sock.get(), buf.data(), buf.size());
    if (n < 0) return sysFail(errno, "nfnetlink receive");
    auto msgs = nft::split(std::span<const uint8_t>(buf.data(), size_t(n)));
    if (!msgs) return fail(EBADMSG, "nfnetlink: malformed answer");
    for (const nlmsghdr* m : *msgs) {
      if (m->nlmsg_seq != seq) continue;
      nft::Reply r = nft::classify(m);
      switch (r.kind) {
        case nft::Reply::Done:
        case nft::Reply::Ack: return mark;
        case nft::Reply::Error:
          if (r.error == ENOENT) return std::optional<uint32_t>();  // no such element (or map)
          return fail(r.error, std::string("flow lookup in ") + std::string(map) + ": " +
                                   std::strerror(r.error));
        case nft::Reply::Data:
          nft::forEachElement(m, [&](const nft::Element& e) {
            if (e.data.size() == 4) {
              uint32_t v;
              std::memcpy(&v, e.data.data(), 4);
              mark = v;
            }
          });
          break;
      }
    }
  }
}

}  // namespace kst
