// The "kernel's own pace" baseline: a minimal loader that writes precomputed kernel objects
// with raw netlink and nothing else (no observation, no diff, no text):
//   rtnetlink: 256 requests per sendmsg(), NLM_F_ACK on the last one only (errors are answered
//   anyway), one ack read per send;
//   nfnetlink: set elements in 16 transactions (BEGIN, NEWSETELEM × ⌈n / 16000⌉, END; VIPs in
//   the last), after the table skeleton (no elements) was created through libnftables. The
//   kernel loads the same elements ≈ 2× faster that way than in one transaction.
// `naive` = the earlier baseline: every request acked, all elements in one transaction.
// Independent of the daemon's own nft code path on purpose; it reuses only the rtnetlink
// message encoders (linux/netlink_codec.h), which are byte-for-byte what iproute2 sends.
#pragma once

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "dataplane/types.h"
#include "desired/nft_render.h"
#include "linux/netlink_codec.h"

namespace kb {

class RawNetlink {
 public:
  explicit RawNetlink(int proto) {
    fd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, proto);
    sockaddr_nl sa{};
    sa.nl_family = AF_NETLINK;
    bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    int one = 1;
    setsockopt(fd_, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
    int rcv = 16 << 20;
    setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv);
  }
  ~RawNetlink() { close(fd_); }
  RawNetlink(const RawNetlink&) = delete;
  RawNetlink& operator=(const RawNetlink&) = delete;

  /** Sends buf (messages already carrying seq numbers) and reads `acks` acknowledgements.
   *  @return number of error acks, or -1 on a socket error. */
  int sendAndAck(const std::vector<uint8_t>& buf, size_t acks) {
    int snd = static_cast<int>(buf.size()) + 4096;
    if (snd > sndbuf_) {
      setsockopt(fd_, SOL_SOCKET, SO_SNDBUFFORCE, &snd, sizeof snd);
      sndbuf_ = snd;
    }
    sockaddr_nl sa{};
    sa.nl_family = AF_NETLINK;
    if (sendto(fd_, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
      perror("raw netlink send");
      return -1;
    }
    int errors = 0;
    size_t got = 0;
    std::vector<uint8_t> rx(1 << 20);
    while (got < acks) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 10000) <= 0) {
        fprintf(stderr, "raw netlink: timeout waiting for acks (%zu of %zu)\n", got, acks);
        return -1;
      }
      ssize_t n = recv(fd_, rx.data(), rx.size(), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        perror("raw netlink recv");
        return -1;
      }
      int len = static_cast<int>(n);
      for (auto* h = reinterpret_cast<const nlmsghdr*>(rx.data()); mnl_nlmsg_ok(h, len);
           h = mnl_nlmsg_next(h, &len)) {
        if (h->nlmsg_type != NLMSG_ERROR) continue;
        ++got;
        auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h));
        if (e->error) {
          if (errors < 3) fprintf(stderr, "raw netlink: error %s\n", strerror(-e->error));
          ++errors;
        }
      }
    }
    return errors;
  }
  uint32_t nextSeq() { return ++seq_; }

 private:
  int fd_;
  int sndbuf_ = 0;
  uint32_t seq_ = 1;
};

