// Router role reconciler: observe (netlink dumps + nft listing of owned objects only) →
// plan (pure) → diff (pure) → apply (batched netlink, one nft transaction).
//
// NOTE Logging: info for each applied change summary, warn for failed changes (retried on the
// next pass), debug for "nothing to do".
#pragma once

#include <functional>
#include <memory>
#include <optional>

#include "dataplane/kernel.h"
#include "desired/config.h"
#include "desired/router.h"
#include "model/model.h"

namespace kst {

struct PassResult {
  size_t changes = 0;         // netlink changes + nft element changes applied
  size_t nftElementChanges = 0;
  bool nftRebuilt = false;
  std::vector<std::string> failures;
  std::vector<Problem> problems;
  bool ok() const { return failures.empty(); }
};

class RouterReconciler {
 public:
  /** MPLS mode: the device through which an endpoint is *directly* connected (no gateway), or
   *  nullopt when it is not (then MPLS cannot reach it). Implemented over the kernel FIB. */
  using DeviceResolver = std::function<std::optional<std::string>(const IpAddress&)>;

  RouterReconciler(const DataplaneConfig& cfg, dp::NetlinkClient& nl, dp::NftClient& nft,
                   DeviceResolver resolver = {});
  /** One level-triggered pass. Returns an Error only when observation itself failed. */
  Result<PassResult> reconcile(const Model& model);
  /** Observed owned state (for tests and `status`). */
  Result<dp::RouterState> observe();
  /** The last plan computed (bucket tables), for publishing and tests. */
  const RouterPlan& lastPlan() const { return plan_; }
  /** Removes everything owned. */
  Result<PassResult> cleanup();

 private:
  DataplaneConfig cfg_;
  dp::NetlinkClient& nl_;
  dp::NftClient& nft_;
  DeviceResolver resolver_;
  RouterPlan plan_;
};

}  // namespace kst
