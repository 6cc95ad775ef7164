#include "linux/nft_codec.h"

#include <arpa/inet.h>
#include <endian.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "desired/nft_render.h"

namespace kst::nft {

namespace {

constexpr SetShape kShapes[] = {
    {"vip4", 4, 0},   {"vip6", 16, 0}, {"b2s4", 8, 4},
    {"b2s6", 20, 4},  {"flow4", 16, 4}, {"flow6", 8, 4},
    {"refused4", 4, 0}, {"refused6", 16, 0}, {"ranged4", 4, 0}, {"ranged6", 16, 0},
    {"ep4", 8, 0},    {"ep6", 20, 0},  {"src4", 8, 0},  {"src6", 32, 0},
    {"bcount4", 4, 4}, {"bcount6", 16, 4},
    {"live4", 8, 0},  {"live6", 20, 0},
};

constexpr size_t kHeader = MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(nfgenmsg));
// Room a message is first sized to (mnl_attr_put writes past nlmsg_len): the element list
// stays below 64 KiB.
constexpr size_t kMessageRoom = (1 << 16) + 1024;

/** The attribute type of the i-th (0-based) element of an element list. The kernel walks the
 *  list without looking at it (its own answers use NFTA_LIST_ELEM for all); libnftnl, and so
 *  nft, numbers the elements 1, 2, 3 …, and so does the daemon, to send nft's very bytes.
 *  Lists hold ≤ kElementsPerMessage elements, far below the 14-bit type limit. */
uint16_t listElementType(size_t i) { return static_cast<uint16_t>(NFTA_LIST_ELEM + i); }

uint16_t nftMsg(int type) { return static_cast<uint16_t>((NFNL_SUBSYS_NFTABLES << 8) | type); }

void putHeader(Bytes& buf, uint16_t type, uint16_t flags, uint8_t family, uint16_t resId,
               uint32_t seq) {
  size_t off = buf.size();
  buf.resize(off + kHeader);
  auto* h = reinterpret_cast<nlmsghdr*>(buf.data() + off);
  h->nlmsg_len = static_cast<uint32_t>(kHeader);
  h->nlmsg_type = type;
  h->nlmsg_flags = NLM_F_REQUEST | flags;
  h->nlmsg_seq = seq;
  h->nlmsg_pid = 0;
  auto* g = reinterpret_cast<nfgenmsg*>(buf.data() + off + MNL_ALIGN(sizeof(nlmsghdr)));
  g->nfgen_family = family;
  g->version = NFNETLINK_V0;
  g->res_id = htons(resId);
}

nlmsghdr* at(Bytes& buf, size_t off) { return reinterpret_cast<nlmsghdr*>(buf.data() + off); }

struct Attrs {
  static constexpr int kMax = 32;
  const nlattr* tb[kMax] = {};
  static int cb(const nlattr* a, void* data) {
    int type = mnl_attr_get_type(a);
    if (type >= 0 && type < kMax) static_cast<Attrs*>(data)->tb[type] = a;
    return MNL_CB_OK;
  }
};

/** NFTA_DATA_VALUE inside a nested data attribute (empty when absent). */
std::span<const uint8_t> dataValue(const nlattr* nest) {
  if (!nest) return {};
  Attrs a;
  if (mnl_attr_parse_nested(nest, Attrs::cb, &a) < 0 || !a.tb[NFTA_DATA_VALUE]) return {};
  return {static_cast<const uint8_t*>(mnl_attr_get_payload(a.tb[NFTA_DATA_VALUE])),
          mnl_attr_get_payload_len(a.tb[NFTA_DATA_VALUE])};
}

std::string_view strAttr(const nlattr* a) {
  if (!a) return {};
  auto* p = static_cast<const char*>(mnl_attr_get_payload(a));
  size_t n = mnl_attr_get_payload_len(a);
  return {p, strnlen(p, n)};
}

/** NFTA_COUNTER_BYTES and _PACKETS (big-endian u64) of a counter's data nest. */
std::optional<dp::CounterValue> counterData(const nlattr* nest) {
  Attrs c;
  if (mnl_attr_parse_nested(nest, Attrs::cb, &c) < 0 || !c.tb[NFTA_COUNTER_BYTES] ||
      !c.tb[NFTA_COUNTER_PACKETS] || mnl_attr_get_payload_len(c.tb[NFTA_COUNTER_BYTES]) != 8 ||
      mnl_attr_get_payload_len(c.tb[NFTA_COUNTER_PACKETS]) != 8)
    return std::nullopt;
  return dp::CounterValue{be64toh(mnl_attr_get_u64(c.tb[NFTA_COUNTER_PACKETS])),
                          be64toh(mnl_attr_get_u64(c.tb[NFTA_COUNTER_BYTES]))};
}

/** A `counter` expression (NFTA_EXPR_NAME "counter", NFTA_EXPR_DATA); nullopt for another. */
std::optional<dp::CounterValue> counterExpr(const nlattr* expr) {
  Attrs x;
  if (mnl_attr_parse_nested(expr, Attrs::cb, &x) < 0 || strAttr(x.tb[NFTA_EXPR_NAME]) != "counter" ||
      !x.tb[NFTA_EXPR_DATA])
    return std::nullopt;
  return counterData(x.tb[NFTA_EXPR_DATA]);
}

}  // namespace

const SetShape* setShape(std::string_view name) {
  for (const auto& s : kShapes)
    if (s.name == name) return &s;
  return nullptr;
}

size_t batchBytes(const std::string& table, size_t elements, size_t keyBytes, size_t maps) {
  // Per element: NFTA_LIST_ELEM + NFTA_SET_ELEM_KEY nests (8) + the key's NFTA_DATA_VALUE
  // (4 + key, aligned: ≤ 3 more per element) + with data NFTA_SET_ELEM_DATA { u32 } (12).
  const size_t perMsg = kHeader + MNL_ALIGN(4 + table.size() + 1) + MNL_ALIGN(4 + 6) + 4;
  const size_t messages = elements / kElementsPerMessage + 10;  // + one per (set, operation)
  return 2 * kHeader + messages * perMsg + elements * 15 + keyBytes + maps * 12 + kMessageRoom;
}

