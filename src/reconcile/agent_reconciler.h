// Agent role reconciler: for every endpoint on this node, find the pod's network namespace —
// the one the node's own routing delivers the pod's address to (dp::NetnsProvider::routed),
// never merely one that holds the address — and make it hold the decap link and the VIPs;
// remove them from namespaces that no longer serve. Another namespace holding the same address
// is refused and reported (a Problem for the pod's Services). A namespace that vanishes
// mid-operation only fails its own pod; the others continue. At the end of every pass the
// provider releases every namespace not in use.
//
// VIP readiness (docs/readiness-gate.md): after each pass gates() says, per endpoint pod, whether
// its VIPs and decap state are in place. A pod is ready when every change for its namespace was
// accepted by the kernel. When a pass finds that something the agent had put in place is missing
// (the decap device deleted by hand, a VIP removed), the pod is held not ready: the pass repairs
// it, and only a later pass (the daemon's periodic verify) that finds the namespace complete
// without changing anything releases it. So a namespace that keeps losing its state stays out
// of the routers' tables instead of flapping in and out.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "dataplane/pod_namespaces.h"
#include "desired/agent.h"
#include "desired/config.h"
#include "model/model.h"
#include "reconcile/router_reconciler.h"
#include "reconcile/sinks.h"

namespace kst {

using dp::NetnsProvider;

class AgentReconciler {
 public:
  AgentReconciler(const DataplaneConfig& cfg, std::string nodeName, NetnsProvider& ns);
  Result<PassResult> reconcile(const Model& model);
  /** Removes owned objects from every namespace. */
  Result<PassResult> cleanup();
  /** Pod IP → namespace, as last resolved through the node's routing and verified. */
  const std::map<IpAddress, NetnsProvider::Ns>& podNamespaces() const { return podNs_; }
  /** Pod IP → paths of the other namespaces that hold it too (last scan), refused. */
  const std::map<IpAddress, std::vector<std::string>>& duplicates() const { return dups_; }
  /** The VIP readiness of every endpoint pod of the last reconcile() that the EndpointSlices
   *  name (one entry per pod, sorted by pod; a pod with several addresses is ready only when
   *  all of them are). */
  const std::vector<PodGate>& gates() const { return gates_; }

 private:
  /** Resolves every plan's namespace by routing; verifies a new answer holds the address. */
  void resolve(const std::vector<PodPlan>& plans, PassResult& res, bool& changed);
  /** Reads every candidate: duplicates of the pod addresses and namespaces holding owned
   *  objects (adopted for cleanup). */
  void scan(const std::vector<PodPlan>& plans);
  PassResult apply(const std::vector<PodPlan>& plans, bool cleanAll);
  /** The owned part of a namespace: links that ownedPodLink accepts, IFA_PROTO addresses. */
  Result<dp::PodState> observeOwned(dp::NetlinkClient& c, bool mplsPops);
  DataplaneConfig cfg_;
  std::string node_;
  NetnsProvider& ns_;
  std::map<IpAddress, NetnsProvider::Ns> podNs_;   // pod IP → namespace (routed, verified)
  std::map<std::string, NetnsProvider::Ns> managed_;  // namespaces holding owned objects
  std::map<IpAddress, std::vector<std::string>> dups_;
  bool scannedOnce_ = false;
  // Namespace id → the state last applied there completely (what a later pass must still find).
  std::map<std::string, dp::PodState> inPlace_;
  // Namespaces found missing part of inPlace_: not ready until a pass finds them complete.
  std::set<std::string> held_;
  std::vector<PodGate> gates_;
};

}  // namespace kst
