#include "linux/nft_client.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <nftables/libnftables.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <set>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "desired/nft_render.h"

namespace kst {

NftClientImpl::NftClientImpl(const DataplaneConfig& cfg) : cfg_(cfg), ctx_(nft_ctx_new(NFT_CTX_DEFAULT)) {
  nft_ctx_buffer_output(ctx_);
  nft_ctx_buffer_error(ctx_);
}

NftClientImpl::~NftClientImpl() {
  nft_ctx_free(ctx_);
  if (fd_ >= 0) close(fd_);
}

Result<std::string> NftClientImpl::command(const std::string& cmd, bool json, bool terse) {
  unsigned flags = 0;
  if (json) flags |= NFT_CTX_OUTPUT_JSON;
  if (terse) flags |= NFT_CTX_OUTPUT_TERSE;
  nft_ctx_output_set_flags(ctx_, flags);
  ++sent_;
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

namespace {

// An observed b2s element: key mark kBucketMarkBase + bucket, data = the slot's mark. Data 0 is
// not a mark the daemon writes: it is kept as kForeignZeroMark so that the diff replaces it
// (a BucketMap holds 0 as "no element"). Keys outside the dense bucket range (only a foreign
// writer makes them; the classifier never looks them up) are not representable and skipped.
void observeBucket(dp::BucketMap& buckets, const IpAddress& ip, uint32_t keyMark, uint32_t data,
                   bool replace) {
  if (keyMark < kBucketMarkBase || keyMark - kBucketMarkBase >= dp::BucketMap::kMaxBuckets) {
    spdlog::debug("nft: ignoring bucket map element {} . {:#x} (outside the bucket range)",
                  ip.str(), keyMark);
    return;
  }
  uint32_t mark = data == 0 ? dp::BucketMap::kForeignZeroMark : data;
  if (replace) buckets.set(ip, keyMark - kBucketMarkBase, mark);
  else buckets.insert(ip, keyMark - kBucketMarkBase, mark);
}

}  // namespace

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
        observeBucket(out.buckets, *ip, key["concat"][1].get<uint32_t>(), e[1].get<uint32_t>(),
                      true);
      }
    }
  }
  return {};
}

Result<dp::NftState> NftClientImpl::observe() {
  auto raw = observeRaw();
  if (raw) return raw;
  spdlog::debug("nft: nfnetlink listing failed ({}), using libnftables", raw.error().message);
  return observeText();
}

Result<dp::NftState> NftClientImpl::observeText() {
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

// ---- nfnetlink ----

namespace {

constexpr size_t kRx = 1 << 20;

void putHeader(std::vector<uint8_t>& buf, uint16_t type, uint16_t flags, uint8_t family,
               uint16_t resId, uint32_t seq) {
  size_t off = buf.size();
  buf.resize(off + MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(nfgenmsg)));
  auto* h = reinterpret_cast<nlmsghdr*>(buf.data() + off);
  h->nlmsg_len = static_cast<uint32_t>(buf.size() - off);
  h->nlmsg_type = type;
  h->nlmsg_flags = NLM_F_REQUEST | flags;
  h->nlmsg_seq = seq;
  auto* g = reinterpret_cast<nfgenmsg*>(buf.data() + off + MNL_ALIGN(sizeof(nlmsghdr)));
  g->nfgen_family = family;
  g->version = NFNETLINK_V0;
  g->res_id = htons(resId);
}

uint16_t nftMsg(int type) { return static_cast<uint16_t>((NFNL_SUBSYS_NFTABLES << 8) | type); }

struct Attrs {
  static constexpr int kMax = 32;
  const nlattr* tb[kMax] = {};
  static int cb(const nlattr* a, void* data) {
    int type = mnl_attr_get_type(a);
    if (type >= 0 && type < kMax) static_cast<Attrs*>(data)->tb[type] = a;
    return MNL_CB_OK;
  }
};

/** NFTA_DATA_VALUE inside a nested data attribute. */
std::pair<const uint8_t*, size_t> dataValue(const nlattr* nest) {
  if (!nest) return {nullptr, 0};
  Attrs a;
  mnl_attr_parse_nested(nest, Attrs::cb, &a);
  if (!a.tb[NFTA_DATA_VALUE]) return {nullptr, 0};
  return {static_cast<const uint8_t*>(mnl_attr_get_payload(a.tb[NFTA_DATA_VALUE])),
          mnl_attr_get_payload_len(a.tb[NFTA_DATA_VALUE])};
}

/** Calls fn with the attributes of each element of a NEWSETELEM message (a dump's or a get's
 *  answer); other messages are ignored. */
void forEachElement(const nlmsghdr* m, const std::function<void(const Attrs&)>& fn) {
  if (m->nlmsg_type != nftMsg(NFT_MSG_NEWSETELEM)) return;
  Attrs top;
  mnl_attr_parse(m, sizeof(nfgenmsg), Attrs::cb, &top);
  const nlattr* list = top.tb[NFTA_SET_ELEM_LIST_ELEMENTS];
  if (!list) return;
  const char* end =
      static_cast<const char*>(mnl_attr_get_payload(list)) + mnl_attr_get_payload_len(list);
  for (auto* e = static_cast<const nlattr*>(mnl_attr_get_payload(list));
       mnl_attr_ok(e, static_cast<int>(end - reinterpret_cast<const char*>(e)));
       e = mnl_attr_next(e)) {
    Attrs el;
    mnl_attr_parse_nested(e, Attrs::cb, &el);
    fn(el);
  }
}

}  // namespace