BatchEncoder::BatchEncoder(std::string table, uint32_t& seq, size_t reserve, uint32_t genid)
    : table_(std::move(table)), seq_(seq) {
  buf_.reserve(reserve);
  putHeader(buf_, NFNL_MSG_BATCH_BEGIN, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++seq_);
  if (genid) {
    buf_.resize(kHeader + MNL_ALIGN(sizeof(nlattr) + 4));
    mnl_attr_put_u32(at(buf_, 0), NFNL_BATCH_GENID, htonl(genid));
    buf_.resize(at(buf_, 0)->nlmsg_len);
  }
}

void BatchEncoder::close() {
  if (open_ == SIZE_MAX) return;
  auto* h = at(buf_, open_);
  mnl_attr_nest_end(h, reinterpret_cast<nlattr*>(buf_.data() + listAttr_));
  buf_.resize(open_ + h->nlmsg_len);
  open_ = SIZE_MAX;
}

void BatchEncoder::element(bool add, std::string_view set, std::span<const uint8_t> key,
                           const uint32_t* data) {
  put(add, set, key, data, {}, {});
}

void BatchEncoder::element(bool add, std::string_view set, std::span<const uint8_t> key,
                           std::span<const uint8_t> keyEnd, std::string_view comment) {
  put(add, set, key, nullptr, keyEnd, comment);
}

void BatchEncoder::put(bool add, std::string_view set, std::span<const uint8_t> key,
                       const uint32_t* data, std::span<const uint8_t> keyEnd,
                       std::string_view comment) {
  if (open_ == SIZE_MAX || openAdd_ != add || openSet_ != set || count_ == kElementsPerMessage) {
    close();
    open_ = buf_.size();
    openAdd_ = add;
    openSet_.assign(set);
    count_ = 0;
    acked_.push_back(++seq_);
    // NLM_F_CREATE without NLM_F_EXCL: adding an element that exists with the same data is
    // not an error (with other data it is: EBUSY).
    putHeader(buf_, nftMsg(add ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM),
              (add ? NLM_F_CREATE : 0) | NLM_F_ACK, NFPROTO_INET, 0, seq_);
    buf_.resize(open_ + kMessageRoom);
    auto* h = at(buf_, open_);
    mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_TABLE, table_.c_str());
    mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_SET, openSet_.c_str());
    listAttr_ = open_ + h->nlmsg_len;
    mnl_attr_nest_start(h, NFTA_SET_ELEM_LIST_ELEMENTS);
  }
  auto* h = at(buf_, open_);
  auto* el = mnl_attr_nest_start(h, listElementType(count_));
  auto* k = mnl_attr_nest_start(h, NFTA_SET_ELEM_KEY);
  mnl_attr_put(h, NFTA_DATA_VALUE, key.size(), key.data());
  mnl_attr_nest_end(h, k);
  if (data) {
    auto* d = mnl_attr_nest_start(h, NFTA_SET_ELEM_DATA);
    mnl_attr_put(h, NFTA_DATA_VALUE, 4, data);
    mnl_attr_nest_end(h, d);
  }
  if (!keyEnd.empty()) {
    auto* ke = mnl_attr_nest_start(h, NFTA_SET_ELEM_KEY_END);
    mnl_attr_put(h, NFTA_DATA_VALUE, keyEnd.size(), keyEnd.data());
    mnl_attr_nest_end(h, ke);
  }
  if (!comment.empty()) {
    // libnftnl user data: { u8 type 0 (comment), u8 length, the text and its NUL }.
    uint8_t ud[2 + 255];
    const size_t n = std::min<size_t>(comment.size(), 253);
    ud[0] = 0;
    ud[1] = static_cast<uint8_t>(n + 1);
    std::memcpy(ud + 2, comment.data(), n);
    ud[2 + n] = 0;
    mnl_attr_put(h, NFTA_SET_ELEM_USERDATA, n + 3, ud);
  }
  mnl_attr_nest_end(h, el);
  ++count_;
}

Bytes BatchEncoder::finish() {
  close();
  putHeader(buf_, NFNL_MSG_BATCH_END, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, ++seq_);
  return std::move(buf_);
}

size_t bucketKey(const IpAddress& vip, uint32_t bucket, uint8_t (&out)[20]) {
  std::memcpy(out, vip.data(), vip.size());
  uint32_t mark = kBucketMarkBase + bucket;  // meta mark: host byte order
  std::memcpy(out + vip.size(), &mark, 4);
  return vip.size() + 4;
}

size_t markKey(const IpAddress& vip, uint32_t mark, uint8_t (&out)[20]) {
  std::memcpy(out, vip.data(), vip.size());
  std::memcpy(out + vip.size(), &mark, 4);
  return vip.size() + 4;
}

size_t sourceKey(const IpAddress& vip, const IpAddress& src, uint8_t (&out)[32]) {
  std::memcpy(out, vip.data(), vip.size());
  std::memcpy(out + vip.size(), src.data(), vip.size());
  return 2 * vip.size();
}

size_t slotMarkKey(const dp::SlotMark& l, uint8_t (&out)[20]) {
  std::memcpy(out, l.vip.data(), l.vip.size());
  std::memcpy(out + l.vip.size(), &l.mark, 4);  // meta mark: host byte order
  return l.vip.size() + 4;
}

