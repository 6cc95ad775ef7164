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

struct nft_ctx;
struct nlmsghdr;

namespace kst::nft {
struct Element;
}

namespace kst {

class NftClientImpl : public dp::NftClient {
 public:
  explicit NftClientImpl(const DataplaneConfig& cfg);
  ~NftClientImpl() override;
  /** Raw nfnetlink only (GETGEN, GETTABLE, GETSETELEM dumps and lookups); libnftables is
   *  used for nothing but the table skeleton (run()). When the ruleset generation is still
   *  the one at which this client last knew the table, that state is returned without
   *  reading the elements (see observe() in the .cpp). */
  Result<dp::NftState> observe() override;
  Status run(const std::string& script) override;
  /** The step rendered as nft text (desired/nft_render.h renderNftStep) and run(). */
  Status applyStep(dp::TableStep step, const std::string& skeletonId, const std::string& skeleton,
                   const dp::NftElementChanges& elements) override;
  Status applyElements(const dp::NftElementChanges& changes) override;
  /** GETSETELEM dumps of the counter sets and flow maps, one GETOBJ dump (never the cache). */
  Result<dp::NftCounterSnapshot> readCounters() override;
  /** nfnetlink messages and libnftables commands sent so far (benchmarks). */
  uint64_t messagesSent() const { return sent_; }

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
  // with NFNL_BATCH_GENID). Reset by a text transaction, a failed or unconditioned batch.
  std::optional<dp::NftState> known_;
  uint32_t knownGen_ = 0;
};

}  // namespace kst
