// Router role reconciler: observe (netlink dumps + nft listing of owned objects only) →
// RouterDb::update (plan and diff, pure: desired/router_db.h) → apply (batched netlink, one nft
// transaction) → RouterDb::commit, or forget on a failure (retried by the next pass).
//
// NOTE Performance (setCaching(true), what the daemon runs): after a pass in which every
// change succeeded, the kernel holds exactly the database's state, so the next pass neither
// dumps nor lists anything: the database plans and diffs only the VIPs whose model inputs
// changed, so one endpoint change costs O(its VIP) kernel messages and CPU, not O(V). The kernel
// is re-read (the database seeded again) after a failure, after resyncNextPass() (the daemon's
// periodic resync repairs drift), and on a fresh reconciler (a restart adopts what the kernel
// holds). Given the VIPs that changed since the previous pass (reconcile()'s `changed`: what
// ModelBuilder::apply returned, accumulated; the daemon passes it), the database compares only
// those VIPs' services, O(changed · log V), instead of every service (O(V), ≈ 1 ms at 10k).
// A hint whose added/removed VIPs do not account for the change in the number of services is
// ignored (compare all). Without caching, every pass observes and plans every VIP.
//
// Released slots (docs/load-balancing.md "Released slots"): the flow tables pin a flow to a
// (VIP, slot mark) only while that pair is in the live-slot set, which follows the plan like the
// bucket maps. A pass in which an endpoint leaves a VIP (or a VIP goes) deletes its live element
// in the same transaction as the bucket changes: one element, whatever the number of pinned
// flows; each of those flows is hashed again on its next packet (lazy invalidation). Its stale
// flow-table element is not refreshed any more and times out within --flow-timeout, so until
// then that slot of that VIP is held: not given to another endpoint (RouterDb::setHeld), else
// the stale pins would become valid again and send old flows to the new endpoint. A fresh
// reconciler that finds an existing table does not know what was released before it started:
// it holds every free slot below the kernel's slot count for --flow-timeout.
//
// NOTE Logging: info for each applied change summary and each released slot, warn for
// failed changes (retried on the next pass), debug for "nothing to do".
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "dataplane/kernel.h"
#include "desired/config.h"
#include "desired/router.h"
#include "desired/router_db.h"
#include "model/model.h"

namespace kst {

/** Wall time of each phase of a pass, in seconds (benchmarks, debug log). */
struct PassTimings {
  double observe = 0;  // netlink dumps + nft listing (0 when the database's state was used)
  double plan = 0;     // model → bucket tables → desired kernel objects (RouterDb::update)
  double diff = 0;     // desired vs the database's state (RouterDb::update)
  double netlink = 0;  // rtnetlink requests until the last ack
  double nft = 0;      // nftables transaction
};

struct PassResult {
  size_t changes = 0;         // netlink changes + nft element changes applied
  size_t nftElementChanges = 0;
  size_t releasedSlots = 0;   // live-slot elements deleted (pinned flows hashed again)
  bool nftRebuilt = false;
  bool fullObserve = false;   // the kernel was re-read (not the database's state)
  size_t vipsCompared = 0;    // services compared with the committed inputs (cached passes)
  size_t vipsPlanned = 0;     // VIPs planned and diffed (all of them in a whole-model pass)
  PassTimings timings;
  std::vector<std::string> failures;
  std::vector<Problem> problems;
  bool ok() const { return failures.empty(); }
};

class RouterReconciler {
 public:
  /** MPLS mode: the device through which an endpoint is *directly* connected (no gateway), or
   *  nullopt when it is not (then MPLS cannot reach it). Implemented over the kernel FIB. */
  using DeviceResolver = RouterDb::DeviceResolver;

  RouterReconciler(const DataplaneConfig& cfg, dp::NetlinkClient& nl, dp::NftClient& nft,
                   DeviceResolver resolver = {});
  /** One level-triggered pass. Returns an Error only when observation itself failed.
   *  @param changed null, or the VIPs whose TunnelService may differ between the model of
   *  the previous reconcile() call and this one (a superset is fine, a missing VIP is not):
   *  then a cached pass looks at those VIPs only (NOTE Performance). */
  Result<PassResult> reconcile(const Model& model, const std::set<IpAddress>* changed = nullptr);
  /** Observed owned state (each pass's observation; tests compare it with the desired state). */
  Result<dp::RouterState> observe();
  /** The last plan computed (bucket tables), for publishing and tests. */
  const RouterPlan& lastPlan() const { return db_.plan(); }
  /** Keep the database's state between passes (NOTE Performance above). Off by default:
   *  every pass then re-reads the kernel. */
  void setCaching(bool on);
  /** The next pass re-reads the kernel (periodic resync). */
  void resyncNextPass();
  /** Services whose published bucket table (desired/published.h) differs from the last plan:
   *  what an elected writer should publish. Only VIPs planned since the previous call are
   *  encoded again (a pass that changed one VIP costs one encoding, not V). */
  std::vector<std::pair<ObjectKey, std::string>> pendingPublications() {
    return db_.pendingPublications();
  }
  /** The traffic counters of the router's nft table (dp::NftClient::readCounters). Uses the
   *  reconciler's nft client: call it from the reconciler's thread; another thread reads
   *  through an NftClientImpl of its own (linux/nft_client.h, one per reader). */
  Result<dp::NftCounterSnapshot> readCounters() { return nft_.readCounters(); }
  /** Removes everything owned. */
  Result<PassResult> cleanup();
  ~RouterReconciler();

 private:
  Status applyAll(const RouterDelta& delta, PassResult& res);
  /** Starts holding the slots whose live element the pass deletes; forgets every hold when
   *  the table (and its flow maps) is created, rebuilt or removed. */
  void holdReleased(const RouterDelta& delta, PassResult& res);
  /** Gives the holds that have not expired to the database. */
  void passHeld();

  DataplaneConfig cfg_;
  dp::NetlinkClient& nl_;
  dp::NftClient& nft_;
  RouterDb db_;
  std::map<dp::SlotMark, std::chrono::steady_clock::time_point> held_;  // → end of the hold
  uint32_t heldBelow_ = 0;  // restart: free slots below it are held until heldBelowUntil_
  std::chrono::steady_clock::time_point heldBelowUntil_{};
  bool observedOnce_ = false;
  bool caching_ = false;
};

}  // namespace kst
