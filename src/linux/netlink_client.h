// dp::NetlinkClient over one rtnetlink socket (one network namespace).
#pragma once

#include <memory>

#include "dataplane/kernel.h"
#include "desired/config.h"
#include "linux/netlink_socket.h"

namespace kst {

class NetlinkClientImpl : public dp::NetlinkClient {
 public:
  NetlinkClientImpl(std::unique_ptr<nl::Socket> sock, const DataplaneConfig& cfg);
  Result<std::vector<dp::Link>> links() override;
  Result<std::vector<dp::Address>> addresses(bool ownedOnly) override;
  Result<std::vector<dp::Nexthop>> nexthops() override;
  Result<std::vector<dp::Route>> routes(uint32_t tableLo, uint32_t tableHi) override;
  Result<std::vector<dp::Rule>> rules(uint32_t prioLo, uint32_t prioHi) override;
  Result<std::vector<dp::MplsPop>> mplsPops() override;
  Result<std::vector<std::string>> apply(const std::vector<dp::Change>& changes) override;

 private:
  Result<std::map<uint32_t, std::string>> ifnames();
  /** name → ifindex, from the last links dump; re-read when a link was created or deleted,
   *  a name is unknown, or a change failed (so that a steady-state apply sends no dump). */
  std::map<std::string, uint32_t> ifindex_;
  bool ifindexValid_ = false;
  std::unique_ptr<nl::Socket> sock_;
  DataplaneConfig cfg_;
  nl::Tags tags_;
};

}  // namespace kst
