#include "linux/nft_client.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/filter.h>
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
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "desired/nft_render.h"
#include "hashing/balance.h"
#include "linux/nft_codec.h"

namespace kst {

NftClientImpl::NftClientImpl(const DataplaneConfig& cfg)
    : cfg_(cfg),
      ctx_(nft_ctx_new(NFT_CTX_DEFAULT)),
      follower_(cfg.nftTable, cfg.buckets, vipBucketCap(cfg.buckets)) {
  nft_ctx_buffer_output(ctx_);
  nft_ctx_buffer_error(ctx_);
}

NftClientImpl::~NftClientImpl() {
  nft_ctx_free(ctx_);
  if (fd_ >= 0) close(fd_);
  if (mon_ >= 0) close(mon_);
}

Status NftClientImpl::runText(const std::string& script) {
  nft_ctx_output_set_flags(ctx_, 0);
  ++sent_;
  int rc = nft_run_cmd_from_buffer(ctx_, script.c_str());
  std::string err = nft_ctx_get_error_buffer(ctx_);
  if (rc != 0) return fail(EINVAL, "nft: " + (err.empty() ? script : err));
  return {};
}

// ---- nfnetlink ----

namespace {
constexpr size_t kRx = 1 << 20;
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

std::vector<uint8_t>& NftClientImpl::rxBuffer() {
  if (rx_.size() < kRx) rx_.resize(kRx);
  return rx_;
}

Result<int> NftClientImpl::request(const std::vector<uint8_t>& req,
                                   const std::function<void(const nlmsghdr*)>& fn,
                                   bool& interrupted) {
  auto* h = reinterpret_cast<const nlmsghdr*>(req.data());
  uint32_t seq = h->nlmsg_seq;
  if (send(fd_, req.data(), req.size(), 0) < 0) return sysFail(errno, "nfnetlink send");
  ++sent_;
  // recvmmsg: a lookup answers each element in its own datagram.
  constexpr size_t kSlots = 64, kSlot = 32 * 1024;
  std::vector<uint8_t>& rx = rxBuffer();
  if (rx.size() < kSlots * kSlot) rx.resize(kSlots * kSlot);
  std::array<mmsghdr, kSlots> hdrs;
  std::array<iovec, kSlots> iov;
  while (true) {
    // Bounded: a request the kernel never finishes answering fails instead of blocking the
    // daemon's thread for ever.
    pollfd p{fd_, POLLIN, 0};
    int pr = poll(&p, 1, 30000);
    if (pr < 0 && errno == EINTR) continue;
    if (pr < 0) return sysFail(errno, "nfnetlink poll");
    if (pr == 0) return fail(ETIMEDOUT, "nfnetlink: no answer to a request");
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
        nft::Reply r = nft::classify(m);
        if (r.interrupted) interrupted = true;
        switch (r.kind) {
          case nft::Reply::Done:
          case nft::Reply::Ack: return 0;
          case nft::Reply::Error: return r.error;
          case nft::Reply::Data: fn(m); break;
        }
      }
    }
  }
}

Result<uint32_t> NftClientImpl::generation() {
  std::optional<uint32_t> gen;
  bool intr = false;
  auto rc = request(nft::getGenRequest(++seq_), [&](const nlmsghdr* m) {
    if (auto g = nft::decodeGeneration(m)) gen = g;
  }, intr);
  if (!rc) return std::unexpected(rc.error());
  if (*rc != 0) return sysFail(*rc, "nfnetlink get generation");
  if (!gen) return fail(EBADMSG, "nfnetlink: no generation in the answer");
  return *gen;
}