Status NftClientImpl::openSocket() {
  if (fd_ >= 0) return {};
  fd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd_ < 0) return sysFail(errno, "nfnetlink socket");
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  if (bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
    int e = errno;
    close(fd_);
    fd_ = -1;
    return sysFail(e, "nfnetlink bind");
  }
  int one = 1;
  setsockopt(fd_, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  setsockopt(fd_, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  int rcv = 8 << 20;
  setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv);
  seq_ = static_cast<uint32_t>(time(nullptr));
  return {};
}

std::vector<uint8_t> NftClientImpl::dumpElementsRequest(const char* set) {
  std::vector<uint8_t> req;
  putHeader(req, nftMsg(NFT_MSG_GETSETELEM), NLM_F_DUMP | NLM_F_ACK, NFPROTO_INET, 0, ++seq_);
  req.resize(req.size() + 512);
  auto* h = reinterpret_cast<nlmsghdr*>(req.data());
  mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_TABLE, cfg_.nftTable.c_str());
  mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_SET, set);
  req.resize(h->nlmsg_len);
  return req;
}

std::vector<uint8_t>& NftClientImpl::rxBuffer() {
  if (rx_.size() < kRx) rx_.resize(kRx);
  return rx_;
}

Result<int> NftClientImpl::request(const std::vector<uint8_t>& req,
                                   const std::function<void(const nlmsghdr*)>& fn,
                                   bool& interrupted, std::vector<uint8_t>& rx) {
  auto* h = reinterpret_cast<const nlmsghdr*>(req.data());
  uint32_t seq = h->nlmsg_seq;
  if (send(fd_, req.data(), req.size(), 0) < 0) return sysFail(errno, "nfnetlink send");
  ++sent_;
  // recvmmsg: a lookup answers each element in its own datagram.
  constexpr size_t kSlots = 64, kSlot = 32 * 1024;
  if (rx.size() < kSlots * kSlot) rx.resize(kSlots * kSlot);
  std::vector<mmsghdr> hdrs(kSlots);
  std::vector<iovec> iov(kSlots);
  while (true) {
    for (size_t i = 0; i < kSlots; ++i) {
      iov[i] = {rx.data() + i * kSlot, kSlot};
      hdrs[i] = {};
      hdrs[i].msg_hdr.msg_iov = &iov[i];
      hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    int got = recvmmsg(fd_, hdrs.data(), kSlots, MSG_WAITFORONE, nullptr);
    if (got < 0) {
      if (errno == EINTR) continue;
      return sysFail(errno, "nfnetlink receive");
    }
    for (int i = 0; i < got; ++i) {
      int len = static_cast<int>(hdrs[i].msg_len);
      for (auto* m = reinterpret_cast<const nlmsghdr*>(rx.data() + i * kSlot);
           mnl_nlmsg_ok(m, len); m = mnl_nlmsg_next(m, &len)) {
        if (m->nlmsg_seq != seq) continue;
        if (m->nlmsg_flags & NLM_F_DUMP_INTR) interrupted = true;
        if (m->nlmsg_type == NLMSG_DONE) return 0;
        if (m->nlmsg_type == NLMSG_ERROR) {
          auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(m));
          return -e->error;
        }
        fn(m);
      }
    }
  }
}

