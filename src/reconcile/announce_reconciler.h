// Announce table reconciler (docs/announce.md): after each router pass, makes the announce
// table (--announce-table) hold one route per VIP this router is fit to serve
// (desired/announce.h), which bird2 exports to the DC routers over BGP.
//
// - Called by the daemon after every router pass, so nothing is announced before the router's
//   first pass since start. A fresh process adopts what the table holds (a restart withdraws
//   nothing: the table stays, like the rest of the dataplane).
// - After a router pass that did not apply everything, only withdrawals are made: a VIP whose
//   programming may have failed is not announced, one that left the plan is withdrawn.
// - Drained: while the drain file exists (`kube-service-tunnel drain`, it survives restarts)
//   the table is emptied; `undrain` removes the file. DrainWatcher pokes the daemon when the
//   file comes or goes, the daemon's next pass reads it.
// - The observed table is kept between passes after a pass in which every change succeeded
//   (like the router's cache); the daemon's periodic resync and failures re-read the kernel.
#pragma once

#include <atomic>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "dataplane/kernel.h"
#include "desired/router.h"

namespace kst {

struct AnnounceResult {
  size_t changes = 0;
  size_t announced = 0;  // routes in the table after the pass
  bool drained = false;
  std::vector<std::string> failures;
  bool ok() const { return failures.empty(); }
};

class AnnounceReconciler {
 public:
  /** @param drainFile path of the drained state file ("" = never drained). */
  AnnounceReconciler(uint32_t table, dp::NetlinkClient& nl, std::string drainFile);
  /** @param routerOk the router pass that computed `plan` applied all its changes. */
  Result<AnnounceResult> reconcile(const RouterPlan& plan, bool routerOk);
  /** The next pass re-reads the table. */
  void resyncNextPass() { cache_.reset(); }
  /** The owned routes of the announce table. */
  Result<std::vector<dp::Route>> observe();
  /** Removes every owned route of the announce table. */
  Result<AnnounceResult> cleanup();
  bool drained() const;
  uint32_t table() const { return table_; }
  /** The VIPs the announce table holds as of the last pass (metrics); nullopt when unknown
   *  (not read yet, or the last pass failed: the next one reads the table again). */
  std::optional<std::set<IpAddress>> announcedVips() const;

 private:
  Result<AnnounceResult> converge(const std::vector<dp::Route>& desired, bool drained);
  uint32_t table_;
  dp::NetlinkClient& nl_;
  std::string drainFile_;
  std::optional<std::vector<dp::Route>> cache_;
};

/** Drained state file helpers (`drain` / `undrain`, the reconciler). */
Status writeDrainFile(const std::string& path);
Status removeDrainFile(const std::string& path);

/** Calls onChange (from its own thread) whenever the drain file is created, replaced or
 *  removed (inotify on its directory, which it creates if missing). */
class DrainWatcher {
 public:
  DrainWatcher(std::string drainFile, std::function<void()> onChange);
  Status start();
  void stop();
  ~DrainWatcher();

 private:
  std::string dir_, name_;
  std::function<void()> onChange_;
  int fd_ = -1;
  int stopFd_ = -1;
  std::thread thread_;
};

}  // namespace kst