Bytes encodeElementChanges(const std::string& table, const dp::NftElementChanges& ch,
                           uint32_t& seq, std::vector<uint32_t>& acked, uint32_t genid) {
  // One buffer for the whole batch (one sendmsg, ≈ 20 MB at a V = 10k cold start), reserved
  // to its bound so that it is never reallocated (a doubling would briefly hold both copies).
  size_t keyBytes = 0;
  for (auto& b : ch.bucketAdds) keyBytes += b.vip.size() + 4;
  for (auto& b : ch.bucketDeletes) keyBytes += b.vip.size() + 4;
  for (auto& v : ch.vipAdds) keyBytes += v.size();
  for (auto& v : ch.vipDeletes) keyBytes += 2 * v.size();  // vip and refused
  for (auto& v : ch.vipAdds) keyBytes += v.size();
  for (auto& v : ch.rangedAdds) keyBytes += v.size();
  for (auto& v : ch.rangedDeletes) keyBytes += v.size();
  // Source intervals: key and key end (+ their nests); endpoint counters: key + comment.
  for (auto& r : ch.rangeAdds) keyBytes += 4 * r.vip.size() + 12;
  for (auto& r : ch.rangeDeletes) keyBytes += 4 * r.vip.size() + 12;
  for (auto& e : ch.endpointAdds) keyBytes += e.vip.size() + 4 + 64;
  for (auto& e : ch.endpointDeletes) keyBytes += e.vip.size() + 4;
  for (auto& c : ch.countAdds) keyBytes += c.vip.size();
  for (auto& c : ch.countDeletes) keyBytes += c.vip.size();
  for (auto& l : ch.liveAdds) keyBytes += l.vip.size() + 4;
  for (auto& l : ch.liveDeletes) keyBytes += l.vip.size() + 4;
  BatchEncoder enc(table, seq,
                   batchBytes(table, ch.size() + ch.vipAdds.size() + ch.vipDeletes.size(),
                              keyBytes, ch.bucketAdds.size() + ch.countAdds.size()),
                   genid);
  // Elements are encoded straight from the change lists (no intermediate copies: at V = 10k a
  // cold start carries 640k of them), one pass per family.
  auto vips = [&](bool add, const std::vector<IpAddress>& v, bool v4) {
    for (const auto& ip : v)
      if (ip.isV4() == v4) enc.element(add, v4 ? "vip4" : "vip6", {ip.data(), ip.size()}, nullptr);
  };
  auto buckets = [&](bool add, const std::vector<dp::NftElementChanges::Bucket>& v, bool v4) {
    uint8_t key[20];
    for (const auto& b : v) {
      if (b.vip.isV4() != v4) continue;
      size_t n = bucketKey(b.vip, b.bucket, key);
      enc.element(add, v4 ? "b2s4" : "b2s6", {key, n}, add ? &b.mark : nullptr);
    }
  };
  auto plain = [&](bool add, const std::vector<IpAddress>& v, bool v4, const char* s4,
                   const char* s6) {
    for (const auto& ip : v)
      if (ip.isV4() == v4) enc.element(add, v4 ? s4 : s6, {ip.data(), ip.size()}, nullptr);
  };
  auto endpoints = [&](bool add, const std::vector<dp::NftElementChanges::EndpointCounter>& v,
                       bool v4) {
    uint8_t key[20];
    for (const auto& e : v) {
      if (e.vip.isV4() != v4) continue;
      size_t n = markKey(e.vip, e.mark, key);
      std::string comment = add ? e.endpoint.str() : std::string();
      enc.element(add, v4 ? "ep4" : "ep6", {key, n}, {}, comment);
    }
  };
  auto ranges = [&](bool add, const std::vector<dp::NftElementChanges::SourceRange>& v, bool v4) {
    uint8_t key[32], end[32];
    for (const auto& r : v) {
      if (r.vip.isV4() != v4) continue;
      size_t n = sourceKey(r.vip, r.src.first, key);
      sourceKey(r.vip, r.src.last, end);
      enc.element(add, v4 ? "src4" : "src6", {key, n}, {end, n}, {});
    }
  };
  auto counts = [&](bool add, const std::vector<dp::NftElementChanges::Count>& v, bool v4) {
    for (const auto& c : v) {
      if (c.vip.isV4() != v4) continue;
      const uint32_t data = kCountMarkBase | c.buckets;
      enc.element(add, v4 ? "bcount4" : "bcount6", {c.vip.data(), c.vip.size()},
                  add ? &data : nullptr);
    }
  };
  auto live = [&](bool add, const std::vector<dp::SlotMark>& v, bool v4) {
    uint8_t key[20];
    for (const auto& l : v) {
      if (l.vip.isV4() != v4) continue;
      size_t n = slotMarkKey(l, key);
      enc.element(add, v4 ? "live4" : "live6", {key, n}, nullptr);
    }
  };
  for (bool v4 : {true, false}) vips(false, ch.vipDeletes, v4);
  for (bool v4 : {true, false}) plain(false, ch.vipDeletes, v4, "refused4", "refused6");
  for (bool v4 : {true, false}) ranges(false, ch.rangeDeletes, v4);
  for (bool v4 : {true, false}) plain(false, ch.rangedDeletes, v4, "ranged4", "ranged6");
  for (bool v4 : {true, false}) endpoints(false, ch.endpointDeletes, v4);
  for (bool v4 : {true, false}) counts(false, ch.countDeletes, v4);
  for (bool v4 : {true, false}) buckets(false, ch.bucketDeletes, v4);
  // A released slot's live element goes with (after) its buckets, a new slot's is added before
  // any bucket points at it (desired/nft_render.cpp renderNftStep, the same order).
  for (bool v4 : {true, false}) live(false, ch.liveDeletes, v4);
  for (bool v4 : {true, false}) live(true, ch.liveAdds, v4);
  for (bool v4 : {true, false}) buckets(true, ch.bucketAdds, v4);
  for (bool v4 : {true, false}) counts(true, ch.countAdds, v4);
  for (bool v4 : {true, false}) endpoints(true, ch.endpointAdds, v4);
  for (bool v4 : {true, false}) plain(true, ch.rangedAdds, v4, "ranged4", "ranged6");
  for (bool v4 : {true, false}) ranges(true, ch.rangeAdds, v4);
  for (bool v4 : {true, false}) plain(true, ch.vipAdds, v4, "refused4", "refused6");
  for (bool v4 : {true, false}) vips(true, ch.vipAdds, v4);
  Bytes out = enc.finish();
  acked = enc.acked();
  return out;
}

