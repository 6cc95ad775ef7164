// The nfnetlink codec (linux/nft_codec.h) against what nft 1.0.6 sends for the same commands and
// what the kernel (6.18) answers: tests/data/nft/*.hex, captured by tools/nft/capture.sh (the
// command is in the first line of each file, each message is preceded by a '#' line).
//
// Requests are compared byte for byte after normalising only what legitimately differs:
//   * nlmsg_seq and nlmsg_pid (nft numbers a batch from 0; the daemon's socket continues its
//     own counter; both send pid 0, which is zeroed anyway);
//   * attribute padding bytes (nft leaves whatever was in its buffer, e.g. 0x7f, after a name's
//     NUL; the kernel never reads padding);
//   * NLM_F_ACK on element messages in a batch and on GETGEN: the daemon asks for an ack per
//     message and waits for each (it learns the transaction's outcome without polling, and a
//     receive loop ends on the ack); nft sends none and polls. The kernel's work is the same;
//   * NFTA_SET_ELEM_LIST_SET_ID on nft's NEWSETELEM: nft numbers every set in its cache and
//     sends the number along; the kernel uses it only to find a set created earlier in the same
//     batch, and looks an existing set up by name first. The daemon's sets always exist.
// Everything else — message types, flags, family, attribute order and nesting flags, key and
// data bytes — must be identical. Replies are decoded and checked against the state the
// capture script left in the kernel.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include <endian.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <tuple>

#include "desired/nft_render.h"
#include "linux/nft_codec.h"
#include "unit/netlink_golden.h"

#ifndef KST_TEST_DATA_DIR
#error "KST_TEST_DATA_DIR must point at tests/data"
#endif

namespace kst::nft {
namespace {

const std::string kTable = "kube_service_tunnel";
IpAddress ip(const char* s) { return *IpAddress::parse(s); }

/** The bytes of a capture (all its messages, in order). */
Bytes golden(const std::string& name) {
  return nl::golden_bytes::readHexBytes(std::string(KST_TEST_DATA_DIR) + "/nft/" + name + ".hex",
                                        name);
}

std::vector<Bytes> messagesOf(const Bytes& buf) {
  auto msgs = split(buf);
  EXPECT_TRUE(msgs.has_value()) << "inconsistent lengths";
  std::vector<Bytes> out;
  if (!msgs) return out;
  for (auto* m : *msgs) {
    auto* p = reinterpret_cast<const uint8_t*>(m);
    out.emplace_back(p, p + m->nlmsg_len);
  }
  return out;
}

std::string hex(const Bytes& b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < b.size(); ++i) {
    if (i && i % 4 == 0) s.push_back(i % 16 ? ' ' : '\n');
    s.push_back(d[b[i] >> 4]);
    s.push_back(d[b[i] & 15]);
  }
  return s;
}

/** Attributes re-emitted with zeroed padding, dropping top-level attribute `drop` (0: none);
 *  nests (NLA_F_NESTED, as both nft and libmnl flag them) are walked. */
void rewrite(const uint8_t* p, size_t len, uint16_t drop, Bytes& out) {
  size_t off = 0;
  while (off + sizeof(nlattr) <= len) {
    nlattr a;
    std::memcpy(&a, p + off, sizeof a);
    ASSERT_GE(a.nla_len, sizeof(nlattr));
    ASSERT_LE(off + a.nla_len, len);
    const size_t aligned = MNL_ALIGN(a.nla_len);
    if ((a.nla_type & NLA_TYPE_MASK) != drop || drop == 0) {
      size_t at = out.size();
      out.insert(out.end(), p + off, p + off + sizeof(nlattr));
      if (a.nla_type & NLA_F_NESTED) {
        rewrite(p + off + sizeof(nlattr), a.nla_len - sizeof(nlattr), 0, out);
      } else {
        out.insert(out.end(), p + off + sizeof(nlattr), p + off + a.nla_len);
        out.resize(at + aligned, 0);
      }
    }
    off += aligned;
  }
  ASSERT_EQ(off, len) << "trailing bytes";
}

struct Norm {
  bool clearAck = false;   // ours: drop NLM_F_ACK from element messages
  uint16_t dropAttr = 0;   // nft's: drop this top-level attribute
};

Bytes normalise(const Bytes& m, const Norm& n) {
  Bytes out(m.begin(), m.begin() + sizeof(nlmsghdr) + sizeof(nfgenmsg));
  rewrite(m.data() + out.size(), m.size() - out.size(), n.dropAttr, out);
  auto* h = reinterpret_cast<nlmsghdr*>(out.data());
  h->nlmsg_len = static_cast<uint32_t>(out.size());
  h->nlmsg_seq = 0;
  h->nlmsg_pid = 0;
  const uint16_t t = h->nlmsg_type;
  const bool element = t == ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM) ||
                       t == ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM);
  if (n.clearAck && element) h->nlmsg_flags &= ~NLM_F_ACK;
  return out;
}

/** Our batch vs nft's, message by message. */
void expectSameBatch(const std::string& name, const Bytes& ours) {
  SCOPED_TRACE(name);
  auto g = messagesOf(golden(name));
  auto o = messagesOf(ours);
  ASSERT_EQ(o.size(), g.size());
  for (size_t i = 0; i < g.size(); ++i) {
    SCOPED_TRACE("message " + std::to_string(i));
    // Our element messages do ask for the ack nft does not.
    auto* oh = reinterpret_cast<const nlmsghdr*>(o[i].data());
    if (i > 0 && i + 1 < g.size()) {
      EXPECT_TRUE(oh->nlmsg_flags & NLM_F_ACK);
    }
    EXPECT_EQ(hex(normalise(o[i], {.clearAck = true})),
              hex(normalise(g[i], {.dropAttr = NFTA_SET_ELEM_LIST_SET_ID})));
  }
}

void expectSameRequest(const std::string& name, const Bytes& ours) {
  SCOPED_TRACE(name);
  auto g = messagesOf(golden(name));
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(hex(normalise(ours, {})), hex(normalise(g[0], {})));
}

Bytes batchOf(const dp::NftElementChanges& ch, std::vector<uint32_t>* ackedOut = nullptr) {
  uint32_t seq = 41;
  std::vector<uint32_t> acked;
  Bytes b = encodeElementChanges(kTable, ch, seq, acked);
  if (ackedOut) *ackedOut = acked;
  return b;
}

// ---- batches ----

TEST(NftCodecGolden, AddBucketsIpv4) {
  dp::NftElementChanges ch;
  ch.bucketAdds = {{ip("203.0.113.10"), 0, 1000}, {ip("203.0.113.10"), 63, 1001}};
  expectSameBatch("add_b2s4", batchOf(ch));
}

TEST(NftCodecGolden, AddBucketsIpv6) {
  dp::NftElementChanges ch;
  ch.bucketAdds = {{ip("2001:db8::10"), 1, 1002}};
  expectSameBatch("add_b2s6", batchOf(ch));
}

/** One batch of plain elements (no data) of one set. */
Bytes plainBatch(bool add, std::string_view set, const std::vector<IpAddress>& ips) {
  uint32_t seq = 0;
  BatchEncoder enc(kTable, seq);
  for (auto& v : ips) enc.element(add, set, {v.data(), v.size()}, nullptr);
  return enc.finish();
}

TEST(NftCodecGolden, AddVips) {
  expectSameBatch("add_vip4", plainBatch(true, "vip4", {ip("203.0.113.10"), ip("198.51.100.1")}));
  expectSameBatch("add_vip6", plainBatch(true, "vip6", {ip("2001:db8::10")}));
  expectSameBatch("add_refused4", plainBatch(true, "refused4", {ip("203.0.113.10")}));
  expectSameBatch("add_ranged4", plainBatch(true, "ranged4", {ip("203.0.113.10")}));
  // A VIP change is its VIP set's element and its refused set's, in the daemon's order.
  dp::NftElementChanges ch;
  ch.vipAdds = {ip("203.0.113.10")};
  auto b = decodeBatch(batchOf(ch));
  ASSERT_TRUE(b);
  ASSERT_EQ(b->messages.size(), 2u);
  EXPECT_EQ(b->messages[0].list.set, "refused4");
  EXPECT_EQ(b->messages[1].list.set, "vip4");
}