Result<dp::NftState> NftClientImpl::observeRaw() {
  if (auto s = openSocket(); !s) return std::unexpected(s.error());
  dp::NftState st;
  std::vector<uint8_t>& rx = rxBuffer();
  auto talk = [&](std::vector<uint8_t>& req, const std::function<void(const nlmsghdr*)>& fn,
                  bool& interrupted) { return request(req, fn, interrupted, rx); };
  // The table and its comment ("kst:<skeleton id>").
  {
    std::vector<uint8_t> req;
    putHeader(req, nftMsg(NFT_MSG_GETTABLE), NLM_F_ACK, NFPROTO_INET, 0, ++seq_);
    req.resize(req.size() + 256);
    auto* h = reinterpret_cast<nlmsghdr*>(req.data());
    mnl_attr_put_strz(h, NFTA_TABLE_NAME, cfg_.nftTable.c_str());
    req.resize(h->nlmsg_len);
    bool intr = false;
    auto rc = talk(req, [&](const nlmsghdr* m) {
      if (m->nlmsg_type != nftMsg(NFT_MSG_NEWTABLE)) return;
      st.present = true;
      Attrs a;
      mnl_attr_parse(m, sizeof(nfgenmsg), Attrs::cb, &a);
      if (!a.tb[NFTA_TABLE_USERDATA]) return;
      // libnftnl udata: { u8 type, u8 len, value[len] }*; type 0 is the comment.
      auto* p = static_cast<const uint8_t*>(mnl_attr_get_payload(a.tb[NFTA_TABLE_USERDATA]));
      size_t n = mnl_attr_get_payload_len(a.tb[NFTA_TABLE_USERDATA]);
      for (size_t i = 0; i + 2 <= n && i + 2 + p[i + 1] <= n; i += 2 + p[i + 1]) {
        if (p[i] != 0) continue;
        std::string c(reinterpret_cast<const char*>(p + i + 2), p[i + 1]);
        c = c.c_str();  // without the terminating NUL
        if (c.starts_with("kst:")) st.skeletonId = c.substr(4);
      }
    }, intr);
    if (!rc) return std::unexpected(rc.error());
    if (*rc == ENOENT) return dp::NftState{};
    if (*rc != 0) return sysFail(*rc, "nfnetlink get table " + cfg_.nftTable);
  }
  // Element parser shared by dumps and lookups.
  auto parseElements = [&](const nlmsghdr* m, bool map, std::set<IpAddress>& vips,
                           dp::BucketMap& buckets) {
    forEachElement(m, [&](const Attrs& el) {
      auto [k, klen] = dataValue(el.tb[NFTA_SET_ELEM_KEY]);
      if (!map) {
        if (klen == 4) vips.insert(IpAddress::fromBytes(Family::V4, k));
        if (klen == 16) vips.insert(IpAddress::fromBytes(Family::V6, k));
        return;
      }
      auto [d, dlen] = dataValue(el.tb[NFTA_SET_ELEM_DATA]);
      if ((klen != 8 && klen != 20) || dlen != 4) return;
      uint32_t mark, slotMark;
      std::memcpy(&mark, k + klen - 4, 4);
      std::memcpy(&slotMark, d, 4);
      if (mark < kBucketMarkBase) return;
      auto ip = IpAddress::fromBytes(klen == 8 ? Family::V4 : Family::V6, k);
      observeBucket(buckets, ip, mark, slotMark, false);
    });
  };
  // Dumps: the VIP sets always; the bucket maps only when asked to be exhaustive, because the
  // kernel resumes a set dump by skipping the elements already sent (≈ 700 per 32 KiB
  // message): listing 640k elements walks the map ~900 times, ≈ a minute of CPU.
  std::vector<const char*> dumped{"vip4", "vip6"};
  if (exhaustive_) {
    dumped.push_back("b2s4");
    dumped.push_back("b2s6");
  }
  for (const char* set : dumped) {
    const bool map = set[0] == 'b';
    for (int attempt = 0;; ++attempt) {
      std::vector<uint8_t> req = dumpElementsRequest(set);
      std::set<IpAddress> vips;
      dp::BucketMap buckets;
      bool intr = false;
      auto rc = talk(req, [&](const nlmsghdr* m) { parseElements(m, map, vips, buckets); }, intr);
      if (!rc) return std::unexpected(rc.error());
      if (*rc != 0) return sysFail(*rc, fmt::format("nfnetlink list {} {}", cfg_.nftTable, set));
      if (intr && attempt < 3) continue;  // the set changed during the dump
      if (intr) return fail(EINTR, "nfnetlink: dump of " + std::string(set) + " kept changing");
      st.vips.merge(vips);
      st.buckets.merge(std::move(buckets));
      break;
    }
  }
  if (exhaustive_) {
    exhaustive_ = false;
    return st;
  }
  // Buckets by lookup: every bucket key (VIP . kBucketMarkBase + b, b < B) of every VIP in the
  // VIP sets, 256 keys per GETSETELEM request (one reply per element found; a missing key
  // ends the request with ENOENT, and the lookup resumes after it). Elements of VIPs outside
  // the sets are not seen: the daemon only ever adds or removes a VIP together with its
  // buckets in one transaction; an element batch that then fails (a foreign element in the
  // way) makes the next observation exhaustive.
  // Found elements go straight into st.buckets (no bucket map was dumped, so it holds only
  // what these lookups answered). Key j of a family is (vips[j / B], j % B): no key list.
  const uint32_t nb = cfg_.buckets;
  for (bool v4 : {true, false}) {
    std::vector<IpAddress> famVips;
    for (auto& vip : st.vips)
      if (vip.isV4() == v4) famVips.push_back(vip);
    auto keyAt = [&](size_t j) { return std::make_pair(famVips[j / nb], uint32_t(j % nb)); };
    const size_t total = famVips.size() * nb;
    const char* set = v4 ? "b2s4" : "b2s6";
    constexpr size_t kChunk = 256;
    size_t i = 0;
    while (i < total) {
      size_t n = std::min(kChunk, total - i);
      std::vector<uint8_t> req;
      putHeader(req, nftMsg(NFT_MSG_GETSETELEM), NLM_F_ACK, NFPROTO_INET, 0, ++seq_);
      req.resize(req.size() + 512 + n * 40);
      auto* h = reinterpret_cast<nlmsghdr*>(req.data());
      mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_TABLE, cfg_.nftTable.c_str());
      mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_SET, set);
      auto* list = mnl_attr_nest_start(h, NFTA_SET_ELEM_LIST_ELEMENTS);
      for (size_t j = i; j < i + n; ++j) {
        uint8_t key[20];
        const auto [vip, bucket] = keyAt(j);
        std::memcpy(key, vip.data(), vip.size());
        uint32_t mark = kBucketMarkBase + bucket;
        std::memcpy(key + vip.size(), &mark, 4);
        auto* el = mnl_attr_nest_start(h, NFTA_LIST_ELEM);
        auto* k = mnl_attr_nest_start(h, NFTA_SET_ELEM_KEY);
        mnl_attr_put(h, NFTA_DATA_VALUE, vip.size() + 4, key);
        mnl_attr_nest_end(h, k);
        mnl_attr_nest_end(h, el);
      }
      mnl_attr_nest_end(h, list);
      req.resize(h->nlmsg_len);
      std::set<IpAddress> unused;
      bool intr = false;
      auto rc = talk(req, [&](const nlmsghdr* m) { parseElements(m, true, unused, st.buckets); },
                     intr);
      if (!rc) return std::unexpected(rc.error());
      if (*rc != 0 && *rc != ENOENT)
        return sysFail(*rc, fmt::format("nfnetlink get elements of {} {}", cfg_.nftTable, set));
      size_t next = i + n;
      if (*rc == ENOENT) {
        // The first key not answered is missing; everything before it was answered.
        next = i;
        while (next < i + n && st.buckets.contains(keyAt(next))) ++next;
        ++next;
      }
      i = next;
    }
  }
  return st;
}