// ---- requests ----

Bytes getGenRequest(uint32_t seq) {
  // With NLM_F_ACK, unlike nft: the answer is NEWGEN then an ack, so that the receive loop
  // ends on the ack as for every other request (without it, NEWGEN alone comes back).
  Bytes req;
  putHeader(req, nftMsg(NFT_MSG_GETGEN), NLM_F_ACK, AF_UNSPEC, 0, seq);
  return req;
}

namespace {

/** A request whose only attribute is the table name (attr). */
Bytes tableRequest(int type, uint16_t flags, uint16_t attr, const std::string& table,
                   uint32_t seq) {
  Bytes req;
  putHeader(req, nftMsg(type), flags, NFPROTO_INET, 0, seq);
  req.resize(kHeader + MNL_ALIGN(4 + table.size() + 1));
  auto* h = at(req, 0);
  mnl_attr_put_strz(h, attr, table.c_str());
  req.resize(h->nlmsg_len);
  return req;
}

}  // namespace

Bytes getTableRequest(const std::string& table, uint32_t seq) {
  return tableRequest(NFT_MSG_GETTABLE, NLM_F_ACK, NFTA_TABLE_NAME, table, seq);
}

namespace {

/** GETSETELEM header and the set and table names, in nft's order (set first). */
nlmsghdr* startGetElements(Bytes& req, const std::string& table, std::string_view set,
                           uint16_t flags, uint32_t seq, size_t room) {
  putHeader(req, nftMsg(NFT_MSG_GETSETELEM), flags, NFPROTO_INET, 0, seq);
  req.resize(kHeader + MNL_ALIGN(4 + set.size() + 1) + MNL_ALIGN(4 + table.size() + 1) + room);
  auto* h = at(req, 0);
  std::string s(set);
  mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_SET, s.c_str());
  mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_TABLE, table.c_str());
  return h;
}

}  // namespace

Bytes dumpElementsRequest(const std::string& table, std::string_view set, uint32_t seq) {
  // Without NLM_F_ACK, as nft: a dump ends with NLMSG_DONE, a refused one with NLMSG_ERROR.
  Bytes req;
  auto* h = startGetElements(req, table, set, NLM_F_DUMP, seq, 0);
  req.resize(h->nlmsg_len);
  return req;
}

Bytes getElementsRequest(const std::string& table, std::string_view set, size_t count,
                         const std::function<size_t(size_t, uint8_t (&)[20])>& keyAt,
                         uint32_t seq) {
  Bytes req;
  // Per key: LIST_ELEM + KEY nests (8) + NFTA_DATA_VALUE (4 + ≤ 20).
  auto* h = startGetElements(req, table, set, NLM_F_ACK, seq, 4 + count * 32);
  auto* list = mnl_attr_nest_start(h, NFTA_SET_ELEM_LIST_ELEMENTS);
  uint8_t key[20];
  for (size_t i = 0; i < count; ++i) {
    size_t n = keyAt(i, key);
    auto* el = mnl_attr_nest_start(h, listElementType(i));
    auto* k = mnl_attr_nest_start(h, NFTA_SET_ELEM_KEY);
    mnl_attr_put(h, NFTA_DATA_VALUE, n, key);
    mnl_attr_nest_end(h, k);
    mnl_attr_nest_end(h, el);
  }
  mnl_attr_nest_end(h, list);
  req.resize(h->nlmsg_len);
  return req;
}

Bytes dumpObjectsRequest(const std::string& table, uint32_t seq) {
  return tableRequest(NFT_MSG_GETOBJ, NLM_F_DUMP, NFTA_OBJ_TABLE, table, seq);
}

// ---- replies ----

Reply classify(const nlmsghdr* m) {
  Reply r{Reply::Data};
  r.interrupted = (m->nlmsg_flags & NLM_F_DUMP_INTR) != 0;
  if (m->nlmsg_type == NLMSG_DONE) {
    r.kind = Reply::Done;
  } else if (m->nlmsg_type == NLMSG_ERROR) {
    if (m->nlmsg_len < mnl_nlmsg_size(sizeof(nlmsgerr))) {
      r.kind = Reply::Error;
      r.error = EBADMSG;
      return r;
    }
    auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(m));
    r.kind = e->error ? Reply::Error : Reply::Ack;
    r.error = -e->error;
  }
  return r;
}

std::optional<Table> decodeTable(const nlmsghdr* m) {
  if (m->nlmsg_type != nftMsg(NFT_MSG_NEWTABLE) || m->nlmsg_len < kHeader) return std::nullopt;
  Attrs a;
  if (mnl_attr_parse(m, sizeof(nfgenmsg), Attrs::cb, &a) < 0) return std::nullopt;
  Table t{std::string(strAttr(a.tb[NFTA_TABLE_NAME])), std::nullopt};
  if (!a.tb[NFTA_TABLE_USERDATA]) return t;
  // libnftnl user data: { u8 type, u8 len, value[len] }*; type 0 (NFTNL_UDATA_TABLE_COMMENT)
  // is the comment, NUL-terminated.
  auto* p = static_cast<const uint8_t*>(mnl_attr_get_payload(a.tb[NFTA_TABLE_USERDATA]));
  size_t n = mnl_attr_get_payload_len(a.tb[NFTA_TABLE_USERDATA]);
  for (size_t i = 0; i + 2 <= n && i + 2 + p[i + 1] <= n; i += 2 + p[i + 1]) {
    if (p[i] != 0) continue;
    auto* c = reinterpret_cast<const char*>(p + i + 2);
    t.comment = std::string(c, strnlen(c, p[i + 1]));
    break;
  }
  return t;
}

