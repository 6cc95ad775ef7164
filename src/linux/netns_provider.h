// The agent's kernel boundary on Linux (dp::NetnsProvider): namespaces from bind-mount
// directories and /proc, one rtnetlink client per namespace, sysctls, the pod nft table.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/pod_namespaces.h"
#include "desired/config.h"
#include "linux/netlink_client.h"
#include "linux/pod_nft.h"

namespace kst {

/** Namespaces from /run/netns (and other bind-mount dirs) and, with hostPID, /proc/<pid>. */
class NetnsProviderImpl : public dp::NetnsProvider {
 public:
  NetnsProviderImpl(const DataplaneConfig& cfg, std::vector<std::string> dirs, bool scanProc);
  std::vector<Ns> list() override;
  Result<dp::NetlinkClient*> client(const Ns& ns) override;
  Status prepare(const Ns& ns, const dp::PodSysctls& sysctls) override;
  void forget(const Ns& ns) override;
  Status podTable(const Ns& ns, const dp::PodTable* want) override { return nft_.apply(ns, want); }

 private:
  DataplaneConfig cfg_;
  std::vector<std::string> dirs_;
  bool scanProc_;
  std::map<std::string, std::unique_ptr<NetlinkClientImpl>> clients_;
  std::map<std::string, bool> prepared_;
  PodNftTables nft_;
};

}  // namespace kst