// Per-endpoint counter elements: key VIP . slot mark, the endpoint as the element's comment.
TEST(NftCodecGolden, EndpointCounterElements) {
  dp::NftElementChanges ch;
  ch.endpointAdds = {{ip("203.0.113.10"), 1000, ip("10.1.0.5")},
                     {ip("203.0.113.10"), 1001, ip("10.1.0.6")}};
  expectSameBatch("add_ep4", batchOf(ch));
  dp::NftElementChanges ch6;
  ch6.endpointAdds = {{ip("2001:db8::10"), 1000, ip("2001:db8:1::5")}};
  expectSameBatch("add_ep6", batchOf(ch6));
  dp::NftElementChanges del;
  del.endpointDeletes = {{ip("203.0.113.10"), 1001, ip("10.1.0.6")}};
  expectSameBatch("del_ep4", batchOf(del));
  // Decoded back (as the fake kernel and the observer read them).
  auto b = decodeBatch(golden("add_ep4"));
  ASSERT_TRUE(b);
  ASSERT_EQ(b->messages.at(0).elements.size(), 2u);
  auto e = endpointElement(b->messages[0].elements[1]);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->vip, ip("203.0.113.10"));
  EXPECT_EQ(e->mark, 1001u);
  EXPECT_EQ(e->endpoint, ip("10.1.0.6"));
}

// Source interval elements: key VIP . first, key end VIP . last (one element per interval).
TEST(NftCodecGolden, SourceIntervalElements) {
  dp::NftElementChanges ch;
  ch.rangeAdds = {{ip("203.0.113.10"), {ip("192.0.2.0"), ip("192.0.2.255")}},
                  {ip("203.0.113.10"), {ip("198.51.100.7"), ip("198.51.100.7")}}};
  expectSameBatch("add_src4", batchOf(ch));
  dp::NftElementChanges ch6;
  ch6.rangeAdds = {{ip("2001:db8::10"),
                    {ip("2001:db8:c::"), ip("2001:db8:c:ffff:ffff:ffff:ffff:ffff")}}};
  expectSameBatch("add_src6", batchOf(ch6));
  dp::NftElementChanges del;
  del.rangeDeletes = {{ip("203.0.113.10"), {ip("198.51.100.7"), ip("198.51.100.7")}}};
  expectSameBatch("del_src4", batchOf(del));
}

TEST(NftCodecGolden, DeleteElements) {
  dp::NftElementChanges ch;
  ch.bucketDeletes = {{ip("203.0.113.10"), 63, 0}};
  expectSameBatch("del_b2s4", batchOf(ch));
  expectSameBatch("del_vip4", plainBatch(false, "vip4", {ip("198.51.100.1")}));
}

// The daemon's transaction order (VIP deletions, bucket deletions, bucket additions, VIP
// additions) against `nft -f` of the same statements in the same order.
TEST(NftCodecGolden, MixedTransaction) {
  dp::NftElementChanges ch;
  ch.vipDeletes = {ip("2001:db8::10")};
  ch.bucketDeletes = {{ip("203.0.113.10"), 0, 1000}, {ip("2001:db8::10"), 1, 1002}};
  ch.bucketAdds = {{ip("203.0.113.10"), 0, 1003},
                   {ip("192.0.2.7"), 2, 1004},
                   {ip("2001:db8::20"), 0, 1005}};
  ch.vipAdds = {ip("192.0.2.7"), ip("2001:db8::20")};
  std::vector<uint32_t> acked;
  Bytes b = batchOf(ch, &acked);
  expectSameBatch("batch_mixed", b);
  // Sequence numbers: BATCH_BEGIN 42, the ten element messages 43…52 (each acked), END 53.
  EXPECT_EQ(acked, (std::vector<uint32_t>{43, 44, 45, 46, 47, 48, 49, 50, 51, 52}));
  auto msgs = messagesOf(b);
  EXPECT_EQ(reinterpret_cast<const nlmsghdr*>(msgs.front().data())->nlmsg_seq, 42u);
  EXPECT_EQ(reinterpret_cast<const nlmsghdr*>(msgs.back().data())->nlmsg_seq, 53u);
}

// Flow-table keys (bench/control_bench.cpp pins flows with them): flow4 = saddr . sport . daddr
// . dport, each in a 32-bit word (ports in network order, zero-padded), so the destination is at
// byte 8; flow6 = two 32-bit hashes in host order.
TEST(NftCodecGolden, FlowDeletions) {
  uint8_t k4[16] = {};
  std::memcpy(k4, ip("198.51.100.7").data(), 4);
  uint16_t sport = htons(40000), dport = htons(80);
  std::memcpy(k4 + 4, &sport, 2);
  std::memcpy(k4 + 8, ip("203.0.113.10").data(), 4);
  std::memcpy(k4 + 12, &dport, 2);
  uint32_t seq = 0;
  BatchEncoder e4(kTable, seq);
  e4.element(false, "flow4", k4, nullptr);
  expectSameBatch("del_flow4", e4.finish());

  uint32_t k6[2] = {0x11223344, 0x55667788};
  BatchEncoder e6(kTable, seq);
  e6.element(false, "flow6", {reinterpret_cast<const uint8_t*>(k6), 8}, nullptr);
  expectSameBatch("del_flow6", e6.finish());
}

// Live-slot elements (key VIP . mark, no data) in the transaction order of nft_render.cpp: after
// the merge with the counters and bucket counts, live deletions come after the bucket deletions
// (a released slot's live element goes with its buckets) and live additions first (a new slot
// is live before a bucket points at it); the VIPs (with their refused elements) stay outermost.
TEST(NftCodec, LiveSlotElementsInTransactionOrder) {
  dp::NftElementChanges ch;
  ch.vipDeletes = {ip("198.51.100.1")};
  ch.liveDeletes = {{ip("198.51.100.1"), 1000}, {ip("2001:db8::10"), 1001}};
  ch.bucketDeletes = {{ip("203.0.113.10"), 3, 0}};
  ch.bucketAdds = {{ip("203.0.113.10"), 3, 1002}};
  ch.liveAdds = {{ip("203.0.113.10"), 1002}};
  ch.vipAdds = {ip("192.0.2.7")};
  uint32_t seq = 0;
  std::vector<uint32_t> acked;
  auto b = encodeElementChanges(kTable, ch, seq, acked);
  auto batch = decodeBatch(b);
  ASSERT_TRUE(batch) << batch.error().message;
  std::vector<std::string> sets;
  for (auto& m : batch->messages)
    sets.push_back(std::string(m.list.type == NFT_MSG_NEWSETELEM ? "+" : "-") +
                   std::string(m.list.set));
  EXPECT_EQ(sets, (std::vector<std::string>{"-vip4", "-refused4", "-b2s4", "-live4", "-live6",
                                            "+live4", "+b2s4", "+refused4", "+vip4"}));
  // The keys decode back to the pairs; a live element is never taken for a VIP or a bucket.
  std::vector<dp::SlotMark> seen;
  for (auto& m : batch->messages)
    if (m.list.set.starts_with("live"))
      for (auto& e : m.elements) {
        ASSERT_TRUE(e.data.empty());
        EXPECT_FALSE(vipElement(e));
        auto l = liveElement(e);
        ASSERT_TRUE(l);
        seen.push_back(*l);
      }
  EXPECT_EQ(seen, (std::vector<dp::SlotMark>{{ip("198.51.100.1"), 1000},
                                            {ip("2001:db8::10"), 1001},
                                            {ip("203.0.113.10"), 1002}}));
  EXPECT_EQ(setShape("live4")->keyLen, 8u);
  EXPECT_EQ(setShape("live6")->keyLen, 20u);
}