std::optional<uint32_t> decodeGeneration(const nlmsghdr* m) {
  if (m->nlmsg_type != nftMsg(NFT_MSG_NEWGEN) || m->nlmsg_len < kHeader) return std::nullopt;
  Attrs a;
  if (mnl_attr_parse(m, sizeof(nfgenmsg), Attrs::cb, &a) < 0 || !a.tb[NFTA_GEN_ID] ||
      mnl_attr_get_payload_len(a.tb[NFTA_GEN_ID]) != 4)
    return std::nullopt;
  return ntohl(mnl_attr_get_u32(a.tb[NFTA_GEN_ID]));
}

std::optional<ElementList> forEachElement(const nlmsghdr* m,
                                          const std::function<void(const Element&)>& fn) {
  const uint16_t t = m->nlmsg_type;
  if (t != nftMsg(NFT_MSG_NEWSETELEM) && t != nftMsg(NFT_MSG_DELSETELEM) &&
      t != nftMsg(NFT_MSG_GETSETELEM))
    return std::nullopt;
  if (m->nlmsg_len < kHeader) return std::nullopt;
  Attrs top;
  if (mnl_attr_parse(m, sizeof(nfgenmsg), Attrs::cb, &top) < 0) return std::nullopt;
  ElementList out;
  out.type = static_cast<uint16_t>(t & 0xff);
  out.flags = m->nlmsg_flags;
  out.family = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(m))->nfgen_family;
  out.table = strAttr(top.tb[NFTA_SET_ELEM_LIST_TABLE]);
  out.set = strAttr(top.tb[NFTA_SET_ELEM_LIST_SET]);
  const nlattr* list = top.tb[NFTA_SET_ELEM_LIST_ELEMENTS];
  if (!list) return out;
  // Validate the whole list before calling fn (a malformed message yields nothing).
  const auto* first = static_cast<const nlattr*>(mnl_attr_get_payload(list));
  const char* end = static_cast<const char*>(mnl_attr_get_payload(list)) + mnl_attr_get_payload_len(list);
  auto walk = [&](bool call) {
    for (auto* e = first; mnl_attr_ok(e, static_cast<int>(end - reinterpret_cast<const char*>(e)));
         e = mnl_attr_next(e)) {
      Attrs el;
      if (mnl_attr_parse_nested(e, Attrs::cb, &el) < 0) return false;
      Element x{dataValue(el.tb[NFTA_SET_ELEM_KEY]), dataValue(el.tb[NFTA_SET_ELEM_DATA])};
      if (x.key.empty()) return false;
      x.keyEnd = dataValue(el.tb[NFTA_SET_ELEM_KEY_END]);
      if (const nlattr* u = el.tb[NFTA_SET_ELEM_USERDATA])
        x.userdata = {static_cast<const uint8_t*>(mnl_attr_get_payload(u)),
                      mnl_attr_get_payload_len(u)};
      if (el.tb[NFTA_SET_ELEM_EXPR]) {
        x.counter = counterExpr(el.tb[NFTA_SET_ELEM_EXPR]);
      } else if (const nlattr* list = el.tb[NFTA_SET_ELEM_EXPRESSIONS]) {
        const auto* p = static_cast<const char*>(mnl_attr_get_payload(list));
        int left = static_cast<int>(mnl_attr_get_payload_len(list));
        for (auto* ex = reinterpret_cast<const nlattr*>(p); mnl_attr_ok(ex, left);
             ex = mnl_attr_next(ex)) {
          left -= static_cast<int>(MNL_ALIGN(ex->nla_len));
          if ((x.counter = counterExpr(ex))) break;
        }
      }
      if (call) fn(x);
    }
    return true;
  };
  if (!walk(false)) return std::nullopt;
  walk(true);
  return out;
}

std::optional<std::string> elementComment(const Element& e) {
  const auto& p = e.userdata;
  for (size_t i = 0; i + 2 <= p.size() && i + 2 + p[i + 1] <= p.size(); i += 2 + p[i + 1]) {
    if (p[i] != 0) continue;
    auto* c = reinterpret_cast<const char*>(p.data() + i + 2);
    return std::string(c, strnlen(c, p[i + 1]));
  }
  return std::nullopt;
}

std::optional<EndpointElement> endpointElement(const Element& e) {
  const size_t klen = e.key.size();
  if (klen != 8 && klen != 20) return std::nullopt;
  auto comment = elementComment(e);
  if (!comment) return std::nullopt;
  auto ep = IpAddress::parse(*comment);
  if (!ep) return std::nullopt;
  EndpointElement out;
  out.vip = IpAddress::fromBytes(klen == 8 ? Family::V4 : Family::V6, e.key.data());
  std::memcpy(&out.mark, e.key.data() + klen - 4, 4);
  out.endpoint = *ep;
  return out;
}

std::optional<std::pair<IpAddress, dp::SourceInterval>> sourceElement(const Element& e) {
  const size_t klen = e.key.size();
  if ((klen != 8 && klen != 32) || e.keyEnd.size() != klen) return std::nullopt;
  const size_t a = klen / 2;
  if (std::memcmp(e.key.data(), e.keyEnd.data(), a) != 0) return std::nullopt;
  const Family f = klen == 8 ? Family::V4 : Family::V6;
  return std::make_pair(IpAddress::fromBytes(f, e.key.data()),
                        dp::SourceInterval{IpAddress::fromBytes(f, e.key.data() + a),
                                           IpAddress::fromBytes(f, e.keyEnd.data() + a)});
}