Status NftClientImpl::applyElements(const dp::NftElementChanges& ch) {
  if (ch.size() == 0) return {};
  if (auto s = openSocket(); !s) return std::unexpected(s.error());
  std::vector<uint8_t> buf;
  {
    // The batch is encoded into one buffer (one sendmsg, ≈ 20 MB at a V = 10k cold start):
    // reserve its exact size (as emitted below) plus the 65 KiB each message is first sized
    // to, so that it is never reallocated (a doubling would briefly hold both copies).
    auto elem = [](size_t klen, bool data) { return 8 + MNL_ALIGN(4 + klen) + (data ? 12 : 0); };
    size_t perMsg = MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(nfgenmsg)) +
                    MNL_ALIGN(4 + cfg_.nftTable.size() + 1) + MNL_ALIGN(4 + 5) + 4;
    size_t est = (ch.size() / 1000 + 10) * perMsg + (1 << 16) + 1024;
    for (auto& b : ch.bucketAdds) est += elem(b.vip.size() + 4, true);
    for (auto& b : ch.bucketDeletes) est += elem(b.vip.size() + 4, false);
    for (auto& v : ch.vipAdds) est += elem(v.size(), false);
    for (auto& v : ch.vipDeletes) est += elem(v.size(), false);
    buf.reserve(est);
  }
  std::vector<uint32_t> seqs;
  putHeader(buf, NFNL_MSG_BATCH_BEGIN, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++seq_);
  // Elements are encoded straight from the change lists (no intermediate copies: at V = 10k a
  // cold start carries 640k of them).
  struct Item {
    const IpAddress* ip;
    uint32_t bucket;
    uint32_t mark;
  };
  auto emit = [&](int type, const char* set, size_t count, const auto& at, bool map) {
    // The element list is one attribute: keep it below 64 KiB (≤ 44 bytes per element).
    constexpr size_t kPerMsg = 1000;
    for (size_t i = 0; i < count; i += kPerMsg) {
      size_t off = buf.size();
      seqs.push_back(++seq_);
      putHeader(buf, nftMsg(type), (type == NFT_MSG_NEWSETELEM ? NLM_F_CREATE : 0) | NLM_F_ACK,
                NFPROTO_INET, 0, seq_);
      buf.resize(off + (1 << 16) + 1024);
      auto* h = reinterpret_cast<nlmsghdr*>(buf.data() + off);
      mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_TABLE, cfg_.nftTable.c_str());
      mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_SET, set);
      auto* list = mnl_attr_nest_start(h, NFTA_SET_ELEM_LIST_ELEMENTS);
      for (size_t j = i; j < std::min(count, i + kPerMsg); ++j) {
        Item it = at(j);
        uint8_t key[20];
        std::memcpy(key, it.ip->data(), it.ip->size());
        size_t klen = it.ip->size();
        if (map) {
          uint32_t m = kBucketMarkBase + it.bucket;  // meta mark: host byte order
          std::memcpy(key + klen, &m, 4);
          klen += 4;
        }
        auto* el = mnl_attr_nest_start(h, NFTA_LIST_ELEM);
        auto* k = mnl_attr_nest_start(h, NFTA_SET_ELEM_KEY);
        mnl_attr_put(h, NFTA_DATA_VALUE, klen, key);
        mnl_attr_nest_end(h, k);
        if (map && type == NFT_MSG_NEWSETELEM) {
          auto* d = mnl_attr_nest_start(h, NFTA_SET_ELEM_DATA);
          mnl_attr_put(h, NFTA_DATA_VALUE, 4, &it.mark);
          mnl_attr_nest_end(h, d);
        }
        mnl_attr_nest_end(h, el);
      }
      mnl_attr_nest_end(h, list);
      buf.resize(off + h->nlmsg_len);
    }
  };
  // Per family: indexes into the change lists (4 bytes each instead of a copy).
  auto split = [](const auto& v, bool v4, auto ipOf) {
    std::vector<uint32_t> idx;
    for (uint32_t i = 0; i < v.size(); ++i)
      if (ipOf(v[i]).isV4() == v4) idx.push_back(i);
    return idx;
  };
  auto vipIp = [](const IpAddress& ip) -> const IpAddress& { return ip; };
  auto bucketIp = [](const dp::NftElementChanges::Bucket& b) -> const IpAddress& { return b.vip; };
  auto vips = [&](int type, const char* set, const std::vector<IpAddress>& v, bool v4) {
    auto idx = split(v, v4, vipIp);
    emit(type, set, idx.size(), [&](size_t j) { return Item{&v[idx[j]], 0, 0}; }, false);
  };
  auto buckets = [&](int type, const char* set, const std::vector<dp::NftElementChanges::Bucket>& v,
                     bool v4) {
    auto idx = split(v, v4, bucketIp);
    emit(type, set, idx.size(),
         [&](size_t j) { return Item{&v[idx[j]].vip, v[idx[j]].bucket, v[idx[j]].mark}; }, true);
  };
  // Same order as the text script (nft_render.cpp): hitless for removed and added VIPs.
  vips(NFT_MSG_DELSETELEM, "vip4", ch.vipDeletes, true);
  vips(NFT_MSG_DELSETELEM, "vip6", ch.vipDeletes, false);
  buckets(NFT_MSG_DELSETELEM, "b2s4", ch.bucketDeletes, true);
  buckets(NFT_MSG_DELSETELEM, "b2s6", ch.bucketDeletes, false);
  buckets(NFT_MSG_NEWSETELEM, "b2s4", ch.bucketAdds, true);
  buckets(NFT_MSG_NEWSETELEM, "b2s6", ch.bucketAdds, false);
  vips(NFT_MSG_NEWSETELEM, "vip4", ch.vipAdds, true);
  vips(NFT_MSG_NEWSETELEM, "vip6", ch.vipAdds, false);
  putHeader(buf, NFNL_MSG_BATCH_END, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++seq_);

  auto rc = sendBatch(buf, seqs);
  if (!rc) return std::unexpected(rc.error().wrap(fmt::format("{} element changes", ch.size())));
  if (*rc) {
    exhaustive_ = true;  // see observeRaw()
    return fail(EINVAL, fmt::format("nft: element batch of {} changes failed: {}", ch.size(),
                                    std::strerror(*rc)));
  }
  return {};
}