// Messages are cut at kElementsPerMessage elements, and at every change of set or operation.
TEST(NftCodec, BatchSplitsMessages) {
  dp::NftElementChanges ch;
  for (uint32_t i = 0; i < 2500; ++i)
    ch.bucketAdds.push_back({IpAddress::fromV4(htonl(0xc0000200u + i / 64)), i % 64, 1000 + i % 7});
  ch.vipAdds = {ip("192.0.2.1")};
  std::vector<uint32_t> acked;
  Bytes b = batchOf(ch, &acked);
  auto batch = decodeBatch(b);
  ASSERT_TRUE(batch) << batch.error().message;
  ASSERT_EQ(batch->messages.size(), 5u);
  EXPECT_EQ(acked.size(), 5u);
  std::vector<size_t> sizes;
  for (auto& m : batch->messages) sizes.push_back(m.elements.size());
  EXPECT_EQ(sizes, (std::vector<size_t>{1000, 1000, 500, 1, 1}));
  EXPECT_EQ(batch->messages[3].list.set, "refused4");
  EXPECT_EQ(batch->messages[4].list.set, "vip4");
  // The reserve bound holds: the buffer never moved (capacity is what was reserved).
  size_t keyBytes = 2500 * 8 + 4;
  EXPECT_LE(b.size(), batchBytes(kTable, ch.size(), keyBytes, 2500));
  // Every element round-trips.
  dp::BucketMap got;
  for (size_t m = 0; m < 3; ++m)
    for (auto& e : batch->messages[m].elements) ASSERT_TRUE(addBucketElement(e, got));
  ASSERT_EQ(got.size(), 2500u);
  for (auto& a : ch.bucketAdds) EXPECT_EQ(got.at({a.vip, a.bucket}), a.mark);
}

// Bucket count elements (bcount4/bcount6): key the VIP, data kCountMarkBase | count, in the
// batch order VIP deletions, count deletions, buckets, count additions, VIP additions; decoded
// back to the count (anything without the flag is foreign).
TEST(NftCodec, BucketCountElementsRoundTrip) {
  dp::NftElementChanges ch;
  ch.countDeletes = {{ip("192.0.2.1"), 0}};
  ch.countAdds = {{ip("192.0.2.1"), 128}, {ip("2001:db8::1"), 64}};
  ch.bucketAdds = {{ip("192.0.2.1"), 100, 1001}};
  ch.vipAdds = {ip("2001:db8::1")};
  std::vector<uint32_t> acked;
  Bytes b = batchOf(ch, &acked);
  auto batch = decodeBatch(b);
  ASSERT_TRUE(batch) << batch.error().message;
  std::vector<std::string> sets;
  for (auto& m : batch->messages) sets.push_back(std::string(m.list.set));
  // A VIP addition adds its refused-packet counter element too (refused6), before the VIP.
  EXPECT_EQ(sets, (std::vector<std::string>{"bcount4", "b2s4", "bcount4", "bcount6", "refused6",
                                            "vip6"}));
  EXPECT_EQ(batch->messages[0].list.type, NFT_MSG_DELSETELEM);
  std::map<IpAddress, uint32_t> counts;
  for (size_t m : {2u, 3u})
    for (auto& e : batch->messages[m].elements) {
      EXPECT_EQ(e.key.size(), setShape(batch->messages[m].list.set)->keyLen);
      ASSERT_TRUE(addCountElement(e, counts));
    }
  EXPECT_EQ(counts, (std::map<IpAddress, uint32_t>{{ip("192.0.2.1"), 128}, {ip("2001:db8::1"), 64}}));
  const uint8_t key[4] = {192, 0, 2, 9};
  const uint32_t foreign = 64;  // no kCountMarkBase flag
  Element e{{key, 4}, {reinterpret_cast<const uint8_t*>(&foreign), 4}};
  ASSERT_TRUE(addCountElement(e, counts));
  EXPECT_EQ(counts.at(ip("192.0.2.9")), dp::NftState::kForeignCount);
  EXPECT_FALSE(addCountElement({{key, 3}, {reinterpret_cast<const uint8_t*>(&foreign), 4}}, counts));
}

// ---- requests ----

TEST(NftCodecGolden, Requests) {
  expectSameRequest("list_table", getTableRequest(kTable, 7));
  expectSameRequest("dump_b2s4", dumpElementsRequest(kTable, "b2s4", 7));
  expectSameRequest("get_b2s4", getElementsRequest(kTable, "b2s4", 1,
                                                   [](size_t, uint8_t(&k)[20]) {
                                                     return bucketKey(ip("192.0.2.7"), 2, k);
                                                   },
                                                   7));
}

// The ruleset generation: nft's GETGEN, the kernel's NEWGEN (14 commits in the capture's
// namespace before it), and a batch conditioned on a generation (NFNL_BATCH_GENID, be32).
TEST(NftCodecGolden, Generation) {
  // Ours asks for an ack (nft's does not): the receive loop ends on it.
  Bytes gen = getGenRequest(7);
  EXPECT_EQ(reinterpret_cast<const nlmsghdr*>(gen.data())->nlmsg_flags, NLM_F_REQUEST | NLM_F_ACK);
  reinterpret_cast<nlmsghdr*>(gen.data())->nlmsg_flags &= ~NLM_F_ACK;
  expectSameRequest("getgen", gen);
  Bytes reply = golden("getgen_reply");
  auto msgs = split(reply);
  ASSERT_TRUE(msgs && msgs->size() == 1);
  EXPECT_EQ(decodeGeneration((*msgs)[0]), 14u);
  EXPECT_FALSE(decodeGeneration(reinterpret_cast<const nlmsghdr*>(golden("list_table").data())));

  uint32_t seq = 0;
  BatchEncoder enc(kTable, seq, 0, 0x01020304);
  const IpAddress v = ip("192.0.2.1");
  enc.element(true, "vip4", {v.data(), v.size()}, nullptr);
  Bytes b = enc.finish();
  auto begin = messagesOf(b).at(0);
  EXPECT_EQ(hex(begin), hex(Bytes{0x1c, 0, 0, 0, 0x10, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0,
                                  0, 0, 0, 0x0a, 8, 0, 1, 0, 1, 2, 3, 4}));
  auto batch = decodeBatch(b);
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->genid, 0x01020304u);
  EXPECT_EQ(batch->messages.size(), 1u);
  EXPECT_EQ(decodeBatch(golden("add_vip4"))->genid, 0u);  // nft sends none
  EXPECT_EQ(nextGeneration(41), 42u);
  EXPECT_EQ(nextGeneration(0xffffffffu), 1u);  // the kernel skips 0
}

// ---- replies ----

struct Collected {
  std::set<IpAddress> vips;
  dp::BucketMap buckets;
  std::vector<Reply::Kind> kinds;
  std::vector<int> errors;
  std::vector<ElementList> lists;
};

Collected decodeAll(const std::string& name) {
  Collected c;
  Bytes buf = golden(name);
  auto msgs = split(buf);
  EXPECT_TRUE(msgs.has_value());
  if (!msgs) return c;
  for (auto* m : *msgs) {
    Reply r = classify(m);
    c.kinds.push_back(r.kind);
    c.errors.push_back(r.error);
    if (r.kind != Reply::Data) continue;
    auto l = forEachElement(m, [&](const Element& e) {
      if (e.data.empty()) {
        auto v = vipElement(e);
        EXPECT_TRUE(v.has_value());
        if (v) c.vips.insert(*v);
      } else {
        EXPECT_TRUE(addBucketElement(e, c.buckets));
      }
    });
    if (l) c.lists.push_back(*l);
  }
  return c;
}