/** rtnetlink: link, nexthops, routes, rules of a RouterState; 256 requests per sendmsg. */
inline int rawLoadRoutes(const kst::dp::RouterState& st, bool naive = false, size_t perSend = 256) {
  RawNetlink nl(NETLINK_ROUTE);
  kst::nl::Tags tags{211};
  std::vector<kst::nl::Message> msgs;
  for (auto& l : st.links) msgs.push_back(kst::nl::encodeLink(l, kst::nl::Op::Add));
  auto flush = [&]() -> int {
    int errors = 0;
    for (size_t i = 0; i < msgs.size(); i += perSend) {
      std::vector<uint8_t> buf;
      size_t n = std::min(perSend, msgs.size() - i);
      for (size_t j = i; j < i + n; ++j) {
        auto* h = reinterpret_cast<nlmsghdr*>(msgs[j].data());
        h->nlmsg_seq = nl.nextSeq();
        if (naive || j + 1 == i + n) h->nlmsg_flags |= NLM_F_ACK;
        else h->nlmsg_flags &= static_cast<uint16_t>(~NLM_F_ACK);
        buf.insert(buf.end(), msgs[j].begin(), msgs[j].end());
      }
      int e = nl.sendAndAck(buf, naive ? n : 1);
      if (e < 0) return -1;
      errors += e;
    }
    msgs.clear();
    return errors;
  };
  int errors = flush();
  if (errors) return errors;
  uint32_t oif = st.links.empty() ? 0 : if_nametoindex(st.links.front().name.c_str());
  for (auto& nh : st.nexthops) msgs.push_back(kst::nl::encodeNexthop(nh, oif, kst::nl::Op::Add, tags));
  for (auto& r : st.routes) msgs.push_back(kst::nl::encodeRoute(r, 0, kst::nl::Op::Add, tags));
  for (auto& r : st.rules) msgs.push_back(kst::nl::encodeRule(r, kst::nl::Op::Add, tags));
  return flush();
}