Result<int> NftClientImpl::sendBatch(const std::vector<uint8_t>& buf,
                                     const std::vector<uint32_t>& seqs) {
  // One sendmsg: the kernel runs a batch as one transaction only within one skb.
  int need = static_cast<int>(buf.size()) + 65536;
  if (need > sndbuf_) {
    setsockopt(fd_, SOL_SOCKET, SO_SNDBUFFORCE, &need, sizeof need);
    sndbuf_ = need;
  }
  if (send(fd_, buf.data(), buf.size(), 0) < 0) return sysFail(errno, "nfnetlink send of a batch");
  sent_ += seqs.size() + 2;
  std::set<uint32_t> pending(seqs.begin(), seqs.end());
  int firstError = 0;
  std::vector<uint8_t>& rx = rxBuffer();
  while (!pending.empty()) {
    pollfd p{fd_, POLLIN, 0};
    int pr = poll(&p, 1, 30000);
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) return fail(ETIMEDOUT, "nfnetlink: no answer to a batch");
    ssize_t n = recv(fd_, rx.data(), rx.size(), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysFail(errno, "nfnetlink receive");
    }
    int len = static_cast<int>(n);
    for (auto* m = reinterpret_cast<const nlmsghdr*>(rx.data()); mnl_nlmsg_ok(m, len);
         m = mnl_nlmsg_next(m, &len)) {
      if (m->nlmsg_type != NLMSG_ERROR) continue;
      auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(m));
      if (e->error && !firstError) firstError = -e->error;
      // An error on the batch header (e.g. no memory for the batch) ends it at once.
      if (e->error && !pending.contains(m->nlmsg_seq)) pending.clear();
      pending.erase(m->nlmsg_seq);
    }
  }
  return firstError;
}