// The kernel's dump of b2s4 after the captures' transactions: two elements, then an empty
// NEWSETELEM (the kernel's end of the set) and NLMSG_DONE.
TEST(NftCodecGolden, DumpReplies) {
  auto b4 = decodeAll("dump_b2s4_reply");
  EXPECT_EQ(b4.kinds, (std::vector<Reply::Kind>{Reply::Data, Reply::Data, Reply::Done}));
  dp::BucketMap want;
  want.set(ip("203.0.113.10"), 0, 1003);
  want.set(ip("192.0.2.7"), 2, 1004);
  EXPECT_EQ(b4.buckets, want);
  ASSERT_EQ(b4.lists.size(), 2u);
  EXPECT_EQ(b4.lists[0].table, kTable);
  EXPECT_EQ(b4.lists[0].set, "b2s4");
  EXPECT_EQ(b4.lists[0].type, NFT_MSG_NEWSETELEM);
  EXPECT_TRUE(b4.lists[0].flags & NLM_F_MULTI);

  auto b6 = decodeAll("dump_b2s6_reply");
  dp::BucketMap want6;
  want6.set(ip("2001:db8::20"), 0, 1005);
  EXPECT_EQ(b6.buckets, want6);

  EXPECT_EQ(decodeAll("dump_vip4_reply").vips,
            (std::set<IpAddress>{ip("203.0.113.10"), ip("192.0.2.7")}));
  EXPECT_EQ(decodeAll("dump_vip6_reply").vips, (std::set<IpAddress>{ip("2001:db8::20")}));
}

// Dumps of the counter sets: each element carries its counter (NFTA_SET_ELEM_EXPR "counter"),
// ep elements their comment, src elements their key end. The named counters (GETOBJ).
TEST(NftCodecGolden, CounterAndSourceDumps) {
  std::vector<std::tuple<IpAddress, uint32_t, IpAddress>> eps;
  std::vector<std::pair<IpAddress, dp::SourceInterval>> srcs;
  std::vector<IpAddress> refused;
  size_t counted = 0;
  for (const char* name : {"dump_ep4_reply", "dump_ep6_reply", "dump_src4_reply",
                           "dump_src6_reply", "dump_refused4_reply"}) {
    Bytes buf = golden(name);
    auto msgs = split(buf);
    ASSERT_TRUE(msgs);
    for (auto* m : *msgs) {
      forEachElement(m, [&](const Element& e) {
        if (e.counter) {
          ++counted;
          EXPECT_EQ(*e.counter, (dp::CounterValue{0, 0}));  // no traffic in the capture
        }
        if (auto ep = endpointElement(e)) eps.emplace_back(ep->vip, ep->mark, ep->endpoint);
        else if (auto r = sourceElement(e)) srcs.push_back(*r);
        else if (auto v = vipElement(e)) refused.push_back(*v);
      });
    }
  }
  // ep4 after del_ep4: one left; ep6: one.
  EXPECT_EQ(eps, (std::vector<std::tuple<IpAddress, uint32_t, IpAddress>>{
                     {ip("203.0.113.10"), 1000, ip("10.1.0.5")},
                     {ip("2001:db8::10"), 1000, ip("2001:db8:1::5")}}));
  EXPECT_EQ(srcs, (std::vector<std::pair<IpAddress, dp::SourceInterval>>{
                      {ip("203.0.113.10"), {ip("192.0.2.0"), ip("192.0.2.255")}},
                      {ip("2001:db8::10"),
                       {ip("2001:db8:c::"), ip("2001:db8:c:ffff:ffff:ffff:ffff:ffff")}}}));
  // refused4: the mixed transaction's VIP and add_refused4's.
  EXPECT_EQ(std::set<IpAddress>(refused.begin(), refused.end()),
            (std::set<IpAddress>{ip("192.0.2.7"), ip("203.0.113.10")}));
  EXPECT_EQ(refused.size(), 2u);
  EXPECT_EQ(counted, 2u + 2u);  // ep and refused elements have counters; src elements none

  expectSameRequest("dump_counters", dumpObjectsRequest(kTable, 7));
  std::map<std::string, dp::CounterValue> named;
  Bytes reply = golden("dump_counters_reply");
  auto msgs = split(reply);
  ASSERT_TRUE(msgs);
  std::vector<Reply::Kind> kinds;
  for (auto* m : *msgs) {
    kinds.push_back(classify(m).kind);
    if (auto c = decodeCounterObject(m)) {
      EXPECT_EQ(c->table, kTable);
      named[c->name] = c->value;
    }
  }
  EXPECT_EQ(kinds,
            (std::vector<Reply::Kind>{Reply::Data, Reply::Data, Reply::Data, Reply::Done}));
  EXPECT_EQ(named, (std::map<std::string, dp::CounterValue>{{"refused_no_bucket", {0, 0}},
                                                            {"refused_source_range", {0, 0}},
                                                            {"new_flows", {0, 0}}}));
  EXPECT_FALSE(decodeCounterObject(reinterpret_cast<const nlmsghdr*>(golden("list_table").data())));
}

// A counter's values are big-endian u64 (packets, bytes): decoded from a dump element built here
// with known values (the capture's are zero).
TEST(NftCodec, ElementCounterValues) {
  Bytes buf = golden("dump_ep4_reply");
  auto msgs = split(buf);
  ASSERT_TRUE(msgs && !msgs->empty());
  Bytes m((const uint8_t*)(*msgs)[0], (const uint8_t*)(*msgs)[0] + (*msgs)[0]->nlmsg_len);
  // The counter nest: NFTA_COUNTER_BYTES (1) then NFTA_COUNTER_PACKETS (2), 12 bytes each.
  // The key's NFTA_DATA_VALUE has the same header; the counter's follows "counter\0".
  const uint8_t bytesAttr[] = {0x0c, 0, 1, 0};
  const char name[] = "counter";
  auto c = std::search(m.begin(), m.end(), name, name + 8);
  ASSERT_NE(c, m.end());
  auto at = std::search(c, m.end(), std::begin(bytesAttr), std::end(bytesAttr));
  ASSERT_NE(at, m.end());
  const uint64_t bytes = htobe64(123456789012ull), packets = htobe64(4242);
  std::memcpy(&*(at + 4), &bytes, 8);
  ASSERT_EQ(*(at + 14), 2);  // NFTA_COUNTER_PACKETS
  std::memcpy(&*(at + 16), &packets, 8);
  std::optional<dp::CounterValue> got;
  forEachElement(reinterpret_cast<const nlmsghdr*>(m.data()),
                 [&](const Element& e) { got = e.counter; });
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, (dp::CounterValue{4242, 123456789012ull}));
}

TEST(NftCodecGolden, LookupReplies) {
  auto found = decodeAll("get_b2s4_reply");
  EXPECT_EQ(found.kinds, (std::vector<Reply::Kind>{Reply::Data, Reply::Ack}));
  dp::BucketMap want;
  want.set(ip("192.0.2.7"), 2, 1004);
  EXPECT_EQ(found.buckets, want);

  auto missing = decodeAll("get_b2s4_missing_reply");
  EXPECT_EQ(missing.kinds, (std::vector<Reply::Kind>{Reply::Error}));
  EXPECT_EQ(missing.errors, (std::vector<int>{ENOENT}));
  // A batch whose deletion finds nothing: the transaction's error.
  auto del = decodeAll("del_missing_reply");
  EXPECT_EQ(del.kinds, (std::vector<Reply::Kind>{Reply::Error}));
  EXPECT_EQ(del.errors, (std::vector<int>{ENOENT}));
}