Result<dp::NftState> NftClientImpl::observe() {
  if (auto s = openSocket(); !s) return std::unexpected(s.error());
  // NOTE Performance: the bucket maps cost ≈ 2.5 µs per element to read back (lookups, one
  // answer datagram each): ≈ 8 s at 50k VIPs × 64 buckets. The generation counts every
  // nf_tables commit in the namespace, by anyone; when it is still the one at which this
  // client last knew the table exactly (its own complete observation, or its own commits
  // conditioned on that generation), nothing in nftables changed since, and that state is the
  // answer. Others commit all the time (kube-proxy in nftables mode, firewalls): their
  // announcements, received since the first observation, bring the state forward instead of a
  // full read when they can (followForeign()).
  openMonitor();
  drainMonitor();  // before GETGEN: every commit up to it is then received or still queued
  auto gen = generation();
  if (!gen) return std::unexpected(gen.error());
  if (known_ && knownGen_ == *gen) {
    follower_.reset(*gen);  // whatever was lost or pending is in known_ already
    return *known_;
  }
  if (known_ && followForeign(*gen)) return *known_;
  known_.reset();
  const bool exhaustive = exhaustive_;
  auto st = observeKernel();
  if (!st) return st;
  // A consistent snapshot only if nothing was committed while it was read.
  if (auto after = generation(); after && *after == *gen) {
    known_ = *st;
    knownGen_ = *gen;
    knownExhaustive_ = exhaustive;
    follower_.reset(*gen);
  }
  return st;
}

void NftClientImpl::openMonitor() {
  if (monTried_) return;
  monTried_ = true;
  // Without it (no permission, an old kernel) every foreign commit costs a full observation.
  auto give_up = [&](const char* what) {
    spdlog::warn("nft: no nf_tables notifications ({}: {}); every foreign commit makes the "
                 "next observation read everything", what, std::strerror(errno));
    if (mon_ >= 0) close(mon_);
    mon_ = -1;
  };
  mon_ = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_NETFILTER);
  if (mon_ < 0) return give_up("socket");
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  if (bind(mon_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) return give_up("bind");
  // Sized for bursts (a foreign transaction of many elements): 8 MiB of queued skbs at most,
  // beyond that the kernel drops and reports ENOBUFS (then: a full observation).
  int rcv = 8 << 20;
  if (setsockopt(mon_, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) < 0)
    setsockopt(mon_, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
  // The client's own batches are announced too (every element: 640k at a cold start); they are
  // applied to known_ by the client itself. A socket filter drops them in the kernel, before
  // they are queued, except their NEWGEN (the follower counts generations). Every skb of a
  // commit's announcements holds messages of that commit only, so the first header decides.
  sockaddr_nl own{};
  socklen_t len = sizeof own;
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&own), &len) == 0 && own.nl_pid != 0) {
    follower_.setOwnPort(own.nl_pid);
    // Classic BPF loads are big-endian: compare with the header fields as stored (host order).
    const uint32_t newgen =
        ntohs(static_cast<uint16_t>((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN));
    const uint32_t port = ntohl(own.nl_pid);
    sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, offsetof(nlmsghdr, nlmsg_type)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, newgen, 2, 0),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(nlmsghdr, nlmsg_pid)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, port, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, 0xffffffff),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    sock_fprog prog{static_cast<unsigned short>(std::size(code)), code};
    if (setsockopt(mon_, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0)
      spdlog::debug("nft: no socket filter for the own announcements: {}", std::strerror(errno));
  }
  int group = NFNLGRP_NFTABLES;
  if (setsockopt(mon_, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) < 0)
    return give_up("join NFNLGRP_NFTABLES");
}

void NftClientImpl::drainMonitor() {
  if (mon_ < 0) return;
  if (monRx_.size() < (1 << 16)) monRx_.resize(1 << 16);
  // Bounded: a namespace committing faster than this reads makes the state unknown instead of
  // holding the daemon's thread.
  for (int i = 0; i < 100000; ++i) {
    ssize_t n = recv(mon_, monRx_.data(), monRx_.size(), MSG_TRUNC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      follower_.lost();  // ENOBUFS: the kernel dropped announcements
      continue;
    }
    if (static_cast<size_t>(n) > monRx_.size()) {  // truncated
      follower_.lost();
      continue;
    }
    auto msgs = nft::split({monRx_.data(), static_cast<size_t>(n)});
    if (!msgs) {
      follower_.lost();
      continue;
    }
    announced_ += msgs->size();
    for (const nlmsghdr* m : *msgs) follower_.feed(m);
  }
  follower_.lost();
}

void NftClientImpl::leaveGroup() {
  if (mon_ < 0) return;
  drainMonitor();  // what was announced before leaving is followed as usual
  int group = NFNLGRP_NFTABLES;
  if (setsockopt(mon_, SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, &group, sizeof group) < 0) return;
  // Commits from now until rejoinGroup() are not announced to us: a batch refused for a
  // foreign commit meanwhile is sent again unconditioned (commit()), not after waiting for
  // announcements that will not come.
  follower_.lost();
  monPaused_ = true;
}