// Flow tables (nft_render.cpp): flow4's key is `ip saddr . th sport . ip daddr . th dport`,
// each field in its own 32-bit register word (ports zero-padded), so the destination sits at
// byte 8 of the 16-byte key; flow6's key is two 32-bit hashes of the 4-tuple. The data of both
// is the slot mark in host byte order.
constexpr size_t kFlow4Key = 16, kFlow4Daddr = 8, kFlow6Key = 8;

Result<size_t> NftClientImpl::purgeFlows(const std::vector<dp::ReleasedSlot>& released) {
  size_t purged = 0;
  for (bool v4 : {true, false}) {
    if (std::none_of(released.begin(), released.end(),
                     [&](const dp::ReleasedSlot& r) { return r.vip.isV4() == v4; }))
      continue;
    // A deletion batch fails as a whole (ENOENT) when one of its elements timed out between
    // the dump and the deletion: the transaction is aborted, so dump again and retry.
    for (int attempt = 0;; ++attempt) {
      auto r = purgeFlowMap(v4, released);
      if (!r) return std::unexpected(r.error());
      if (r->second == 0) {
        purged += r->first;
        break;
      }
      if (r->second != ENOENT || attempt == 3)
        return sysFail(r->second, fmt::format("nfnetlink delete from {} {}", cfg_.nftTable,
                                              v4 ? "flow4" : "flow6"));
    }
  }
  return purged;
}