TEST(NftCodecGolden, TableReply) {
  Bytes buf = golden("list_table_reply");
  auto msgs = split(buf);
  ASSERT_TRUE(msgs && msgs->size() == 2);
  auto t = decodeTable((*msgs)[0]);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->name, kTable);
  EXPECT_EQ(t->comment, "kst:0123456789abcdef");
  EXPECT_EQ(classify((*msgs)[1]).kind, Reply::Ack);
  EXPECT_FALSE(decodeTable((*msgs)[1]));
}

// The batch decoder (the fake nft's) reads nft's own batches as the kernel does.
TEST(NftCodecGolden, DecodesNftBatches) {
  Bytes b = golden("batch_mixed");
  auto batch = decodeBatch(b);
  ASSERT_TRUE(batch) << batch.error().message;
  std::vector<std::string> sets;
  for (auto& m : batch->messages) sets.push_back(std::string(m.list.set));
  EXPECT_EQ(sets, (std::vector<std::string>{"vip6", "refused6", "b2s4", "b2s6", "b2s4", "b2s6",
                                            "refused4", "refused6", "vip4", "vip6"}));
  dp::BucketMap added;
  for (auto& e : batch->messages[4].elements) ASSERT_TRUE(addBucketElement(e, added));
  dp::BucketMap want;
  want.set(ip("203.0.113.10"), 0, 1003);
  want.set(ip("192.0.2.7"), 2, 1004);
  EXPECT_EQ(added, want);
  EXPECT_EQ(batch->messages[0].list.type, NFT_MSG_DELSETELEM);
  EXPECT_EQ(batch->messages[4].list.type, NFT_MSG_NEWSETELEM);
  EXPECT_EQ(vipElement(batch->messages[9].elements.at(0)), ip("2001:db8::20"));
}

// ---- bad input never crashes; malformed messages decode to nothing ----

TEST(NftCodec, MalformedInput) {
  Bytes b = golden("batch_mixed");
  // Truncated anywhere: inconsistent lengths, never a read past the end.
  for (size_t n = 0; n < b.size(); ++n) {
    Bytes t(b.begin(), b.begin() + n);
    auto batch = decodeBatch(t);
    EXPECT_FALSE(batch) << n;
  }
  EXPECT_FALSE(decodeBatch(messagesOf(b)[1]));  // no BATCH_BEGIN/END around it
  // Every byte of every reply flipped in turn: the decoders may reject, never crash.
  std::mt19937 rng(7);
  for (const char* name : {"dump_b2s4_reply", "get_b2s4_reply", "list_table_reply",
                           "del_missing_reply", "batch_mixed", "dump_ep4_reply",
                           "dump_src6_reply", "dump_counters_reply"}) {
    Bytes g = golden(name);
    for (size_t i = 0; i < g.size(); ++i) {
      Bytes x = g;
      x[i] ^= static_cast<uint8_t>(1 + rng() % 255);
      (void)decodeBatch(x);
      auto msgs = split(x);
      if (!msgs) continue;
      for (auto* m : *msgs) {
        (void)classify(m);
        (void)decodeTable(m);
        dp::BucketMap bm;
        forEachElement(m, [&](const Element& e) {
          (void)vipElement(e);
          (void)addBucketElement(e, bm);
          (void)endpointElement(e);
          (void)sourceElement(e);
        });
        (void)decodeCounterObject(m);
      }
    }
  }
  // A bucket element with a key of another length is refused, not misread.
  uint8_t key[5] = {1, 2, 3, 4, 5};
  uint32_t data = 7;
  dp::BucketMap bm;
  EXPECT_FALSE(addBucketElement({key, {reinterpret_cast<uint8_t*>(&data), 4}}, bm));
  EXPECT_FALSE(vipElement({key, {}}));
}

// ---- announcements (NFNLGRP_NFTABLES) and the commit follower ----

/** The messages of a capture, each copied (the follower's input). */
std::vector<Bytes> goldenMessages(const std::string& name) { return messagesOf(golden(name)); }

const nlmsghdr* hdr(const Bytes& m) { return reinterpret_cast<const nlmsghdr*>(m.data()); }

// What `nft monitor` received while six commits were made (tools/nft/capture.sh): another
// table; two b2s4 elements added; one deleted; a live6 element; a vip4 element; a chain in the
// daemon's table. Every commit ends with NEWGEN, generations consecutive, the port of the
// committing socket in nlmsg_pid.
TEST(NftCodecGolden, DecodesAnnouncements) {
  auto msgs = goldenMessages("monitor");
  ASSERT_EQ(msgs.size(), 13u);
  std::vector<uint16_t> types;
  std::vector<std::string> tables;
  std::vector<uint32_t> gens;
  for (auto& m : msgs) {
    auto n = decodeNotification(hdr(m));
    ASSERT_TRUE(n);
    types.push_back(n->type);
    EXPECT_EQ(n->portid, hdr(m)->nlmsg_pid);
    if (n->type == NFT_MSG_NEWGEN) {
      gens.push_back(n->genid);
      EXPECT_EQ(n->procName, "nft");
      EXPECT_NE(n->procPid, 0u);
      EXPECT_EQ(n->table, "");
    } else {
      tables.emplace_back(n->table);
      EXPECT_EQ(n->family, NFPROTO_INET);
    }
  }
  EXPECT_EQ(types, (std::vector<uint16_t>{NFT_MSG_NEWTABLE, NFT_MSG_NEWGEN, NFT_MSG_NEWSETELEM,
                                          NFT_MSG_NEWSETELEM, NFT_MSG_NEWGEN, NFT_MSG_DELSETELEM,
                                          NFT_MSG_NEWGEN, NFT_MSG_NEWSETELEM, NFT_MSG_NEWGEN,
                                          NFT_MSG_NEWSETELEM, NFT_MSG_NEWGEN, NFT_MSG_NEWCHAIN,
                                          NFT_MSG_NEWGEN}));
  EXPECT_EQ(tables, (std::vector<std::string>{"kst_golden_other", kTable, kTable, kTable, kTable,
                                              kTable, kTable}));
  ASSERT_EQ(gens.size(), 6u);
  for (size_t i = 1; i < gens.size(); ++i) EXPECT_EQ(gens[i], nextGeneration(gens[i - 1]));
  // The elements are in the announcement, as in a dump.
  std::vector<std::pair<uint32_t, uint32_t>> b2s;  // (mark, data)
  forEachElement(hdr(msgs[2]), [&](const Element& e) {
    uint32_t mark, data;
    ASSERT_EQ(e.key.size(), 8u);
    ASSERT_EQ(e.data.size(), 4u);
    std::memcpy(&mark, e.key.data() + 4, 4);
    std::memcpy(&data, e.data.data(), 4);
    EXPECT_EQ(IpAddress::fromBytes(Family::V4, e.key.data()), ip("198.51.100.20"));
    b2s.emplace_back(mark, data);
  });
  EXPECT_EQ(b2s, (std::vector<std::pair<uint32_t, uint32_t>>{{kBucketMarkBase, 1000}}));
  // Not announcements: a reply of another subsystem's type, a NEWGEN without its id.
  Bytes done(sizeof(nlmsghdr), 0);
  reinterpret_cast<nlmsghdr*>(done.data())->nlmsg_len = sizeof(nlmsghdr);
  reinterpret_cast<nlmsghdr*>(done.data())->nlmsg_type = NLMSG_DONE;
  EXPECT_FALSE(decodeNotification(hdr(done)));
  Bytes gen = msgs[1];
  reinterpret_cast<nlmsghdr*>(gen.data())->nlmsg_len = sizeof(nlmsghdr) + sizeof(nfgenmsg);
  EXPECT_FALSE(decodeNotification(hdr(gen)));
}

/** The state the follower's tests start from: 198.51.100.20 (64 buckets, count element) and
 *  2001:db8::10 (no count: --buckets 8) in the VIP sets; 192.0.2.50 refused only. */
