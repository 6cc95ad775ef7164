// Agent role reconciler: for every endpoint on this node, find the pod's network namespace
// (by scanning namespaces for the one that owns the pod IP) and make it hold the decap link
// and the VIPs; remove them from namespaces that no longer serve. A namespace that vanishes
// mid-operation only fails its own pod; the others continue.
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
  /** Pod IP → namespace id, as last resolved. */
  const std::map<IpAddress, NetnsProvider::Ns>& podNamespaces() const { return podNs_; }

 private:
  Status refreshIndex();
  PassResult apply(const std::vector<PodPlan>& plans, bool cleanAll);
  DataplaneConfig cfg_;
  std::string node_;
  NetnsProvider& ns_;
  std::map<IpAddress, NetnsProvider::Ns> podNs_;   // pod IP → namespace
  std::map<std::string, NetnsProvider::Ns> managed_;  // namespaces holding owned objects
  bool scannedOnce_ = false;
};

}  // namespace kst
