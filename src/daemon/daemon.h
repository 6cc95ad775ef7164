// Wiring: a source publishes snapshots; one reconcile thread turns the latest snapshot into
// kernel state. Events only mark work (coalesced); failures are retried with capped
// exponential backoff; a periodic resync re-reads the kernel so drift is repaired.
//
// NOTE Threading: the source calls onSnapshot() from its own thread; everything else runs on
// the reconcile thread. NOTE Shutdown: stopping never removes kernel state (a restart must
// not drop packets); `kube-service-tunnel cleanup` does.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "desired/config.h"
#include "model/model.h"
#include "reconcile/agent_reconciler.h"
#include "reconcile/router_reconciler.h"
#include "source/source.h"

namespace kst {

struct DaemonOptions {
  bool router = true;
  bool agent = true;
  std::string nodeName;
  ModelOptions model;
  std::chrono::milliseconds resyncInterval{std::chrono::seconds(60)};
  std::chrono::milliseconds maxBackoff{std::chrono::seconds(30)};
  bool once = false;  // one pass, then return (exit code reflects success)
};

/** Receives problems found in the model (log + Kubernetes Event in the API source). */
class ProblemSink {
 public:
  virtual ~ProblemSink() = default;
  virtual void report(const Problem& p) = 0;
};

class Daemon {
 public:
  Daemon(DaemonOptions opts, Source& source, RouterReconciler* router, AgentReconciler* agent,
         ProblemSink* sink = nullptr);
  /** Runs until stop(). @return 0, or 1 when `once` and the pass failed. */
  int run();
  void stop();
  void onSnapshot(const ClusterObjects& objs);

 private:
  bool pass(const ClusterObjects& objs);
  DaemonOptions opts_;
  Source& source_;
  RouterReconciler* router_;
  AgentReconciler* agent_;
  ProblemSink* sink_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<ClusterObjects> pending_;
  bool stopping_ = false;
  std::set<std::tuple<int, std::string, std::string>> reported_;
};

}  // namespace kst