struct Followed {
  dp::NftState st;
  RawSets raw;
};
Followed followedState() {
  Followed f;
  dp::NftState& st = f.st;
  st.present = true;
  st.vips = {ip("198.51.100.20"), ip("2001:db8::10")};
  st.vipBuckets[ip("198.51.100.20")] = 64;
  for (uint32_t b = 0; b < 64; ++b) st.buckets.set(ip("198.51.100.20"), b, 2000);
  for (uint32_t b = 0; b < 8; ++b) st.buckets.set(ip("2001:db8::10"), b, 2001);
  f.raw.vipSet = st.vips;
  f.raw.refused = st.vips;
  f.raw.refused.insert(ip("192.0.2.50"));
  return f;
}

/** Feeds messages [from, to) of a capture. */
void feedGolden(CommitFollower& f, const std::vector<Bytes>& msgs, size_t from, size_t to) {
  for (size_t i = from; i < to; ++i) f.feed(hdr(msgs[i]));
}

TEST(NftCommitFollower, GoldenCommitsAppliedInOrder) {
  auto msgs = goldenMessages("monitor");
  ASSERT_EQ(msgs.size(), 13u);
  const uint32_t g0 = decodeNotification(hdr(msgs[1]))->genid - 1;
  {
    // Another table; two b2s4 elements added; one deleted; a live6 element.
    CommitFollower f(kTable, 8, 256);
    f.reset(g0);
    feedGolden(f, msgs, 0, 9);
    EXPECT_EQ(f.generation(), g0 + 4);
    Followed s = followedState(), want = s;
    auto c = f.catchUp(s.st, s.raw, g0);
    EXPECT_TRUE(c.known);
    EXPECT_EQ(c.generation, g0 + 4);
    EXPECT_TRUE(c.lookup.empty());
    want.st.buckets.set(ip("198.51.100.20"), 0, 1000);
    want.st.buckets.erase(ip("198.51.100.20"), 63);  // added (1001) then deleted
    want.st.live.insert({ip("2001:db8::10"), 0x3e8});
    EXPECT_TRUE(s.st == want.st);
    EXPECT_EQ(s.raw, want.raw);
  }
  {
    // The same with 198.51.100.20 in its refused set only: its buckets are not looked up, so
    // not followed either, until the vip4 element puts it in the sets: then it is to be
    // looked up. A chain in the daemon's table after that: not followed.
    CommitFollower f(kTable, 8, 256);
    f.reset(g0);
    feedGolden(f, msgs, 0, 11);
    Followed s = followedState();
    s.st.vips.erase(ip("198.51.100.20"));
    s.raw.vipSet.erase(ip("198.51.100.20"));
    s.st.buckets.eraseVip(ip("198.51.100.20"));
    auto c = f.catchUp(s.st, s.raw, g0);
    EXPECT_TRUE(c.known);
    EXPECT_EQ(c.generation, g0 + 5);
    EXPECT_EQ(c.lookup, std::vector<IpAddress>{ip("198.51.100.20")});
    EXPECT_TRUE(s.st.vips.contains(ip("198.51.100.20")));
    EXPECT_EQ(s.st.buckets.marksOf(ip("198.51.100.20")), nullptr);
    feedGolden(f, msgs, 11, 13);
    Followed was = s;
    EXPECT_FALSE(f.catchUp(s.st, s.raw, g0 + 5).known);
    EXPECT_TRUE(s.st == was.st);
    EXPECT_EQ(s.raw, was.raw);
  }
}

/** Scripted announcements: element messages (as a batch encodes them; portid set) and NEWGEN. */
struct Script {
  uint32_t seq = 1;
  std::vector<Bytes> msgs;
  void push(BatchEncoder& enc, uint32_t port, uint8_t family) {
    auto all = messagesOf(enc.finish());
    for (size_t i = 1; i + 1 < all.size(); ++i) {
      auto* h = reinterpret_cast<nlmsghdr*>(all[i].data());
      h->nlmsg_pid = port;
      reinterpret_cast<nfgenmsg*>(all[i].data() + sizeof(nlmsghdr))->nfgen_family = family;
      msgs.push_back(all[i]);
    }
  }
  void elements(bool add, std::string_view set, const std::vector<std::pair<Bytes, uint32_t>>& els,
                uint32_t port, const std::string& table = kTable, uint8_t family = NFPROTO_INET) {
    BatchEncoder enc(table, seq);
    const bool map = set.starts_with("b2s") || set.starts_with("bcount");
    for (auto& [key, data] : els) enc.element(add, set, key, add && map ? &data : nullptr);
    push(enc, port, family);
  }
  /** An element with a key end (an interval) or a comment. */
  void element(bool add, std::string_view set, const Bytes& key, const Bytes& keyEnd,
               std::string_view comment, uint32_t port) {
    BatchEncoder enc(kTable, seq);
    enc.element(add, set, key, keyEnd, comment);
    push(enc, port, NFPROTO_INET);
  }
  void other(uint16_t type, const std::string& table, uint32_t port) {
    Bytes m(MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(nfgenmsg)) + 64, 0);
    auto* h = reinterpret_cast<nlmsghdr*>(m.data());
    h->nlmsg_len = MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(nfgenmsg));
    h->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | type;
    h->nlmsg_pid = port;
    reinterpret_cast<nfgenmsg*>(m.data() + sizeof(nlmsghdr))->nfgen_family = NFPROTO_INET;
    mnl_attr_put_strz(h, 1, table.c_str());
    m.resize(h->nlmsg_len);
    msgs.push_back(m);
  }
  void gen(uint32_t g, uint32_t port) {
    Bytes m(MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(nfgenmsg)) + 64, 0);
    auto* h = reinterpret_cast<nlmsghdr*>(m.data());
    h->nlmsg_len = MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(nfgenmsg));
    h->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN;
    h->nlmsg_pid = port;
    mnl_attr_put_u32(h, NFTA_GEN_ID, htonl(g));
    mnl_attr_put_u32(h, NFTA_GEN_PROC_PID, htonl(4242));
    mnl_attr_put_strz(h, NFTA_GEN_PROC_NAME, "kube-proxy");
    m.resize(h->nlmsg_len);
    msgs.push_back(m);
  }
  void feed(CommitFollower& f) {
    for (auto& m : msgs) f.feed(hdr(m));
    msgs.clear();
  }
};

Bytes bkey(const char* vip, uint32_t bucket) {
  uint8_t k[20];
  size_t n = bucketKey(ip(vip), bucket, k);
  return Bytes(k, k + n);
}
Bytes vkey(const char* vip) {
  auto a = ip(vip);
  return Bytes(a.data(), a.data() + a.size());
}
Bytes mkey(const char* vip, uint32_t mark) {
  uint8_t k[20];
  size_t n = markKey(ip(vip), mark, k);
  return Bytes(k, k + n);
}
Bytes skey(const char* vip, const char* src) {
  uint8_t k[32];
  size_t n = sourceKey(ip(vip), ip(src), k);
  return Bytes(k, k + n);
}

constexpr uint32_t kOwn = 777, kProxy = 1234;

TEST(NftCommitFollower, ForeignTableCommitsNeedNoRead) {
  CommitFollower f(kTable, 8, 256);
  f.setOwnPort(kOwn);
  f.reset(100);
  Script s;
  for (uint32_t g = 101; g <= 150; ++g) {  // kube-proxy, every few seconds
    s.other(NFT_MSG_NEWRULE, "kube-proxy", kProxy);
    s.elements(true, "cluster-ips", {{vkey("10.96.0.1"), 0}}, kProxy, "kube-proxy", NFPROTO_IPV4);
    s.gen(g, kProxy);
  }
  // The daemon's table name in another family is another table.
  s.other(NFT_MSG_NEWCHAIN, kTable, kProxy);
  reinterpret_cast<nfgenmsg*>(s.msgs.back().data() + sizeof(nlmsghdr))->nfgen_family =
      NFPROTO_IPV4;
  s.gen(151, kProxy);
  s.feed(f);
  EXPECT_EQ(f.generation(), 151u);
  Followed st = followedState(), want = st;
  auto c = f.catchUp(st.st, st.raw, 100);
  EXPECT_TRUE(c.known);
  EXPECT_EQ(c.generation, 151u);
  EXPECT_TRUE(c.lookup.empty());
  EXPECT_TRUE(st.st == want.st);
  EXPECT_EQ(st.raw, want.raw);
}