void NftClientImpl::rejoinGroup() {
  if (!monPaused_) return;
  monPaused_ = false;
  int group = NFNLGRP_NFTABLES;
  if (setsockopt(mon_, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) < 0) {
    spdlog::warn("nft: rejoining NFNLGRP_NFTABLES: {}; every foreign commit makes the next "
                 "observation read everything", std::strerror(errno));
    close(mon_);
    mon_ = -1;
    return;
  }
  // Back in the group before asking for the generation: a commit after GETGEN is announced.
  // Every generation since leaving was the client's own tracked commits exactly when the
  // current one is the last of them; otherwise someone else committed in between, unseen.
  auto gen = generation();
  if (known_ && gen && *gen == knownGen_) follower_.reset(*gen);
}

bool NftClientImpl::followForeign(uint32_t gen) {
  if (mon_ < 0 || follower_.broken()) return false;
  // GETGEN may answer a commit whose announcements are still being sent: wait for them
  // (briefly; then the full observation).
  for (int waited = 0; static_cast<int32_t>(gen - follower_.generation()) > 0; waited += 10) {
    if (waited >= 500 || follower_.broken()) return false;
    pollfd p{mon_, POLLIN, 0};
    poll(&p, 1, 10);
    drainMonitor();
  }
  // In place (a copy of the state at 50k VIPs costs ≈ 70 ms); untouched when not known.
  auto c = follower_.catchUp(*known_, knownRaw_, knownGen_, !knownExhaustive_);
  if (!c.known) return false;
  knownGen_ = c.generation;
  if (c.lookup.empty()) return true;
  // VIPs that entered the sets or changed their bucket count: their buckets looked up, which
  // is consistent only if nothing was committed after the generation followed to.
  if (auto s = lookupBuckets(*known_, c.lookup); !s) {
    known_.reset();
    return false;
  }
  if (auto after = generation(); !after || *after != c.generation) {
    known_.reset();
    return false;
  }
  return true;
}

Result<dp::NftState> NftClientImpl::observeKernel() {
  dp::NftState st;
  const bool exhaustive = exhaustive_;
  exhaustive_ = false;
  if (auto s = readSets(st, exhaustive, knownRaw_); !s) {
    exhaustive_ = exhaustive;
    return std::unexpected(s.error());
  }
  if (!st.present || exhaustive) return st;
  if (auto s = lookupBuckets(st, std::vector<IpAddress>(st.vips.begin(), st.vips.end())); !s)
    return std::unexpected(s.error());
  return st;
}

Result<std::string> NftClientImpl::tableSkeletonId() {
  if (auto s = openSocket(); !s) return std::unexpected(s.error());
  std::string id;
  bool intr = false;
  auto rc = request(nft::getTableRequest(cfg_.nftTable, ++seq_), [&](const nlmsghdr* m) {
    auto t = nft::decodeTable(m);
    if (t && t->name == cfg_.nftTable && t->comment && t->comment->starts_with("kst:"))
      id = t->comment->substr(4);
  }, intr);
  if (!rc) return std::unexpected(rc.error());
  if (*rc != 0 && *rc != ENOENT) return sysFail(*rc, "nfnetlink get table " + cfg_.nftTable);
  return id;
}

