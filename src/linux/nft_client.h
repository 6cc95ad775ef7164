// nftables access to the daemon's single table: libnftables for the table structure (text,
// rendered by desired/nft_render.h), raw nfnetlink for set/map elements and every observation.
// This is the I/O half: the messages are encoded and decoded by linux/nft_codec.h.
//
// NOTE Performance: at V = 10k and B = 64 the bucket maps hold 640k elements. Through nft's
// text parser (or its JSON listing) that is seconds of CPU and hundreds of MiB; encoded
// directly (NEWSETELEM/DELSETELEM in one nfnetlink batch, GETSETELEM dumps parsed in place)
// it is the kernel's own pace. Element keys: `ip daddr . meta mark` is the address (network
// order) followed by the mark (host order), data `meta mark` (host order).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dataplane/kernel.h"
#include "desired/config.h"
#include "linux/nft_codec.h"

struct nft_ctx;
struct nlmsghdr;

namespace kst {

class NftClientImpl : public dp::NftClient {
 public:
  explicit NftClientImpl(const DataplaneConfig& cfg);
  ~NftClientImpl() override;
  /** Raw nfnetlink only (GETGEN, GETTABLE, GETSETELEM dumps and lookups); libnftables is
   *  used for nothing but the table skeleton (run()). When the ruleset generation is still
   *  the one at which this client last knew the table, that state is returned without
   *  reading the elements; when others committed since, their announcements (the nf_tables
   *  multicast group, followed from the first observation on) bring the state forward
   *  (see observe() in the .cpp). */
  Result<dp::NftState> observe() override;
  Status run(const std::string& script) override;
  /** Whether this kernel accepts a lookup in a map without a data register (DataplaneConfig::
   *  nftMapLookup): read from the daemon's table when it exists (the variant its skeleton id
   *  matches), else tried in a table of its own (`<table>_probe`), removed again. */
  static bool mapLookupWorks(const DataplaneConfig& cfg);
  /** The skeleton id in the table's comment ("" without the table or the comment). */
  Result<std::string> tableSkeletonId();
  /** The step rendered as nft text (desired/nft_render.h renderNftStep) and run(). */
  Status applyStep(dp::TableStep step, const std::string& skeletonId, const std::string& skeleton,
                   const dp::NftElementChanges& elements) override;
  Status applyElements(const dp::NftElementChanges& changes) override;
  /** GETSETELEM dumps of the counter sets and flow maps, one GETOBJ dump (never the cache). */
  Result<dp::NftCounterSnapshot> readCounters() override;
  /** nfnetlink messages and libnftables commands sent so far (benchmarks). */
  uint64_t messagesSent() const { return sent_; }
  /** nf_tables announcements received so far (tests: the client's own element announcements
   *  never arrive, only their NEWGEN). */
  uint64_t announcementsReceived() const { return announced_; }

  /** Own element batches of at least this many changes are sent with the announcement
   *  socket out of NFNLGRP_NFTABLES (leaveGroup()). */
  static constexpr size_t kPauseMonitorAt = 4096;