TEST(NftCommitFollower, ForeignBucketAndLiveChangesAppliedExactly) {
  CommitFollower f(kTable, 8, 256);
  f.setOwnPort(kOwn);
  f.reset(7);
  Script s;
  // The client's own commit (tracked: in the state already at 8): its elements are skipped.
  s.elements(false, "b2s4", {{bkey("198.51.100.20", 1), 0}}, kOwn);
  s.gen(8, kOwn);
  // Someone else: a bucket moved (delete + add), a bucket deleted, a live slot added and one
  // deleted; buckets outside what a lookup reads (a VIP not in the sets, a bucket at or past the
  // VIP's count) and the flow maps are not seen.
  s.elements(false, "b2s4", {{bkey("198.51.100.20", 5), 0}, {bkey("198.51.100.20", 6), 0}},
             kProxy);
  s.elements(true, "b2s4", {{bkey("198.51.100.20", 5), 3000}, {bkey("192.0.2.99", 0), 3001}},
             kProxy);
  s.elements(true, "b2s6", {{bkey("2001:db8::10", 8), 3002}, {bkey("2001:db8::10", 7), 0}},
             kProxy);
  s.gen(9, kProxy);
  uint8_t k[20];
  size_t n = slotMarkKey({ip("2001:db8::10"), 2001}, k);
  s.elements(true, "live6", {{Bytes(k, k + n), 0}}, kProxy);
  n = slotMarkKey({ip("198.51.100.20"), 2000}, k);
  s.elements(false, "live4", {{Bytes(k, k + n), 0}}, kProxy);
  s.elements(true, "flow4", {{Bytes(16, 1), 5}}, kProxy);
  s.gen(10, kProxy);
  s.feed(f);
  Followed st = followedState();
  st.st.live = {{ip("198.51.100.20"), 2000}};
  Followed want = st;
  want.st.buckets.set(ip("198.51.100.20"), 5, 3000);
  want.st.buckets.erase(ip("198.51.100.20"), 6);
  want.st.buckets.set(ip("2001:db8::10"), 7, dp::BucketMap::kForeignZeroMark);  // data 0
  want.st.live = {{ip("2001:db8::10"), 2001}};
  auto c = f.catchUp(st.st, st.raw, 8);
  EXPECT_TRUE(c.known);
  EXPECT_EQ(c.generation, 10u);
  EXPECT_TRUE(c.lookup.empty());
  EXPECT_TRUE(st.st.buckets == want.st.buckets);
  EXPECT_EQ(st.st.live, want.st.live);
  EXPECT_TRUE(st.st == want.st);
  // Forgotten once applied: nothing more to do.
  Followed same = st;
  EXPECT_TRUE(f.catchUp(same.st, same.raw, 10).known);
  EXPECT_TRUE(same.st == st.st);
  // A dumped (exhaustive) state holds every element: a bucket change applies to any key.
  s.elements(true, "b2s4", {{bkey("192.0.2.99", 0), 3001}}, kProxy);
  s.gen(11, kProxy);
  s.feed(f);
  auto d = f.catchUp(same.st, same.raw, 10, false);
  EXPECT_TRUE(d.known);
  EXPECT_EQ(same.st.buckets.find({ip("192.0.2.99"), 0}), std::optional<uint32_t>(3001));
}

TEST(NftCommitFollower, SmallSetChangesAppliedExactly) {
  CommitFollower f(kTable, 8, 256);
  f.reset(1);
  Script s;
  // 198.51.100.20 leaves (its VIP set element deleted); 192.0.2.50 (refused already) and
  // 192.0.2.60 (both elements now) enter; 192.0.2.70 is only in its VIP set; 2001:db8::10 gets
  // a count of 16 (its buckets to be looked up again).
  s.elements(false, "vip4", {{vkey("198.51.100.20"), 0}}, kProxy);
  s.elements(true, "vip4", {{vkey("192.0.2.50"), 0}, {vkey("192.0.2.60"), 0},
                            {vkey("192.0.2.70"), 0}}, kProxy);
  s.elements(true, "refused4", {{vkey("192.0.2.60"), 0}}, kProxy);
  s.elements(true, "bcount6", {{vkey("2001:db8::10"), kCountMarkBase | 16}}, kProxy);
  // A bucket change of a VIP that is looked up again anyway, one of a VIP that left: not kept.
  s.elements(false, "b2s6", {{bkey("2001:db8::10", 0), 0}}, kProxy);
  s.elements(true, "b2s4", {{bkey("198.51.100.20", 70), 5}}, kProxy);
  s.gen(2, kProxy);
  // Endpoint counters: with the daemon's comment, without (taken for nothing), deleted.
  s.element(true, "ep4", mkey("192.0.2.60", 1000), {}, "10.1.0.5", kProxy);
  s.element(true, "ep4", mkey("192.0.2.60", 1001), {}, "", kProxy);
  s.element(true, "ep6", mkey("2001:db8::10", 1000), {}, "2001:db8:1::5", kProxy);
  s.gen(3, kProxy);
  s.element(false, "ep6", mkey("2001:db8::10", 1000), {}, "", kProxy);
  // Source ranges: a filtered VIP with two intervals (announced out of order: sorted), an
  // interval of a VIP that is not filtered (kept aside, not in the state), then one deleted.
  s.elements(true, "ranged4", {{vkey("192.0.2.60"), 0}}, kProxy);
  s.element(true, "src4", skey("192.0.2.60", "198.51.100.0"), skey("192.0.2.60", "198.51.100.255"),
            "", kProxy);
  s.element(true, "src4", skey("192.0.2.60", "10.0.0.0"), skey("192.0.2.60", "10.0.0.255"), "",
            kProxy);
  s.element(true, "src4", skey("192.0.2.50", "10.9.0.0"), skey("192.0.2.50", "10.9.0.255"), "",
            kProxy);
  s.gen(4, kProxy);
  s.feed(f);
  Followed st = followedState();
  auto c = f.catchUp(st.st, st.raw, 1);
  ASSERT_TRUE(c.known);
  EXPECT_EQ(c.generation, 4u);
  EXPECT_EQ(c.lookup, (std::vector<IpAddress>{ip("192.0.2.50"), ip("192.0.2.60"),
                                              ip("2001:db8::10")}));
  EXPECT_EQ(st.st.vips, (std::set<IpAddress>{ip("192.0.2.50"), ip("192.0.2.60"),
                                             ip("2001:db8::10")}));
  EXPECT_TRUE(st.st.buckets.empty());  // the one VIP left, the other to be looked up
  EXPECT_EQ(st.st.vipBuckets[ip("2001:db8::10")], 16u);
  EXPECT_EQ(st.st.endpoints, (std::map<IpAddress, std::map<uint32_t, IpAddress>>{
                                 {ip("192.0.2.60"), {{1000, ip("10.1.0.5")}}}}));
  EXPECT_EQ(st.st.sourceRanges,
            (std::map<IpAddress, std::vector<dp::SourceInterval>>{
                {ip("192.0.2.60"), {{ip("10.0.0.0"), ip("10.0.0.255")},
                                    {ip("198.51.100.0"), ip("198.51.100.255")}}}}));
  // Later: 192.0.2.50 becomes filtered (its interval appears), an interval deleted; a
  // foreign count element of 192.0.2.60 (not the daemon's data: the default count, 8, as
  // before: nothing to look up); 2001:db8::10 leaves and comes back with a bucket deleted in
  // between (same membership and count at both ends: the deletion counts).
  for (uint32_t b = 0; b < 8; ++b) st.st.buckets.set(ip("192.0.2.60"), b, 1);
  for (uint32_t b = 0; b < 16; ++b) st.st.buckets.set(ip("2001:db8::10"), b, 1);
  s.elements(true, "ranged4", {{vkey("192.0.2.50"), 0}}, kProxy);
  s.element(false, "src4", skey("192.0.2.60", "10.0.0.0"), skey("192.0.2.60", "10.0.0.255"), "",
            kProxy);
  s.elements(true, "bcount4", {{vkey("192.0.2.60"), 77}}, kProxy);
  s.elements(false, "refused6", {{vkey("2001:db8::10"), 0}}, kProxy);
  s.elements(false, "b2s6", {{bkey("2001:db8::10", 3), 0}}, kProxy);
  s.elements(true, "refused6", {{vkey("2001:db8::10"), 0}}, kProxy);
  s.gen(5, kProxy);
  s.feed(f);
  c = f.catchUp(st.st, st.raw, 4);
  ASSERT_TRUE(c.known);
  EXPECT_TRUE(c.lookup.empty());
  EXPECT_EQ(st.st.vipBuckets[ip("192.0.2.60")], dp::NftState::kForeignCount);
  EXPECT_EQ(st.st.sourceRanges,
            (std::map<IpAddress, std::vector<dp::SourceInterval>>{
                {ip("192.0.2.50"), {{ip("10.9.0.0"), ip("10.9.0.255")}}},
                {ip("192.0.2.60"), {{ip("198.51.100.0"), ip("198.51.100.255")}}}}));
  EXPECT_EQ(st.st.buckets.size(), 8u + 15u);
  EXPECT_FALSE(st.st.buckets.contains({ip("2001:db8::10"), 3}));
}

