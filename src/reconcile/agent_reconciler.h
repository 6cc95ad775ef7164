// Agent role reconciler: for every endpoint on this node, find the pod's network namespace
// (by scanning namespaces for the one that owns the pod IP) and make it hold the decap link
// and the VIPs; remove them from namespaces that no longer serve. A namespace that vanishes
// mid-operation only fails its own pod; the others continue.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "dataplane/kernel.h"
#include "desired/agent.h"
#include "desired/config.h"
#include "model/model.h"
#include "reconcile/router_reconciler.h"

namespace kst {

/** How the agent reaches namespaces; the real one scans /run/netns and /proc. */
class NetnsProvider {
 public:
  struct Ns {
    std::string id;    // stable identity (inode)
    std::string path;  // for logs
  };
  virtual ~NetnsProvider() = default;
  /** All candidate namespaces except the daemon's own. */
  virtual std::vector<Ns> list() = 0;
  /** A client bound to namespace ns (cached by the provider). */
  virtual Result<dp::NetlinkClient*> client(const Ns& ns) = 0;
  /** Applies pod-side sysctls (rp_filter off, MPLS input) inside ns. */
  virtual Status prepare(const Ns& ns, const DataplaneConfig& cfg, const std::string& linkName) = 0;
  virtual void forget(const Ns& ns) = 0;
  /**
   * The pod's nft table (desired/agent.h PodTable). UDP replies from the VIP: a UDP server
   * bound to 0.0.0.0 answers from the pod's own address, which the client drops (design.md
   * §5); the table remembers the peers whose datagrams arrived through the decap link and
   * source-NATs replies to them to the VIP they wrote to. TCP: SYNs from the pod's VIPs get
   * their MSS lowered so the client's segments fit the tunnel (--underlay-mtu). Idempotent:
   * an identical table is not written; want == nullptr removes it.
   */
  virtual Status podTable(const Ns& /*ns*/, const PodTable* /*want*/) { return {}; }
};

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