namespace rawnft {

inline void putHeader(std::vector<uint8_t>& buf, uint16_t type, uint16_t flags, uint8_t family,
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

}  // namespace rawnft

/** nfnetlink: every element of the VIP sets (and their refused-counter sets), live-slot sets,
 *  bucket maps, bucket count maps and endpoint counter sets (with the endpoint as comment), in
 *  `transactions` transactions (the VIPs in the last). Source ranges are not loaded. */
inline int rawLoadNftElements(const std::string& table, const kst::dp::NftState& nft,
                              size_t transactions = 16) {
  RawNetlink nl(NETLINK_NETFILTER);
  std::vector<uint8_t> buf;
  buf.reserve(nft.buckets.size() * 40 + 4096);
  size_t acks = 0;
  struct Elem {
    uint8_t key[20];
    size_t klen;
    uint32_t data;
    bool hasData;
    uint8_t clen = 0;  // comment length (libnftnl user data), 0: none
    char comment[47];
  };
  auto emitSet = [&](const char* set, const std::vector<Elem>& elems) {
    constexpr size_t kPerMsg = 1000;  // the element list nest must stay < 64 KiB
    for (size_t i = 0; i < elems.size(); i += kPerMsg) {
      if (buf.empty())
        rawnft::putHeader(buf, NFNL_MSG_BATCH_BEGIN, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES,
                          nl.nextSeq());
      size_t off = buf.size();
      rawnft::putHeader(buf, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
                        NLM_F_CREATE | NLM_F_ACK, NFPROTO_INET, 0, nl.nextSeq());
      buf.resize(off + (1 << 16) + 4096);
      auto* h = reinterpret_cast<nlmsghdr*>(buf.data() + off);
      mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_TABLE, table.c_str());
      mnl_attr_put_strz(h, NFTA_SET_ELEM_LIST_SET, set);
      auto* list = mnl_attr_nest_start(h, NFTA_SET_ELEM_LIST_ELEMENTS);
      for (size_t j = i; j < std::min(elems.size(), i + kPerMsg); ++j) {
        auto* el = mnl_attr_nest_start(h, NFTA_LIST_ELEM);
        auto* k = mnl_attr_nest_start(h, NFTA_SET_ELEM_KEY);
        mnl_attr_put(h, NFTA_DATA_VALUE, elems[j].klen, elems[j].key);
        mnl_attr_nest_end(h, k);
        if (elems[j].hasData) {
          auto* d = mnl_attr_nest_start(h, NFTA_SET_ELEM_DATA);
          mnl_attr_put(h, NFTA_DATA_VALUE, 4, &elems[j].data);
          mnl_attr_nest_end(h, d);
        }
        if (elems[j].clen) {  // libnftnl user data: { type 0 (comment), length, text + NUL }
          uint8_t ud[2 + sizeof elems[j].comment + 1];
          ud[0] = 0;
          ud[1] = static_cast<uint8_t>(elems[j].clen + 1);
          std::memcpy(ud + 2, elems[j].comment, elems[j].clen);
          ud[2 + elems[j].clen] = 0;
          mnl_attr_put(h, NFTA_SET_ELEM_USERDATA, elems[j].clen + 3u, ud);
        }
        mnl_attr_nest_end(h, el);
      }
      mnl_attr_nest_end(h, list);
      buf.resize(off + h->nlmsg_len);
      ++acks;
    }
  };
  std::vector<Elem> b4, b6, v4, v6, l4, l6;
  for (const auto& [k, mark] : nft.buckets) {  // (VIP, bucket) order, by value
    Elem e{};
    std::memcpy(e.key, k.first.data(), k.first.size());
    uint32_t m = kst::kBucketMarkBase + k.second;  // meta mark: host byte order
    std::memcpy(e.key + k.first.size(), &m, 4);
    e.klen = k.first.size() + 4;
    e.data = mark;
    e.hasData = true;
    (k.first.isV4() ? b4 : b6).push_back(e);
  }
  for (auto& v : nft.vips) {
    Elem e{};
    std::memcpy(e.key, v.data(), v.size());
    e.klen = v.size();
    (v.isV4() ? v4 : v6).push_back(e);
  }
  std::vector<Elem> c4, c6;  // bucket counts: VIP → kCountMarkBase | B_v
  for (auto& [v, count] : nft.vipBuckets) {
    Elem e{};
    std::memcpy(e.key, v.data(), v.size());
    e.klen = v.size();
    e.data = kst::kCountMarkBase | count;
    e.hasData = true;
    (v.isV4() ? c4 : c6).push_back(e);
  }
  std::vector<Elem> e4, e6;  // endpoint counters: VIP . slot mark, the endpoint as comment
  for (auto& [v, eps] : nft.endpoints)
    for (auto& [mark, ep] : eps) {
      Elem e{};
      std::memcpy(e.key, v.data(), v.size());
      std::memcpy(e.key + v.size(), &mark, 4);
      e.klen = v.size() + 4;
      std::string c = ep.str();
      e.clen = static_cast<uint8_t>(std::min(c.size(), sizeof e.comment));
      std::memcpy(e.comment, c.data(), e.clen);
      (v.isV4() ? e4 : e6).push_back(e);
    }
  for (auto& l : nft.live) {
    Elem e{};
    std::memcpy(e.key, l.vip.data(), l.vip.size());
    std::memcpy(e.key + l.vip.size(), &l.mark, 4);
    e.klen = l.vip.size() + 4;
    (l.vip.isV4() ? l4 : l6).push_back(e);
  }
  // The live slots, buckets and bucket counts split into transactions of about equal size; VIPs last.
  std::vector<std::pair<const char*, std::vector<Elem>>> parts;
  const size_t total = b4.size() + b6.size() + l4.size() + l6.size() + c4.size() + c6.size() +
                       e4.size() + e6.size();
  const size_t per = std::max<size_t>(1, (total + transactions - 1) / std::max<size_t>(1, transactions));
  int errors = 0;
  auto send = [&] {
    if (buf.empty()) return;
    rawnft::putHeader(buf, NFNL_MSG_BATCH_END, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, nl.nextSeq());
    int e = nl.sendAndAck(buf, acks);
    errors += e < 0 ? 1 : e;
    buf.clear();
    acks = 0;
  };
  size_t inTx = 0;
  for (auto* part : {&l4, &l6, &b4, &b6, &c4, &c6, &e4, &e6}) {
    const char* set = part == &l4   ? "live4"
                      : part == &l6 ? "live6"
                      : part == &b4 ? "b2s4"
                      : part == &b6 ? "b2s6"
                      : part == &c4 ? "bcount4"
                      : part == &c6 ? "bcount6"
                      : part == &e4 ? "ep4"
                                    : "ep6";
    for (size_t i = 0; i < part->size();) {
      size_t n = std::min(part->size() - i, per - inTx);
      emitSet(set, std::vector<Elem>(part->begin() + i, part->begin() + i + n));
      i += n;
      inTx += n;
      if (inTx == per) {
        send();
        inTx = 0;
      }
    }
  }
  emitSet("refused4", v4);
  emitSet("refused6", v6);
  emitSet("vip4", v4);
  emitSet("vip6", v6);
  send();
  return errors;
}

}  // namespace kb
