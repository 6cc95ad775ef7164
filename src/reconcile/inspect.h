// The kernel reading behind `kube-service-tunnel explain` and `status`: the router's owned
// state through the reconciler's own observation (RouterReconciler::observe), the classifier's
// hash expressions and flow-map lookups through dp::NftInspector, the announce table through
// the AnnounceReconciler, pod namespaces through the agent's NetnsProvider. What is computed
// from it is desired/inspect.h's.
#pragma once

#include <string>

#include "dataplane/inspect.h"
#include "dataplane/pod_namespaces.h"
#include "desired/inspect.h"
#include "reconcile/announce_reconciler.h"
#include "reconcile/router_reconciler.h"

namespace kst {

/** The packet's way on this router: hash rule and flow map read from the kernel. */
Result<Explanation> explainOnNode(RouterReconciler& router, dp::NftInspector& nft,
                                  const FlowQuery& q);

struct StatusSources {
  RouterReconciler* router = nullptr;     // router part, when set
  AnnounceReconciler* announce = nullptr; // with an announce table
  dp::NetnsProvider* pods = nullptr;      // agent part, when set
  std::string decapDevice;                // DataplaneConfig::tunnelLinkName()
  std::string datapath = "nft";           // the router's classifier (--datapath): nft or bpf
};

/** What the node holds; parts that cannot be read are named in NodeStatus::errors. */
NodeStatus nodeStatus(const StatusSources& src);

}  // namespace kst