std::optional<NamedCounter> decodeCounterObject(const nlmsghdr* m) {
  if (m->nlmsg_type != nftMsg(NFT_MSG_NEWOBJ) || m->nlmsg_len < kHeader) return std::nullopt;
  Attrs a;
  if (mnl_attr_parse(m, sizeof(nfgenmsg), Attrs::cb, &a) < 0) return std::nullopt;
  if (!a.tb[NFTA_OBJ_TYPE] || mnl_attr_get_payload_len(a.tb[NFTA_OBJ_TYPE]) != 4 ||
      ntohl(mnl_attr_get_u32(a.tb[NFTA_OBJ_TYPE])) != NFT_OBJECT_COUNTER || !a.tb[NFTA_OBJ_DATA])
    return std::nullopt;
  auto v = counterData(a.tb[NFTA_OBJ_DATA]);
  if (!v) return std::nullopt;
  return NamedCounter{std::string(strAttr(a.tb[NFTA_OBJ_TABLE])),
                      std::string(strAttr(a.tb[NFTA_OBJ_NAME])), *v};
}

std::optional<IpAddress> vipElement(const Element& e) {
  if (e.key.size() == 4) return IpAddress::fromBytes(Family::V4, e.key.data());
  if (e.key.size() == 16) return IpAddress::fromBytes(Family::V6, e.key.data());
  return std::nullopt;
}

std::optional<dp::SlotMark> liveElement(const Element& e) {
  const size_t klen = e.key.size();
  if ((klen != 8 && klen != 20) || !e.data.empty()) return std::nullopt;
  uint32_t mark;
  std::memcpy(&mark, e.key.data() + klen - 4, 4);
  return dp::SlotMark{IpAddress::fromBytes(klen == 8 ? Family::V4 : Family::V6, e.key.data()), mark};
}

bool addBucketElement(const Element& e, dp::BucketMap& buckets, bool replace) {
  const size_t klen = e.key.size();
  if ((klen != 8 && klen != 20) || e.data.size() != 4) return false;
  uint32_t mark, slotMark;
  std::memcpy(&mark, e.key.data() + klen - 4, 4);
  std::memcpy(&slotMark, e.data.data(), 4);
  auto ip = IpAddress::fromBytes(klen == 8 ? Family::V4 : Family::V6, e.key.data());
  // Keys outside the dense bucket range are not representable (the classifier never looks
  // them up): skipped.
  if (mark < kBucketMarkBase || mark - kBucketMarkBase >= dp::BucketMap::kMaxBuckets) return true;
  uint32_t data = slotMark == 0 ? dp::BucketMap::kForeignZeroMark : slotMark;
  if (replace) buckets.set(ip, mark - kBucketMarkBase, data);
  else buckets.insert(ip, mark - kBucketMarkBase, data);
  return true;
}

bool addCountElement(const Element& e, std::map<IpAddress, uint32_t>& counts) {
  auto ip = vipElement(e);
  if (!ip || e.data.size() != 4) return false;
  uint32_t data;
  std::memcpy(&data, e.data.data(), 4);
  // Only the daemon's data is a count; anything else stays visible to the diff (replaced).
  counts[*ip] = countOfData(data);
  return true;
}

std::optional<std::vector<const nlmsghdr*>> split(std::span<const uint8_t> buf) {
  // Not mnl_nlmsg_ok(): it compares the length as an int, so a length ≥ 2^31 passes.
  std::vector<const nlmsghdr*> out;
  size_t off = 0;
  while (off < buf.size()) {
    nlmsghdr h;
    if (buf.size() - off < sizeof h) return std::nullopt;
    std::memcpy(&h, buf.data() + off, sizeof h);
    if (h.nlmsg_len < sizeof h || h.nlmsg_len > buf.size() - off) return std::nullopt;
    out.push_back(reinterpret_cast<const nlmsghdr*>(buf.data() + off));
    off += MNL_ALIGN(h.nlmsg_len);  // the last message's padding may be absent
  }
  return out;
}

Result<DecodedBatch> decodeBatch(std::span<const uint8_t> buf) {
  auto msgs = split(buf);
  if (!msgs) return fail(EINVAL, "nft batch: inconsistent message lengths");
  auto isBatch = [](const nlmsghdr* m, uint16_t type) {
    if (m->nlmsg_type != type || m->nlmsg_len < kHeader) return false;
    auto* g = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(m));
    return ntohs(g->res_id) == NFNL_SUBSYS_NFTABLES;
  };
  if (msgs->size() < 2 || !isBatch(msgs->front(), NFNL_MSG_BATCH_BEGIN) ||
      !isBatch(msgs->back(), NFNL_MSG_BATCH_END))
    return fail(EINVAL, "nft batch: not framed by BATCH_BEGIN/BATCH_END for nf_tables");
  DecodedBatch out;
  {
    Attrs a;
    if (mnl_attr_parse(msgs->front(), sizeof(nfgenmsg), Attrs::cb, &a) < 0)
      return fail(EINVAL, "nft batch: malformed BATCH_BEGIN");
    if (a.tb[NFNL_BATCH_GENID]) {
      if (mnl_attr_get_payload_len(a.tb[NFNL_BATCH_GENID]) != 4)
        return fail(EINVAL, "nft batch: malformed NFNL_BATCH_GENID");
      out.genid = ntohl(mnl_attr_get_u32(a.tb[NFNL_BATCH_GENID]));
    }
  }
  for (size_t i = 1; i + 1 < msgs->size(); ++i) {
    const nlmsghdr* m = (*msgs)[i];
    DecodedBatch::Message msg;
    msg.seq = m->nlmsg_seq;
    auto list = forEachElement(m, [&](const Element& e) { msg.elements.push_back(e); });
    if (!list || list->type == NFT_MSG_GETSETELEM)
      return fail(EINVAL, fmt::format("nft batch: message {} (type {:#x}) is not an element "
                                      "change", i, m->nlmsg_type));
    msg.list = *list;
    out.messages.push_back(std::move(msg));
  }
  return out;
}

// ---- notifications ----

