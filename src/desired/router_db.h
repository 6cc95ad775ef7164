// Router state database (pure): what the router's kernel holds, indexed per VIP, and the one
// planner that turns a model change into exactly the kernel objects and nft elements to change.
//
// It owns:
//   - the kernel state it was seeded with (observed) or that the last committed update left,
//   - slot allocation (sticky per VIP and endpoint: planRouter over the VIP's routes) and
//     nexthop-id allocation (NexthopIdPool: sticky per Nexthop::key(), reference-counted by the
//     routes that use an id, new ids the lowest unused ones of the owned range),
//   - the per-VIP plan (bucket tables) of the whole model, the problems, the publications.
//
// One pass shape, fed a change set:
//   change set → base view of those VIPs → plan them → nexthop ids → desired objects of those
//   VIPs → dp::diffRouter + nftElementChanges against the base view → RouterDelta.
// A *whole* update's change set is every VIP (of the model and of the base): its base view is
// the whole state (after seed(): what the kernel was observed to hold), and the objects shared by
// all VIPs (links, rules, the nft table) are in it. A *partial* update's change set is the VIPs
// whose inputs differ from the committed ones (those hinted, or found by comparing every service):
// its base view is their routes, the nexthops those use and their nft elements. A partial update
// that changes the slot count or the families in use diffs the fwmark rules as well (a slot
// table's unreachable guards are per VIP: VipPlan::tables); one that would change another shared
// object (devices, the nft table) is widened to a whole one.
//
// The caller applies the delta and then calls commit() (everything applied: the kernel holds the
// target) or forget() (a failure: the kernel state is unknown; seed() again from an observation).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "dataplane/kernel.h"
#include "dataplane/types.h"
#include "desired/config.h"
#include "desired/nft_render.h"
#include "desired/router.h"
#include "model/model.h"

namespace kst {

/**
 * Nexthop ids of the owned range [cfg.nexthopIdBase, cfg.nexthopIdEnd()). Holds the ids the
 * kernel has, by Nexthop::key(); a new nexthop takes the lowest id that is neither held nor
 * already drawn in the same plan (an id stays held until the nexthop is deleted, so a pass never
 * reuses the id of a nexthop it deletes). Ids held outside the range (seeded state) stay sticky
 * for their key but are never handed out.
 */
class NexthopIdPool {
 public:
  explicit NexthopIdPool(const DataplaneConfig& cfg);
  /** The kernel holds nexthop `id` with this key. A second id with the same key is held too
   *  but not sticky (the first one is). */
  void hold(const NexthopKey& key, uint32_t id);
  /** The kernel no longer holds nexthop `id` (of this key). */
  void release(const NexthopKey& key, uint32_t id);

  /** One plan's allocation (routerState()'s NexthopIdDraw). Valid while the pool is unchanged. */
  class Draw {
   public:
    std::optional<uint32_t> operator()(const dp::Nexthop& nh);

   private:
    friend class NexthopIdPool;
    explicit Draw(const NexthopIdPool& p);
    const NexthopIdPool* pool_;
    std::set<uint32_t>::const_iterator free_;
    uint32_t next_;
    std::set<uint32_t> taken_;
  };
  Draw draw() const { return Draw(*this); }

 private:
  uint32_t base_, end_;
  uint32_t high_;               // 1 + the highest held id of the range (base_ when none)
  std::set<uint32_t> free_;     // ids of [base_, high_) not held
  std::unordered_map<NexthopKey, uint32_t, NexthopKeyHash> byKey_;
};

/** What one update changes in the kernel, in apply order: `changes` (netlink; adds and replaces
 *  come before deletions, see dp::diffRouter) with the nft step between the adds and the
 *  deletions. */
struct RouterDelta {
  std::vector<dp::Change> changes;
  NftTableStep table = NftTableStep::Keep;
  bool tablePresent = false;       // the nft table exists after the step
  std::string skeleton, skeletonId;  // of the table to create (Create, Rebuild)
  dp::NftElementChanges elements;  // after the table step (on an empty table for Create/Rebuild)
  std::vector<Problem> problems;   // of the whole plan
  bool whole = false;              // the change set was every VIP
  bool hintIgnored = false;        // the hint did not fit the model: every service was compared
  size_t vipsCompared = 0;         // services compared with the committed inputs
  size_t vipsPlanned = 0;
  double planSeconds = 0, diffSeconds = 0;
};

class RouterDb {
 public:
  /** MPLS mode: the device through which an endpoint is directly connected (RouterReconciler). */
  using DeviceResolver = std::function<std::optional<std::string>(const IpAddress&)>;

  explicit RouterDb(const DataplaneConfig& cfg, DeviceResolver resolver = {});
  ~RouterDb();

  /** The kernel state is known (seeded, or committed since). */
  bool known() const { return known_; }
  /** Adopts an observation of the kernel's owned objects as the state it holds. The next update
   *  is whole: a restart plans against what the kernel holds (sticky slots and ids) and finds
   *  nothing to change when the model did not change. */
  void seed(dp::RouterState observed);
  /** The kernel state is unknown (a change failed, or a resync is due): seed() again. */
  void forget();

  /** Plans the model against the known state. @param changed null, or the VIPs whose
   *  TunnelService may differ from the model of the previous committed update (a superset is
   *  fine, a missing VIP is not). Requires known(). Replaces any uncommitted update. */
  RouterDelta update(const Model& model, const std::set<IpAddress>* changed = nullptr);
  /** The kernel now holds the target of the last update() (every change succeeded). `model`
   *  must be the one given to that update(). */
  void commit(const Model& model);

  /** Slots not to give to a new endpoint (Allocations::held, heldBelow), from the next
   *  update() on: the caller keeps them (released less than --flow-timeout ago). */
  void setHeld(std::map<IpAddress, std::set<uint32_t>> held, uint32_t heldBelow) {
    held_ = std::move(held);
    heldBelow_ = heldBelow;
  }

  /** The plan of the whole model (bucket tables, slots), as of the last update(). */
  const RouterPlan& plan() const { return plan_; }
  /** Services whose published bucket table (desired/published.h) differs from the plan. Only
   *  VIPs planned since the previous call are encoded again. */
  std::vector<std::pair<ObjectKey, std::string>> pendingPublications();

 private:
  struct Index;
  struct Pending;
  /** The pass over a change set: `changed` null = every VIP (whole). false: a partial update
   *  that touches shared objects (the caller widens it). */
  bool pass(const Model& model, const std::vector<IpAddress>* changed, const Model* sub,
            RouterDelta& d);
  const dp::RouterState& flatBase();
  bool ensureIndex();
  std::vector<Problem> allProblems() const;

  DataplaneConfig cfg_;
  DeviceResolver resolver_;
  bool known_ = false;
  dp::RouterState flat_;             // the base when idx_ is null (seeded, or inputs unknown)
  std::unique_ptr<Index> idx_;       // the base, indexed per VIP (committed, inputs known)
  std::map<IpAddress, TunnelService> inputs_;  // the committed model's services, by VIP
  bool inputsKnown_ = false;
  std::unique_ptr<Pending> pending_;

  std::map<IpAddress, std::set<uint32_t>> held_;
  uint32_t heldBelow_ = 0;
  RouterPlan plan_;
  std::map<ObjectKey, std::vector<Problem>> problems_;  // plan_.problems by service
  std::set<IpAddress> pubCheck_;  // planned since the last pendingPublications()
  bool pubCheckAll_ = true;       // a whole plan since then
  std::map<IpAddress, std::pair<ObjectKey, std::string>> pubPending_;
};

}  // namespace kst
