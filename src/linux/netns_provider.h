#pragma once

#include <map>
#include <memory>

#include "linux/netlink_client.h"
#include "reconcile/agent_reconciler.h"

namespace kst {

/** Namespaces from /run/netns (and other bind-mount dirs) and, with hostPID, /proc/<pid>. */
class NetnsProviderImpl : public NetnsProvider {
 public:
  NetnsProviderImpl(const DataplaneConfig& cfg, std::vector<std::string> dirs, bool scanProc);
  std::vector<Ns> list() override;
  Result<dp::NetlinkClient*> client(const Ns& ns) override;
  Status prepare(const Ns& ns, const DataplaneConfig& cfg, const std::string& linkName) override;
  void forget(const Ns& ns) override;
  Status podTable(const Ns& ns, const PodTable* want) override;  // pod_nft.cpp

 private:
  DataplaneConfig cfg_;
  std::vector<std::string> dirs_;
  bool scanProc_;
  std::map<std::string, std::unique_ptr<NetlinkClientImpl>> clients_;
  std::map<std::string, bool> prepared_;
  std::map<std::string, PodTable> podTables_;  // ns id → pod table installed (or found) there
};

}  // namespace kst