std::optional<Notification> decodeNotification(const nlmsghdr* m) {
  if ((m->nlmsg_type >> 8) != NFNL_SUBSYS_NFTABLES || m->nlmsg_len < kHeader) return std::nullopt;
  Attrs a;
  if (mnl_attr_parse(m, sizeof(nfgenmsg), Attrs::cb, &a) < 0) return std::nullopt;
  Notification n;
  n.type = static_cast<uint16_t>(m->nlmsg_type & 0xff);
  n.portid = m->nlmsg_pid;
  n.family = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(m))->nfgen_family;
  if (n.type == NFT_MSG_NEWGEN) {
    if (!a.tb[NFTA_GEN_ID] || mnl_attr_get_payload_len(a.tb[NFTA_GEN_ID]) != 4)
      return std::nullopt;
    n.genid = ntohl(mnl_attr_get_u32(a.tb[NFTA_GEN_ID]));
    if (a.tb[NFTA_GEN_PROC_PID] && mnl_attr_get_payload_len(a.tb[NFTA_GEN_PROC_PID]) == 4)
      n.procPid = ntohl(mnl_attr_get_u32(a.tb[NFTA_GEN_PROC_PID]));
    n.procName = strAttr(a.tb[NFTA_GEN_PROC_NAME]);
    return n;
  }
  // Attribute 1 is the table in every object message (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE,
  // NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE,
  // NFTA_FLOWTABLE_TABLE).
  static_assert(NFTA_TABLE_NAME == 1 && NFTA_CHAIN_TABLE == 1 && NFTA_RULE_TABLE == 1 &&
                NFTA_SET_TABLE == 1 && NFTA_SET_ELEM_LIST_TABLE == 1 && NFTA_OBJ_TABLE == 1 &&
                NFTA_FLOWTABLE_TABLE == 1);
  n.table = strAttr(a.tb[1]);
  return n;
}

CommitFollower::CommitFollower(std::string table, uint32_t defaultBuckets, uint32_t bucketCap)
    : table_(std::move(table)), defaultBuckets_(defaultBuckets), bucketCap_(bucketCap) {}

void CommitFollower::reset(uint32_t gen) {
  gen_ = gen;
  broken_ = false;
  recorded_ = 0;
  open_ = {};
  done_.clear();
}

void CommitFollower::feed(const nlmsghdr* m) {
  if (broken_) return;
  auto n = decodeNotification(m);
  if (!n) {
    broken_ = true;
    return;
  }
  if (n->type == NFT_MSG_NEWGEN) {
    Commit c = std::move(open_);
    open_ = {};
    // A commit already in the observed state (announced before the observation's GETGEN
    // but received after it): dropped.
    if (static_cast<int32_t>(n->genid - gen_) <= 0) {
      recorded_ -= std::min(recorded_, c.changes.size());
      return;
    }
    if (n->genid != nextGeneration(gen_)) {  // a commit never announced to this socket
      broken_ = true;
      return;
    }
    gen_ = n->genid;
    c.gen = n->genid;
    c.port = n->portid;
    if (!c.touches()) return;
    if (done_.size() >= kMaxCommits) {
      broken_ = true;
      return;
    }
    done_.push_back(std::move(c));
    return;
  }
  if (n->table.empty()) {  // not an object of a table: nothing the follower can place
    open_.unknown = true;
    return;
  }
  if (n->family != NFPROTO_INET || n->table != table_) return;  // another table
  if (ownPort_ && n->portid == ownPort_) return;                 // the client's own batch
  if (n->type == NFT_MSG_NEWSETELEM || n->type == NFT_MSG_DELSETELEM) {
    elements(m, *n);
  } else {
    open_.unknown = true;  // the table, a chain, a rule, a set, an object: not followed
  }
}

void CommitFollower::elements(const nlmsghdr* m, const Notification& n) {
  std::vector<Element> els;
  auto list = forEachElement(m, [&](const Element& e) { els.push_back(e); });
  if (!list) {
    open_.unknown = true;
    return;
  }
  const std::string_view set = list->set;
  if (set == "flow4" || set == "flow6") return;  // the flow maps are not observed
  const SetShape* shape = setShape(set);
  if (!shape) {  // a set the daemon does not declare
    open_.unknown = true;
    return;
  }
  const bool add = n.type == NFT_MSG_NEWSETELEM;
  const std::string_view base = set.substr(0, set.size() - 1);
  SetKind kind = SetKind::Bucket;
  if (base == "b2s") kind = SetKind::Bucket;
  else if (base == "live") kind = SetKind::Live;
  else if (base == "vip") kind = SetKind::Vip;
  else if (base == "refused") kind = SetKind::Refused;
  else if (base == "ranged") kind = SetKind::Ranged;
  else if (base == "bcount") kind = SetKind::Count;
  else if (base == "ep") kind = SetKind::Endpoint;
  else if (base == "src") kind = SetKind::Source;
  else {
    open_.unknown = true;
    return;
  }
  for (const Element& e : els) {
    // Of the set's declared shape, else not the daemon's set as it knows it.
    if (e.key.size() != shape->keyLen ||
        (add && shape->dataLen && e.data.size() != shape->dataLen)) {
      open_.unknown = true;
      return;
    }
    Change c;
    c.set = kind;
    c.add = add;
    const size_t klen = e.key.size();
    const Family f = set.back() == '4' ? Family::V4 : Family::V6;
    c.vip = IpAddress::fromBytes(f, e.key.data());
    if (klen == 8 || klen == 20) std::memcpy(&c.mark, e.key.data() + klen - 4, 4);
    if (add && e.data.size() == 4) std::memcpy(&c.data, e.data.data(), 4);
    if (kind == SetKind::Endpoint && add) {
      // An element without the daemon's comment is taken for nothing, as by the observation.
      auto ep = endpointElement(e);
      if (!ep) continue;
      c.endpoint = ep->endpoint;
    } else if (kind == SetKind::Source) {
      auto r = sourceElement(e);  // as the observation: an interval of another shape is skipped
      if (!r) continue;
      c.interval = r->second;
    }
    if (++recorded_ > kMaxChanges) {
      broken_ = true;
      return;
    }
    open_.changes.push_back(c);
  }
}

