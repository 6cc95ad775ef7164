// Agent role reconciler: for every endpoint on this node, find the pod's network namespace —
// the one the node's own routing delivers the pod's address to (dp::NetnsProvider::routed),
// never merely one that holds the address — and make it hold the decap link and the VIPs;
// remove them from namespaces that no longer serve. Another namespace holding the same address
// is refused and reported (a Problem for the pod's Services). A namespace that vanishes
// mid-operation only fails its own pod; the others continue. At the end of every pass the
// provider releases every namespace not in use.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "dataplane/pod_namespaces.h"
#include "desired/agent.h"
#include "desired/config.h"
#include "model/model.h"
#include "reconcile/router_reconciler.h"

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
};

}  // namespace kst
