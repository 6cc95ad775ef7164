// Wiring: a source delivers changes; one reconcile thread folds them into the model
// (incrementally, model.h ModelBuilder) and turns the model into kernel state. Deliveries
// only mark work: whatever arrives during a pass is folded into the next one. Failures are
// retried with capped exponential backoff; a periodic resync re-reads the kernel so drift is
// repaired.
//
// NOTE Threading: the source calls onChanges() from its own thread; everything else runs on
// the reconcile thread. NOTE Shutdown: stopping never removes kernel state (a restart must
// not drop packets); `kube-service-tunnel cleanup` does.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <map>
#include <set>
#include <string>

#include "daemon/metrics.h"
#include "desired/config.h"
#include "model/model.h"
#include "reconcile/agent_reconciler.h"
#include "reconcile/announce_reconciler.h"
#include "reconcile/router_reconciler.h"
#include "reconcile/sinks.h"
#include "source/source.h"

namespace kst {

struct DaemonOptions {
  bool router = true;
  bool agent = true;
  std::string nodeName;
  ModelOptions model;
  std::chrono::milliseconds resyncInterval{std::chrono::seconds(60)};
  std::chrono::milliseconds maxBackoff{std::chrono::seconds(30)};
  /** Agent: between passes, re-read the pod namespaces this often (repairs what was removed by
   *  hand and confirms repaired pods for their VIP readiness gate). 0: only with the resync. */
  std::chrono::milliseconds agentVerifyInterval{std::chrono::seconds(2)};
  bool once = false;  // one pass, then return (exit code reflects success)
};

class Daemon {
 public:
  Daemon(DaemonOptions opts, Source& source, RouterReconciler* router, AgentReconciler* agent,
         ProblemSink* sink = nullptr, DecisionPublisher* publisher = nullptr);
  /** Runs until stop(). @return 0, or 1 when `once` and the pass failed. */
  int run();
  void stop();
  /** A source's delivery; folded into what is pending until the reconcile thread takes it. */
  void onChanges(ObjectChanges changes);
  /** Asks for a pass without new objects (e.g. this router just became the publisher). */
  void poke();
  /** Reconcile passes run so far and whether the last one succeeded (health endpoint). */
  int passes() const { return passes_; }
  bool lastPassOk() const { return lastOk_; }
  /** The router's result of the last pass (read it after passes() moved, while the daemon is
   *  idle, or after run() returned). */
  const PassResult& lastRouterPassForTest() const { return lastRouterPass_; }
  /** Router: keeps the announce table in step with each router pass (announce_reconciler.h).
   *  Set before run(). */
  void setAnnouncer(AnnounceReconciler* announcer) { announcer_ = announcer; }
  /** Router: while the DecisionPublisher holds the writer lease, writes the status of our
   *  LoadBalancer Services after each pass (model/loadbalancer.h planLoadBalancerStatus with
   *  opts.model.policy; no policy: every pool empty). Set before run(). */
  void setLoadBalancerStatus(LoadBalancerStatusSink* sink) { lbStatus_ = sink; }
  /** Records passes, failures and the VIPs' names into `metrics` (daemon/metrics.h). Set
   *  before run(). */
  void setMetrics(Metrics* metrics) { metrics_ = metrics; }

  /** Agent: receives the pods' VIP readiness after every agent pass. Set before run(). */
  void setPodGateSink(PodGateSink* gates) { gates_ = gates; }

 private:
  bool pass(std::chrono::steady_clock::time_point start);
  /** The LoadBalancer status writes of one pass; adds what cannot be allocated to problems. */
  bool writeLoadBalancerStatus(std::vector<Problem>& problems);
  /** The agent alone (periodic verify between passes). */
  void verifyAgent();
  DaemonOptions opts_;
  Source& source_;
  RouterReconciler* router_;
  AgentReconciler* agent_;
  ProblemSink* sink_;
  DecisionPublisher* publisher_;
  AnnounceReconciler* announcer_ = nullptr;
  LoadBalancerStatusSink* lbStatus_ = nullptr;
  // Status this router wrote lately (reconcile thread only): until the watch cache shows it, a
  // plan from the cache asks for it again, which needs no fresh read of the API.
  std::map<ObjectKey, std::pair<std::vector<IpAddress>, std::chrono::steady_clock::time_point>>
      lbWritten_;
  Metrics* metrics_ = nullptr;
  std::optional<Reconciler> running_;  // the reconciler of the pass (exceptions' metrics)
  bool announceUnreported_ = true;      // the announce state metrics_ has may be stale
  bool announceDrained_ = false;
  PodGateSink* gates_ = nullptr;
  std::set<std::string> verifyFailures_;  // of the last verify, logged once while they last
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<ObjectChanges> pending_;
  ModelBuilder builder_;  // reconcile thread only
  // VIPs the builder changed since the router's last pass (router_reconciler.h, NOTE
  // Performance): the router compares only those with its cache. Reconcile thread only.
  std::set<IpAddress> routerChanged_;
  PassResult lastRouterPass_;
  bool stopping_ = false;
  bool poked_ = false;
  std::map<std::tuple<int, std::string, std::string>, Problem> reported_;
  std::atomic<int> passes_{0};
  std::atomic<bool> lastOk_{false};
};

}  // namespace kst