uint32_t CommitFollower::bucketsOf(const dp::NftState& st, const IpAddress& vip) const {
  auto c = st.vipBuckets.find(vip);
  return c == st.vipBuckets.end() || c->second > bucketCap_ ? defaultBuckets_ : c->second;
}

CommitFollower::Catchup CommitFollower::catchUp(dp::NftState& state, RawSets& raw, uint32_t at,
                                                bool lookedUp) {
  auto forget = [&](bool known) {
    done_.clear();
    recorded_ = open_.changes.size();
    return Catchup{known, gen_, {}};
  };
  // Behind `at`: the announcement of one of the client's own commits was not received.
  if (broken_ || static_cast<int32_t>(gen_ - at) < 0) return forget(false);
  auto after = [&](const Commit& c) { return static_cast<int32_t>(c.gen - at) > 0; };
  for (const Commit& c : done_)
    if (after(c) && (c.unknown || (ownPort_ && c.port == ownPort_))) return forget(false);
  // The small sets first (which VIPs are in the sets, their bucket counts), then the bucket
  // map: a bucket change counts for a VIP whose membership and count are the same before and
  // after (its held buckets are the old lookups); a VIP that entered the sets or changed its
  // count is looked up whole, one that left is dropped. Order matters within one set only.
  std::map<IpAddress, std::pair<bool, uint32_t>> before;  // VIP → (in the sets, bucket count)
  std::set<IpAddress> ranges;                             // VIPs whose source ranges changed
  auto touch = [&](const IpAddress& vip) {
    before.try_emplace(vip, state.vips.contains(vip), bucketsOf(state, vip));
  };
  auto toggle = [](std::set<IpAddress>& s, const IpAddress& v, bool add) {
    if (add) s.insert(v);
    else s.erase(v);
  };
  for (const Commit& c : done_) {
    if (!after(c)) continue;  // in the state already (the client's own tracked commits)
    for (const Change& x : c.changes) {
      switch (x.set) {
        case SetKind::Bucket: break;
        case SetKind::Live:
          if (x.add) state.live.insert({x.vip, x.mark});
          else state.live.erase({x.vip, x.mark});
          break;
        case SetKind::Vip:
          touch(x.vip);
          toggle(raw.vipSet, x.vip, x.add);
          break;
        case SetKind::Refused:
          touch(x.vip);
          toggle(raw.refused, x.vip, x.add);
          break;
        case SetKind::Count:
          touch(x.vip);
          if (x.add) state.vipBuckets[x.vip] = countOfData(x.data);
          else state.vipBuckets.erase(x.vip);
          break;
        case SetKind::Ranged:
          ranges.insert(x.vip);
          toggle(raw.ranged, x.vip, x.add);
          break;
        case SetKind::Source: {
          ranges.insert(x.vip);
          auto& l = raw.sources[x.vip];
          if (x.add) l.push_back(x.interval);
          else if (auto it = std::ranges::find(l, x.interval); it != l.end()) l.erase(it);
          if (l.empty()) raw.sources.erase(x.vip);
          break;
        }
        case SetKind::Endpoint:
          if (x.add) {
            state.endpoints[x.vip][x.mark] = x.endpoint;
          } else if (auto it = state.endpoints.find(x.vip); it != state.endpoints.end()) {
            it->second.erase(x.mark);
            if (it->second.empty()) state.endpoints.erase(it);
          }
          break;
      }
    }
  }
  Catchup out{true, gen_, {}};
  for (const auto& [vip, was] : before) {
    const bool in = raw.vipSet.contains(vip) && raw.refused.contains(vip);
    if (in) state.vips.insert(vip);
    else state.vips.erase(vip);
    if (!lookedUp) continue;
    if (in && (!was.first || was.second != bucketsOf(state, vip))) {
      state.buckets.eraseVip(vip);
      out.lookup.push_back(vip);
    } else if (!in && was.first) {
      state.buckets.eraseVip(vip);
    }
  }
  for (const IpAddress& vip : ranges) {
    if (!raw.ranged.contains(vip)) {
      state.sourceRanges.erase(vip);
      continue;
    }
    auto it = raw.sources.find(vip);
    auto& l = state.sourceRanges[vip];
    l = it == raw.sources.end() ? std::vector<dp::SourceInterval>{} : it->second;
    std::sort(l.begin(), l.end());
  }
  for (const Commit& c : done_) {
    if (!after(c)) continue;
    for (const Change& x : c.changes) {
      if (x.set != SetKind::Bucket) continue;
      // As a lookup would see it: keys outside the dense range are never read, and with
      // lookups only the buckets below the count of a VIP in the VIP sets.
      if (x.mark < kBucketMarkBase || x.mark - kBucketMarkBase >= dp::BucketMap::kMaxBuckets)
        continue;
      const uint32_t bucket = x.mark - kBucketMarkBase;
      if (lookedUp && (!state.vips.contains(x.vip) || bucket >= bucketsOf(state, x.vip) ||
                       std::ranges::binary_search(out.lookup, x.vip)))
        continue;
      if (x.add)
        state.buckets.set(x.vip, bucket, x.data ? x.data : dp::BucketMap::kForeignZeroMark);
      else
        state.buckets.erase(x.vip, bucket);
    }
  }
  forget(true);
  return out;
}

uint32_t countOfData(uint32_t data) {
  const uint32_t count = data & ~kCountMarkBase;
  return (data & kCountMarkBase) && count != 0 && count <= dp::BucketMap::kMaxBuckets
             ? count
             : dp::NftState::kForeignCount;
}

}  // namespace kst::nft