Result<std::pair<size_t, int>> NftClientImpl::purgeFlowMap(
    bool v4, const std::vector<dp::ReleasedSlot>& released) {
  if (auto s = openSocket(); !s) return std::unexpected(s.error());
  const char* set = v4 ? "flow4" : "flow6";
  const size_t klen = v4 ? kFlow4Key : kFlow6Key;
  std::set<std::pair<std::array<uint8_t, 4>, uint32_t>> match4;  // (VIP, mark)
  std::set<uint32_t> match6;                                     // mark
  for (auto& r : released) {
    if (r.vip.isV4() != v4) continue;
    if (v4) {
      std::array<uint8_t, 4> a;
      std::memcpy(a.data(), r.vip.data(), 4);
      match4.emplace(a, r.mark);
    } else {
      match6.insert(r.mark);
    }
  }
  // The dump: keys of the matching elements (the whole map is walked; a dynamic map has no
  // index by data).
  std::vector<std::array<uint8_t, kFlow4Key>> keys;
  std::vector<uint8_t>& rx = rxBuffer();
  for (int attempt = 0;; ++attempt) {
    keys.clear();
    std::vector<uint8_t> req = dumpElementsRequest(set);
    bool intr = false;
    auto rc = request(req, [&](const nlmsghdr* m) {
      forEachElement(m, [&](const Attrs& el) {
        auto [k, kl] = dataValue(el.tb[NFTA_SET_ELEM_KEY]);
        auto [d, dl] = dataValue(el.tb[NFTA_SET_ELEM_DATA]);
        if (kl != klen || dl != 4) return;
        uint32_t mark;
        std::memcpy(&mark, d, 4);
        bool hit;
        if (v4) {
          std::array<uint8_t, 4> daddr;
          std::memcpy(daddr.data(), k + kFlow4Daddr, 4);
          hit = match4.contains({daddr, mark});
        } else {
          hit = match6.contains(mark);
        }
        if (!hit) return;
        std::array<uint8_t, kFlow4Key> key{};
        std::memcpy(key.data(), k, kl);
        keys.push_back(key);
      });
    }, intr, rx);
    if (!rc) return std::unexpected(rc.error());
    // No table (removed, never created) or no such map: nothing is pinned.
    if (*rc == ENOENT) return std::make_pair(size_t{0}, 0);
    if (*rc != 0) return sysFail(*rc, fmt::format("nfnetlink list {} {}", cfg_.nftTable, set));
    if (!intr) break;
    if (attempt == 3) return fail(EINTR, fmt::format("nfnetlink: dump of {} kept changing", set));
  }
  if (keys.empty()) return std::make_pair(size_t{0}, 0);
  // One transaction: DELSETELEM messages of at most 1000 keys (the element list is one
  // attribute, below 64 KiB).
  std::vector<uint8_t> buf;
  std::vector<uint32_t> seqs;
  putHeader(buf, NFNL_MSG_BATCH_BEGIN, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++seq_);
  constexpr size_t kPerMsg = 1000;
  for (size_t i = 0; i < keys.size(); i += kPerMsg) {
    size_t off = buf.size();
    seqs.push_back(++seq_);
    putHeader(buf, nftMsg(NFT_MSG_DELSETELEM), NLM_F_ACK, NFPROTO_INET, 0, seq_);
    buf.resize(off + (1 << 16) + 1024);
    auto* h = reinterpret_cast<nlmsghdr*>(buf.data() + off);
    mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_TABLE, cfg_.nftTable.c_str());
    mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_SET, set);
    auto* list = mnl_attr_nest_start(h, NFTA_SET_ELEM_LIST_ELEMENTS);
    for (size_t j = i; j < std::min(keys.size(), i + kPerMsg); ++j) {
      auto* el = mnl_attr_nest_start(h, NFTA_LIST_ELEM);
      auto* k = mnl_attr_nest_start(h, NFTA_SET_ELEM_KEY);
      mnl_attr_put(h, NFTA_DATA_VALUE, klen, keys[j].data());
      mnl_attr_nest_end(h, k);
      mnl_attr_nest_end(h, el);
    }
    mnl_attr_nest_end(h, list);
    buf.resize(off + h->nlmsg_len);
  }
  putHeader(buf, NFNL_MSG_BATCH_END, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++seq_);
  auto rc = sendBatch(buf, seqs);
  if (!rc) return std::unexpected(rc.error());
  if (*rc) return std::make_pair(size_t{0}, *rc);
  return std::make_pair(keys.size(), 0);
}

}  // namespace kst