Status NftClientImpl::readSets(dp::NftState& st, bool bucketMaps, nft::RawSets& raw) {
  st = dp::NftState{};
  raw = nft::RawSets{};
  // The table and its comment ("kst:<skeleton id>").
  {
    bool intr = false;
    auto rc = request(nft::getTableRequest(cfg_.nftTable, ++seq_), [&](const nlmsghdr* m) {
      auto t = nft::decodeTable(m);
      if (!t || t->name != cfg_.nftTable) return;
      st.present = true;
      if (t->comment && t->comment->starts_with("kst:")) st.skeletonId = t->comment->substr(4);
    }, intr);
    if (!rc) return std::unexpected(rc.error());
    if (*rc == ENOENT) return {};
    if (*rc != 0) return sysFail(*rc, "nfnetlink get table " + cfg_.nftTable);
  }
  // Elements of a dump or a lookup answer: VIP sets and bucket maps.
  auto parse = [&st](const nlmsghdr* m, std::set<IpAddress>& vips, dp::BucketMap& buckets,
                     std::set<dp::SlotMark>& live) {
    nft::forEachElement(m, [&](const nft::Element& e) {
      if (e.data.empty()) {
        if (auto ip = nft::vipElement(e)) vips.insert(*ip);
        else if (auto l = nft::liveElement(e)) live.insert(*l);
      } else if (e.key.size() == 4 || e.key.size() == 16) {  // bcount4/bcount6
        if (!nft::addCountElement(e, st.vipBuckets))
          spdlog::debug("nft: ignoring a malformed bucket count element");
      } else if (!nft::addBucketElement(e, buckets)) {
        spdlog::debug("nft: ignoring a malformed bucket map element");
      }
    });
  };
  // The counter and source-range sets (a few elements per VIP): dumped whole, every full
  // observation. A VIP counts as present only when it is in both its VIP set and its refused
  // set (a missing element of either is added again by the next pass).
  std::set<IpAddress>& refused = raw.refused;
  std::set<IpAddress>& ranged = raw.ranged;
  for (const char* set : {"refused4", "refused6", "ranged4", "ranged6", "ep4", "ep6", "src4",
                          "src6"}) {
    const std::string_view name(set);
    auto rc = dumpSet(set, [&](const nft::Element& e) {
      if (name.starts_with("refused") || name.starts_with("ranged")) {
        if (auto ip = nft::vipElement(e)) (name[2] == 'f' ? refused : ranged).insert(*ip);
      } else if (name.starts_with("ep")) {
        // An element without the daemon's comment is taken for nothing: the pass adds its own
        // (EEXIST is not an error without NLM_F_EXCL; the foreign one keeps its key).
        if (auto ep = nft::endpointElement(e)) st.endpoints[ep->vip][ep->mark] = ep->endpoint;
      } else if (auto r = nft::sourceElement(e)) {
        st.sourceRanges[r->first].push_back(r->second);
      }
    });
    if (!rc) return std::unexpected(rc.error());
  }
  raw.sources = st.sourceRanges;  // every VIP's, filtered or not (the follower's)
  for (auto& vip : ranged) st.sourceRanges[vip];  // filtered, possibly with no interval
  for (auto it = st.sourceRanges.begin(); it != st.sourceRanges.end();) {
    // Intervals of a VIP that is not filtered are left to the diff as if absent: it deletes
    // none, and adds the VIP's own (the kernel answers EEXIST for an equal one only with
    // NLM_F_EXCL, which the daemon does not set).
    if (!ranged.contains(it->first)) {
      it = st.sourceRanges.erase(it);
    } else {
      std::sort(it->second.begin(), it->second.end());
      ++it;
    }
  }
  // Dumps: the VIP sets and bucket count maps (one element per VIP) and the live-slot sets (at
  // most one element per endpoint and VIP) always; the bucket maps only when asked to be
  // exhaustive, because the kernel resumes a set dump by skipping the elements already sent
  // (≈ 700 per 32 KiB message): listing 640k elements walks the map ~900 times, ≈ a minute of
  // CPU.
  std::vector<const char*> dumped{"vip4", "vip6", "bcount4", "bcount6", "live4", "live6"};
  if (bucketMaps) {
    dumped.push_back("b2s4");
    dumped.push_back("b2s6");
  }
  for (const char* set : dumped) {
    for (int attempt = 0;; ++attempt) {
      std::set<IpAddress> vips;
      dp::BucketMap buckets;
      std::set<dp::SlotMark> live;
      bool intr = false;
      auto rc = request(nft::dumpElementsRequest(cfg_.nftTable, set, ++seq_),
                        [&](const nlmsghdr* m) { parse(m, vips, buckets, live); }, intr);
      if (!rc) return std::unexpected(rc.error());
      if (*rc != 0) return sysFail(*rc, fmt::format("nfnetlink list {} {}", cfg_.nftTable, set));
      if (intr && attempt < 3) {  // the set changed during the dump
        if (std::string_view(set).starts_with("bcount"))
          std::erase_if(st.vipBuckets, [&](auto& c) { return c.first.isV4() == (set[6] == '4'); });
        continue;
      }
      if (intr) return fail(EINTR, "nfnetlink: dump of " + std::string(set) + " kept changing");
      st.vips.merge(vips);
      st.buckets.merge(std::move(buckets));
      st.live.merge(live);
      break;
    }
  }
  raw.vipSet = st.vips;
  std::erase_if(st.vips, [&](const IpAddress& v) { return !refused.contains(v); });
  return {};
}

