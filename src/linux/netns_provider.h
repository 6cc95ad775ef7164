// The agent's kernel boundary on Linux (dp::NetnsProvider): candidate namespaces from bind-mount
// directories and /proc, each held by an open handle once found; which one is a pod's from the
// node's own routing (linux/host_view.h, dataplane/pod_identity.h); one rtnetlink client per
// held namespace, sysctls, the pod nft table. Everything of a namespace (handle, socket,
// caches) is released with it.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dataplane/pod_namespaces.h"
#include "desired/config.h"
#include "linux/netlink_client.h"
#include "linux/netns.h"
#include "linux/pod_decap.h"
#include "linux/pod_nft.h"

namespace kst {

/** Namespaces from /run/netns (and other bind-mount dirs) and, with hostPID, /proc/<pid>. */
class NetnsProviderImpl : public dp::NetnsProvider {
 public:
  NetnsProviderImpl(const DataplaneConfig& cfg, std::vector<std::string> dirs, bool scanProc);
  std::vector<Ns> list() override;
  std::map<IpAddress, Result<Ns>> routed(const std::vector<IpAddress>& ips) override;
  Result<dp::NetlinkClient*> client(const Ns& ns) override;
  Status prepare(const Ns& ns, const dp::PodSysctls& sysctls) override;
  void forget(const Ns& ns) override;
  void retainOnly(const std::set<std::string>& keep) override;
  Status podTable(const Ns& ns, const dp::PodTable* want) override;
  Result<size_t> podDecap(const Ns& ns, const dp::PodDecap* want) override;

  /** Namespaces held now, and the rtnetlink sockets open into them (for tests and logs). */
  size_t heldCount() const { return held_.size(); }
  size_t socketCount() const;

 private:
  struct Held {
    NetnsHandle handle;
    std::string path;
    std::unique_ptr<NetlinkClientImpl> client;
    bool prepared = false;
    std::optional<int32_t> nsid;  // as the node's namespace names it (stable while held)
  };
  /** The node's own namespace and the host's (pid 1's): never candidates. */
  bool refused(dev_t dev, ino_t ino) const;
  Result<nl::Socket*> hostSocket();
  /** The held namespace the node's namespace calls nsid, listing candidates when needed. */
  std::optional<Ns> byNsid(int32_t nsid);
  Held* find(const Ns& ns);

  DataplaneConfig cfg_;
  std::vector<std::string> dirs_;
  bool scanProc_;
  std::optional<std::pair<dev_t, ino_t>> self_, host_;
  std::unique_ptr<nl::Socket> hostSock_;  // in the daemon's own namespace
  std::map<std::string, Held> held_;      // id → handle and what hangs on it
  PodNftTables nft_;
  PodDecapPrograms decap_;
};

}  // namespace kst