 private:
  Status openSocket();
  /** One transaction of element changes (applyElements splits large additions). */
  Status applyTransaction(const dp::NftElementChanges& changes);
  Status runText(const std::string& script);
  /** One consistent GETSETELEM dump of set (retried when the set changes during it): fn per
   *  element. A missing set or table yields nothing. */
  Status dumpSet(const char* set, const std::function<void(const nft::Element&)>& fn);
  /** The ruleset generation (NFT_MSG_GETGEN). */
  Result<uint32_t> generation();
  /** Table, VIP sets, bucket maps, endpoint counter and source-range sets read from the
   *  kernel. */
  Result<dp::NftState> observeKernel();
  /** Everything observeKernel() reads but the bucket map lookups (the table, the small sets;
   *  the bucket maps too when bucketMaps: dumped whole), and raw the sets as read. */
  Status readSets(dp::NftState& st, bool bucketMaps, nft::RawSets& raw);
  /** Looks up the bucket keys of vips (in st.vips, sorted) into st.buckets. */
  Status lookupBuckets(dp::NftState& st, const std::vector<IpAddress>& vips);
  /** known_ brought forward from the announcements received since knownGen_ to the kernel's
   *  generation gen (at least); false when it cannot be (then known_ is to be read again). */
  bool followForeign(uint32_t gen);
  /** The multicast socket (NFNLGRP_NFTABLES), opened on the first observation; -1 without. */
  void openMonitor();
  /** Feeds every pending notification to follower_. */
  void drainMonitor();
  /** Sends the batch encode(genid, acked) builds; see known_. tracked: the batch was applied
   *  as the commit right after knownGen_, which now names the generation after it.
   *  @return as sendBatch(). */
  Result<int> commit(
      const std::function<std::vector<uint8_t>(uint32_t, std::vector<uint32_t>&)>& encode,
      bool& tracked);
  /** Sends one request and calls fn for every reply message until the ack or NLMSG_DONE.
   *  @return 0, or the positive errno the kernel answered. */
  Result<int> request(const std::vector<uint8_t>& req,
                      const std::function<void(const nlmsghdr*)>& fn, bool& interrupted);
  /** The receive buffer of every nfnetlink exchange (≥ kRx bytes), kept for the client's life. */
  std::vector<uint8_t>& rxBuffer();
  /** Sends an encoded batch (BATCH_BEGIN … BATCH_END) in one sendmsg and waits for the ack of
   *  each message in seqs. @return 0, or the positive errno of the first message the kernel
   *  refused (the whole transaction is then aborted). */
  Result<int> sendBatch(const std::vector<uint8_t>& buf, const std::vector<uint32_t>& seqs);
  DataplaneConfig cfg_;
  nft_ctx* ctx_;
  uint64_t sent_ = 0;
  uint64_t announced_ = 0;
  int fd_ = -1;  // NETLINK_NETFILTER
  uint32_t seq_ = 0;
  int sndbuf_ = 0;
  // NOTE Performance: kept, not allocated per exchange. A fresh 1–2 MiB buffer per call comes
  // from mmap (or a thread arena that trims it back) and is zero-filled: ≈ 500 page faults,
  // ≈ 1.2 ms added to every exchange with a large answer, in the daemon's thread.
  std::vector<uint8_t> rx_;
  bool exhaustive_ = false;  // next observation dumps the bucket maps (after a failed batch)
  // The table as it is at ruleset generation knownGen_ (a complete observation with no commit
  // during it, then this client's own commits, each conditioned on the generation before it
  // with NFNL_BATCH_GENID, and others' commits as follower_ applied their announcements).
  // Reset by a text transaction, a failed or unconditioned batch, a commit not followed.
  std::optional<dp::NftState> known_;
  uint32_t knownGen_ = 0;
  nft::RawSets knownRaw_;         // with known_ (the last observation's, as followed since)
  bool knownExhaustive_ = false;  // known_'s buckets are a whole dump, not lookups
  int mon_ = -1;                  // NETLINK_NETFILTER, member of NFNLGRP_NFTABLES
  bool monTried_ = false;
  bool monPaused_ = false;        // out of the group for a large own batch (leaveGroup())
  /** Leaves NFNLGRP_NFTABLES for a large own batch (the follower is broken meanwhile) and
   *  joins it again after, resuming the follower when only the client's own tracked commits
   *  happened in between (the generation says so), else leaving the next observation full. */
  void leaveGroup();
  void rejoinGroup();
  struct MonitorPause {
    NftClientImpl& c;
    bool on;
    MonitorPause(NftClientImpl& client, bool pause) : c(client), on(pause) {
      if (on) c.leaveGroup();
    }
    ~MonitorPause() {
      if (on) c.rejoinGroup();
    }
    MonitorPause(const MonitorPause&) = delete;
    MonitorPause& operator=(const MonitorPause&) = delete;
  };
  std::vector<uint8_t> monRx_;
  nft::CommitFollower follower_;
};

}  // namespace kst