Status NftClientImpl::lookupBuckets(dp::NftState& st, const std::vector<IpAddress>& vips) {
  // Buckets by lookup: every bucket key (VIP . kBucketMarkBase + b, b < B) of every VIP in the
  // VIP sets, B the VIP's bucket count element (--buckets without one), 256 keys per
  // GETSETELEM request (one reply per element found; a missing key
  // ends the request with ENOENT, and the lookup resumes after it). Elements of VIPs outside
  // the sets are not seen: the daemon only ever adds or removes a VIP together with its
  // buckets in one transaction; an element batch that then fails (a foreign element in the
  // way) makes the next observation exhaustive.
  // Found elements go straight into st.buckets (no bucket map was dumped, so it holds only
  // what these lookups answered). Key j of a family is found from the running key counts of
  // its VIPs (no key list).
  const uint32_t cap = vipBucketCap(cfg_.buckets);
  for (bool v4 : {true, false}) {
    std::vector<IpAddress> famVips;
    std::vector<size_t> firstKey{0};  // firstKey[k]: the index of famVips[k]'s bucket 0
    for (auto& vip : vips) {
      if (vip.isV4() != v4) continue;
      famVips.push_back(vip);
      auto c = st.vipBuckets.find(vip);
      uint32_t nb = c == st.vipBuckets.end() || c->second > cap ? cfg_.buckets : c->second;
      firstKey.push_back(firstKey.back() + nb);
    }
    auto keyAt = [&](size_t j) {
      size_t k = std::upper_bound(firstKey.begin(), firstKey.end(), j) - firstKey.begin() - 1;
      return std::make_pair(famVips[k], uint32_t(j - firstKey[k]));
    };
    const size_t total = firstKey.back();
    const char* set = v4 ? "b2s4" : "b2s6";
    constexpr size_t kChunk = 256;
    size_t i = 0;
    while (i < total) {
      size_t n = std::min(kChunk, total - i);
      auto req = nft::getElementsRequest(
          cfg_.nftTable, set, n,
          [&](size_t k, uint8_t(&key)[20]) {
            auto [vip, bucket] = keyAt(i + k);
            return nft::bucketKey(vip, bucket, key);
          },
          ++seq_);
      bool intr = false;
      auto rc = request(req, [&](const nlmsghdr* m) {
        nft::forEachElement(m, [&](const nft::Element& e) {
          if (!nft::addBucketElement(e, st.buckets))
            spdlog::debug("nft: ignoring a malformed bucket map element");
        });
      }, intr);
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
  return {};
}

Status NftClientImpl::run(const std::string& script) {
  known_.reset();  // a text transaction: the table is whatever the next observation finds
  return runText(script);
}

Status NftClientImpl::applyStep(dp::TableStep step, const std::string& skeletonId,
                                const std::string& skeleton, const dp::NftElementChanges& elements) {
  std::string script = renderNftStep(cfg_, step, skeletonId, skeleton, elements);
  if (script.empty()) return {};
  return run(script);
}

Result<int> NftClientImpl::commit(
    const std::function<std::vector<uint8_t>(uint32_t, std::vector<uint32_t>&)>& encode,
    bool& tracked) {
  // Conditioned on the known generation: applied only if nothing else was committed since,
  // and then it is the one commit after it. Refused (kErestart, nothing applied) otherwise:
  // the known state is brought forward through the foreign commits (their announcements) and
  // the batch sent again conditioned on the new generation; when that cannot be, sent again
  // unconditioned, and the state is no longer known.
  uint32_t genid = known_ ? knownGen_ : 0;
  for (int refused = 0;; ++refused) {
    std::vector<uint32_t> acked;
    auto buf = encode(genid, acked);
    auto rc = sendBatch(buf, acked);
    if (rc && *rc == nft::kErestart && genid) {
      drainMonitor();
      auto gen = refused < 3 && known_ ? generation() : Result<uint32_t>(0u);
      if (gen && *gen && *gen != knownGen_ && followForeign(*gen)) {
        genid = knownGen_;
        continue;
      }
      known_.reset();
      genid = 0;
      continue;
    }
    tracked = rc && *rc == 0 && genid;
    if (tracked) knownGen_ = nft::nextGeneration(genid);
    else known_.reset();
    return rc;
  }
}

bool NftClientImpl::mapLookupWorks(const DataplaneConfig& cfg) {
  NftClientImpl probe(cfg);
  // The daemon's table already there (a restart): the variant it was rendered with says it,
  // without touching the kernel (a restart changes nothing).
  if (auto id = probe.tableSkeletonId(); id && !id->empty()) {
    for (bool v : {true, false}) {
      DataplaneConfig c = cfg;
      c.nftMapLookup = v;
      if (*id == skeletonId(renderSkeleton(c))) return v;
    }
  }
  const std::string t = cfg.nftTable + "_probe";
  (void)probe.run(fmt::format("table inet {0}\ndelete table inet {0}\n", t));
  const bool ok = bool(probe.run(fmt::format(
      "table inet {0} {{\n  map m {{ typeof ip saddr : meta mark; }}\n"
      "  chain c {{\n    ip saddr != @m counter\n  }}\n}}\n", t)));
  (void)probe.run(fmt::format("delete table inet {}\n", t));
  return ok;
}

Status NftClientImpl::applyElements(const dp::NftElementChanges& ch) {
  // NOTE Performance: a large set of additions only (a cold start: 640k bucket elements at
  // V = 10k) goes in transactions of at most kAddChunk elements: the kernel loads the same
  // elements ≈ 2× faster in 16 transactions than in one (bench/README.md, `converge`). Order:
  // live slots, buckets, bucket counts, endpoint counters, then the filtered VIPs with their
  // source intervals and the VIPs (and their refused elements) in the last transaction, so
  // that no VIP enters its set before all its buckets exist (the hitless order of one
  // transaction) and a VIP never becomes filtered without its intervals. Anything with a
  // deletion stays one transaction (a changed bucket is a delete and an add of one key).
  constexpr size_t kAddChunk = 40000;
  const bool addsOnly = ch.vipDeletes.empty() && ch.liveDeletes.empty() &&
                        ch.bucketDeletes.empty() && ch.countDeletes.empty() &&
                        ch.endpointDeletes.empty() && ch.rangedDeletes.empty() &&
                        ch.rangeDeletes.empty();
  // NOTE Performance: while the monitor socket is a member of NFNLGRP_NFTABLES, the kernel
  // builds an announcement of every element committed (the socket filter drops the client's
  // own only after they are built): 0.7 s of a 1.7 s cold element load at V = 10k. A large
  // batch of the client's own is sent with the socket out of the group (MonitorPause).
  MonitorPause pause(*this, ch.size() >= kPauseMonitorAt);
  if (!addsOnly || ch.size() <= kAddChunk) return applyTransaction(ch);
  size_t li = 0, bi = 0, ci = 0, ei = 0;
  // Takes up to `room` elements of from[i…] into to.
  auto take = [](auto& to, const auto& from, size_t& i, size_t& room) {
    size_t n = std::min(room, from.size() - i);
    to.assign(from.begin() + i, from.begin() + i + n);
    i += n;
    room -= n;
  };
  while (true) {
    dp::NftElementChanges part;
    size_t room = kAddChunk;
    take(part.liveAdds, ch.liveAdds, li, room);
    take(part.bucketAdds, ch.bucketAdds, bi, room);
    take(part.countAdds, ch.countAdds, ci, room);
    take(part.endpointAdds, ch.endpointAdds, ei, room);
    const bool last = li == ch.liveAdds.size() && bi == ch.bucketAdds.size() &&
                      ci == ch.countAdds.size() && ei == ch.endpointAdds.size();
    if (last) {
      part.rangedAdds = ch.rangedAdds;
      part.rangeAdds = ch.rangeAdds;
      part.vipAdds = ch.vipAdds;
    }
    if (auto st = applyTransaction(part); !st) return st;
    if (last) return {};
  }
}

Status NftClientImpl::applyTransaction(const dp::NftElementChanges& ch) {
  if (ch.size() == 0) return {};
  if (auto s = openSocket(); !s) return std::unexpected(s.error());
  bool tracked = false;
  auto rc = commit([&](uint32_t genid, std::vector<uint32_t>& acked) {
    return nft::encodeElementChanges(cfg_.nftTable, ch, seq_, acked, genid);
  }, tracked);
  if (!rc) return std::unexpected(rc.error().wrap(fmt::format("{} element changes", ch.size())));
  if (*rc) {
    exhaustive_ = true;  // see observeKernel()
    return fail(EINVAL, fmt::format("nft: element batch of {} changes failed: {}", ch.size(),
                                    std::strerror(*rc)));
  }
  if (tracked) {
    // The known state follows the transaction, as the kernel applied it.
    for (const auto& v : ch.vipDeletes) known_->vips.erase(v);
    for (const auto& c : ch.countDeletes) known_->vipBuckets.erase(c.vip);
    for (const auto& c : ch.countAdds) known_->vipBuckets[c.vip] = c.buckets;
    for (const auto& l : ch.liveDeletes) known_->live.erase(l);
    for (const auto& l : ch.liveAdds) known_->live.insert(l);
    for (const auto& b : ch.bucketDeletes) known_->buckets.erase(b.vip, b.bucket);
    for (const auto& b : ch.bucketAdds)
      known_->buckets.set(b.vip, b.bucket, b.mark ? b.mark : dp::BucketMap::kForeignZeroMark);
    for (const auto& v : ch.vipAdds) known_->vips.insert(v);
    for (const auto& e : ch.endpointDeletes) {
      auto it = known_->endpoints.find(e.vip);
      if (it == known_->endpoints.end()) continue;
      it->second.erase(e.mark);
      if (it->second.empty()) known_->endpoints.erase(it);
    }
    for (const auto& e : ch.endpointAdds) known_->endpoints[e.vip][e.mark] = e.endpoint;
    for (const auto& r : ch.rangeDeletes)
      if (auto it = known_->sourceRanges.find(r.vip); it != known_->sourceRanges.end())
        std::erase(it->second, r.src);
    for (const auto& v : ch.rangedDeletes) known_->sourceRanges.erase(v);
    for (const auto& v : ch.rangedAdds) known_->sourceRanges[v];
    for (const auto& r : ch.rangeAdds) {
      auto& l = known_->sourceRanges[r.vip];
      l.insert(std::upper_bound(l.begin(), l.end(), r.src), r.src);
    }
    // And the sets as the follower applies announcements to them: a VIP goes into (out of)
    // its VIP set and its refused set together.
    nft::RawSets& raw = knownRaw_;
    for (const auto& v : ch.vipDeletes) {
      raw.vipSet.erase(v);
      raw.refused.erase(v);
    }
    for (const auto& v : ch.rangedDeletes) raw.ranged.erase(v);
    for (const auto& r : ch.rangeDeletes) {
      auto it = raw.sources.find(r.vip);
      if (it == raw.sources.end()) continue;
      std::erase(it->second, r.src);
      if (it->second.empty()) raw.sources.erase(it);
    }
    for (const auto& v : ch.rangedAdds) raw.ranged.insert(v);
    for (const auto& r : ch.rangeAdds) raw.sources[r.vip].push_back(r.src);
    for (const auto& v : ch.vipAdds) {
      raw.vipSet.insert(v);
      raw.refused.insert(v);
    }
  }
  return {};
}

Status NftClientImpl::dumpSet(const char* set, const std::function<void(const nft::Element&)>& fn) {
  for (int attempt = 0;; ++attempt) {
    bool intr = false;
    std::vector<std::vector<uint8_t>> msgs;  // the answer, kept until the dump is consistent
    auto rc = request(nft::dumpElementsRequest(cfg_.nftTable, set, ++seq_), [&](const nlmsghdr* m) {
      auto* p = reinterpret_cast<const uint8_t*>(m);
      msgs.emplace_back(p, p + m->nlmsg_len);
    }, intr);
    if (!rc) return std::unexpected(rc.error());
    if (*rc == ENOENT) return {};  // no such set (a table of an older skeleton): no elements
    if (*rc != 0) return sysFail(*rc, fmt::format("nfnetlink list {} {}", cfg_.nftTable, set));
    if (intr && attempt < 3) continue;  // the set changed during the dump
    if (intr) return fail(EINTR, "nfnetlink: dump of " + std::string(set) + " kept changing");
    for (auto& m : msgs) nft::forEachElement(reinterpret_cast<const nlmsghdr*>(m.data()), fn);
    return {};
  }
}

Result<dp::NftCounterSnapshot> NftClientImpl::readCounters() {
  if (auto s = openSocket(); !s) return std::unexpected(s.error());
  dp::NftCounterSnapshot snap;
  snap.flowLimit = cfg_.flowTableSize;
  // Element counters: per VIP (vip4/6), per VIP × endpoint (ep4/6, the endpoint in the
  // comment), refused per VIP (refused4/6).
  for (const char* set : {"vip4", "vip6", "refused4", "refused6"}) {
    auto& to = set[0] == 'v' ? snap.vip : snap.refusedByVip;
    auto rc = dumpSet(set, [&](const nft::Element& e) {
      if (auto ip = nft::vipElement(e); ip && e.counter) to[*ip] = *e.counter;
    });
    if (!rc) return std::unexpected(rc.error());
  }
  for (const char* set : {"ep4", "ep6"}) {
    auto rc = dumpSet(set, [&](const nft::Element& e) {
      auto ep = nft::endpointElement(e);
      if (!ep || !e.counter) return;
      auto& v = snap.endpoint[{ep->vip, ep->endpoint}];
      v.packets += e.counter->packets;
      v.bytes += e.counter->bytes;
    });
    if (!rc) return std::unexpected(rc.error());
  }
  // Flow table occupancy: the elements a dump yields (expired ones are not dumped, as in
  // `nft list map`).
  for (bool v4 : {true, false}) {
    uint64_t n = 0;
    auto rc = dumpSet(v4 ? "flow4" : "flow6", [&](const nft::Element&) { ++n; });
    if (!rc) return std::unexpected(rc.error());
    (v4 ? snap.flows4 : snap.flows6) = n;
  }
  // Refused by reason: the named counters refused_<reason>; new flows: new_flows (packets).
  bool intr = false;
  auto rc = request(nft::dumpObjectsRequest(cfg_.nftTable, ++seq_), [&](const nlmsghdr* m) {
    auto c = nft::decodeCounterObject(m);
    if (!c || c->table != cfg_.nftTable) return;
    if (c->name.starts_with("refused_")) snap.refused[c->name.substr(8)] = c->value;
    else if (c->name == "new_flows") snap.newFlows = c->value.packets;
  }, intr);
  if (!rc) return std::unexpected(rc.error());
  if (*rc != 0 && *rc != ENOENT) return sysFail(*rc, "nfnetlink list counters " + cfg_.nftTable);
  return snap;
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
  // Answers to this batch only: BATCH_BEGIN … BATCH_END (an answer left over from an earlier
  // exchange must not be taken for one).
  auto msgs0 = nft::split(buf);
  if (!msgs0 || msgs0->empty()) return fail(EINVAL, "nfnetlink: malformed batch");
  const uint32_t first = msgs0->front()->nlmsg_seq, last = msgs0->back()->nlmsg_seq;
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
    auto msgs = nft::split({rx.data(), static_cast<size_t>(n)});
    if (!msgs) return fail(EBADMSG, "nfnetlink: malformed answer to a batch");
    for (const nlmsghdr* m : *msgs) {
      nft::Reply r = nft::classify(m);
      if (r.kind != nft::Reply::Ack && r.kind != nft::Reply::Error) continue;
      if (m->nlmsg_seq - first > last - first) continue;  // modulo 2^32
      if (r.error && !firstError) firstError = r.error;
      // An error on the batch header (e.g. no memory for the batch) ends it at once.
      if (r.error && !pending.contains(m->nlmsg_seq)) pending.clear();
      pending.erase(m->nlmsg_seq);
    }
  }
  return firstError;
}

}  // namespace kst
