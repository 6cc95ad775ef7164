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

#include <cstring>
#include <random>
#include <set>

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

TEST(NftCodecGolden, AddVips) {
  dp::NftElementChanges ch;
  ch.vipAdds = {ip("203.0.113.10"), ip("198.51.100.1")};
  expectSameBatch("add_vip4", batchOf(ch));
  dp::NftElementChanges ch6;
  ch6.vipAdds = {ip("2001:db8::10")};
  expectSameBatch("add_vip6", batchOf(ch6));
}

TEST(NftCodecGolden, DeleteElements) {
  dp::NftElementChanges ch;
  ch.bucketDeletes = {{ip("203.0.113.10"), 63, 0}};
  expectSameBatch("del_b2s4", batchOf(ch));
  dp::NftElementChanges v;
  v.vipDeletes = {ip("198.51.100.1")};
  expectSameBatch("del_vip4", batchOf(v));
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
  // Sequence numbers: BATCH_BEGIN 42, the seven element messages 43…49 (each acked), END 50.
  EXPECT_EQ(acked, (std::vector<uint32_t>{43, 44, 45, 46, 47, 48, 49}));
  auto msgs = messagesOf(b);
  EXPECT_EQ(reinterpret_cast<const nlmsghdr*>(msgs.front().data())->nlmsg_seq, 42u);
  EXPECT_EQ(reinterpret_cast<const nlmsghdr*>(msgs.back().data())->nlmsg_seq, 50u);
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

// Live-slot elements (key VIP . mark, no data) in the transaction order of nft_render.cpp: live
// deletions after the VIP deletions and before the bucket deletions, live additions after the
// bucket additions and before the VIP additions.
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
  EXPECT_EQ(sets, (std::vector<std::string>{"-vip4", "-live4", "-live6", "-b2s4", "+b2s4",
                                            "+live4", "+vip4"}));
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
  ASSERT_EQ(batch->messages.size(), 4u);
  EXPECT_EQ(acked.size(), 4u);
  std::vector<size_t> sizes;
  for (auto& m : batch->messages) sizes.push_back(m.elements.size());
  EXPECT_EQ(sizes, (std::vector<size_t>{1000, 1000, 500, 1}));
  EXPECT_EQ(batch->messages[3].list.set, "vip4");
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

// The ruleset generation: nft's GETGEN, the kernel's NEWGEN (13 commits in the capture's
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
  EXPECT_EQ(decodeGeneration((*msgs)[0]), 13u);
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
  EXPECT_EQ(sets, (std::vector<std::string>{"vip6", "b2s4", "b2s6", "b2s4", "b2s6", "vip4", "vip6"}));
  dp::BucketMap added;
  for (auto& e : batch->messages[3].elements) ASSERT_TRUE(addBucketElement(e, added));
  dp::BucketMap want;
  want.set(ip("203.0.113.10"), 0, 1003);
  want.set(ip("192.0.2.7"), 2, 1004);
  EXPECT_EQ(added, want);
  EXPECT_EQ(batch->messages[0].list.type, NFT_MSG_DELSETELEM);
  EXPECT_EQ(batch->messages[3].list.type, NFT_MSG_NEWSETELEM);
  EXPECT_EQ(vipElement(batch->messages[6].elements.at(0)), ip("2001:db8::20"));
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
                           "del_missing_reply", "batch_mixed"}) {
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
        });
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

}  // namespace
}  // namespace kst::nft
