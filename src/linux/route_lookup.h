// MPLS mode needs every endpoint as an on-link neighbour of the router: `encap mpls L via POD`
// hands the labelled packet straight to POD's link-layer address, there is no second lookup.
// This asks the kernel FIB (RTM_GETROUTE, as `ip route get POD`) how the router reaches an
// address and accepts only a unicast route without a gateway: POD is then directly connected
// through the returned device.
#pragma once

#include <optional>
#include <string>

#include "common/error.h"
#include "common/ip.h"
#include "linux/netlink_socket.h"

namespace kst {

struct FibLookup {
  uint32_t oif = 0;
  std::string dev;     // name of oif
  bool gateway = false;  // RTA_GATEWAY, RTA_VIA or RTA_MULTIPATH present
  uint8_t type = 0;      // RTN_UNICAST, RTN_LOCAL, ...
};

/** `ip route get ADDR` over sock (the calling namespace's main FIB, no fwmark). */
Result<FibLookup> fibLookup(nl::Socket& sock, const IpAddress& addr);

/** The device through which addr is directly connected (unicast route without a gateway), or
 *  nullopt when it is not (or the lookup failed: then MPLS cannot reach it either). */
std::optional<std::string> directDevice(nl::Socket& sock, const IpAddress& addr);

}  // namespace kst