TEST(NftCommitFollower, UnknownChangesNotFollowed) {
  // Not followed: a set the daemon does not declare, a chain, a rule, the table itself, an
  // element not of the set's shape, a message of no table.
  auto unknownAfter = [](auto&& script) {
    CommitFollower f(kTable, 8, 256);
    f.reset(1);
    Script s;
    script(s);
    s.gen(2, kProxy);
    s.feed(f);
    Followed st = followedState(), was = st;
    bool known = f.catchUp(st.st, st.raw, 1).known;
    if (!known) {  // untouched
      EXPECT_TRUE(st.st == was.st);
      EXPECT_EQ(st.raw, was.raw);
    }
    return !known;
  };
  EXPECT_TRUE(unknownAfter(
      [](Script& s) { s.elements(true, "krs_set", {{vkey("192.0.2.1"), 0}}, kProxy); }));
  EXPECT_TRUE(unknownAfter([](Script& s) { s.other(NFT_MSG_NEWCHAIN, kTable, kProxy); }));
  EXPECT_TRUE(unknownAfter([](Script& s) { s.other(NFT_MSG_DELRULE, kTable, kProxy); }));
  EXPECT_TRUE(unknownAfter([](Script& s) { s.other(NFT_MSG_DELTABLE, kTable, kProxy); }));
  EXPECT_TRUE(unknownAfter([](Script& s) { s.other(NFT_MSG_NEWOBJ, kTable, kProxy); }));
  EXPECT_TRUE(unknownAfter(
      [](Script& s) { s.elements(true, "b2s4", {{vkey("192.0.2.1"), 5}}, kProxy); }));
  EXPECT_TRUE(unknownAfter(
      [](Script& s) { s.elements(true, "vip6", {{vkey("192.0.2.1"), 0}}, kProxy); }));
  EXPECT_TRUE(unknownAfter([](Script& s) { s.other(NFT_MSG_NEWOBJ, "", kProxy); }));
  EXPECT_FALSE(unknownAfter(
      [](Script& s) { s.elements(true, "vip4", {{vkey("192.0.2.1"), 0}}, kProxy); }));
}

TEST(NftCommitFollower, LostOrOutOfOrderAnnouncementsMeanUnknown) {
  Followed st = followedState();
  {  // ENOBUFS (an overrun of the socket)
    CommitFollower f(kTable, 8, 256);
    f.reset(1);
    f.lost();
    EXPECT_TRUE(f.broken());
    EXPECT_FALSE(f.catchUp(st.st, st.raw, 1).known);
    f.reset(5);  // a full observation starts again
    EXPECT_FALSE(f.broken());
    EXPECT_TRUE(f.catchUp(st.st, st.raw, 5).known);
  }
  {  // a generation that does not follow (a commit never announced here)
    CommitFollower f(kTable, 8, 256);
    f.reset(1);
    Script s;
    s.gen(2, kProxy);
    s.gen(4, kProxy);
    s.feed(f);
    EXPECT_TRUE(f.broken());
    EXPECT_FALSE(f.catchUp(st.st, st.raw, 1).known);
  }
  {  // announcements of commits already observed are dropped; then the next must follow
    CommitFollower f(kTable, 8, 256);
    f.reset(10);
    Script s;
    s.other(NFT_MSG_NEWCHAIN, kTable, kProxy);
    s.gen(9, kProxy);
    s.gen(10, kProxy);
    s.gen(11, kProxy);
    s.feed(f);
    EXPECT_FALSE(f.broken());
    EXPECT_EQ(f.generation(), 11u);
    EXPECT_TRUE(f.catchUp(st.st, st.raw, 10).known);
  }
  {  // the client's own announcement not received: behind the state it is asked to advance
    CommitFollower f(kTable, 8, 256);
    f.reset(3);
    EXPECT_FALSE(f.catchUp(st.st, st.raw, 4).known);
  }
  {  // a malformed message
    CommitFollower f(kTable, 8, 256);
    f.reset(1);
    Script s;
    s.gen(2, kProxy);
    Bytes bad = s.msgs.back();
    reinterpret_cast<nlmsghdr*>(bad.data())->nlmsg_len = sizeof(nlmsghdr) + sizeof(nfgenmsg);
    f.feed(hdr(bad));
    EXPECT_TRUE(f.broken());
  }
  {  // generations wrap, skipping 0
    CommitFollower f(kTable, 8, 256);
    f.reset(0xffffffffu);
    Script s;
    s.gen(1, kProxy);
    s.gen(2, kProxy);
    s.feed(f);
    EXPECT_FALSE(f.broken());
    EXPECT_EQ(f.catchUp(st.st, st.raw, 0xffffffffu).generation, 2u);
  }
}

TEST(NftCommitFollower, MemoryIsBounded) {
  CommitFollower f(kTable, 8, 256);
  f.reset(1);
  Script s;
  std::vector<std::pair<Bytes, uint32_t>> els;
  for (uint32_t i = 0; i <= CommitFollower::kMaxChanges; ++i)
    els.emplace_back(bkey("198.51.100.20", i % 64), 1);  // keys repeat: the count is what matters
  s.elements(false, "b2s4", els, kProxy);
  s.gen(2, kProxy);
  s.feed(f);
  EXPECT_TRUE(f.broken());
  Followed st = followedState();
  EXPECT_FALSE(f.catchUp(st.st, st.raw, 1).known);
  // Commits: bounded too.
  CommitFollower g(kTable, 8, 256);
  g.reset(1);
  for (uint32_t i = 0; i <= CommitFollower::kMaxCommits; ++i) {
    s.elements(false, "live4", {{Bytes(8, 1), 0}}, kProxy);
    s.gen(2 + i, kProxy);
  }
  s.feed(g);
  EXPECT_TRUE(g.broken());
}

}  // namespace
}  // namespace kst::nft
