// The node's own namespace as pod identification reads it (dataplane/pod_identity.h): links
// with their peer namespace ids, the route to a pod, neighbours, bridge forwarding entries, and
// the nsid the node's namespace gives a namespace handle (RTM_GETNSID with NETNSA_FD).
#pragma once

#include <vector>

#include "common/error.h"
#include "common/ip.h"
#include "dataplane/pod_identity.h"
#include "linux/netlink_socket.h"

namespace kst {

/** Every link of the socket's namespace (kind, master, IFLA_LINK_NETNSID, MAC). */
Result<std::map<uint32_t, dp::HostLink>> hostLinks(nl::Socket& sock);

/** `ip route get ADDR` (the main FIB, no fwmark): type, output device, gateway or not. */
Result<dp::RouteToPod> routeToPod(nl::Socket& sock, const IpAddress& addr);

/** IPv4 and IPv6 neighbour entries on device ifindex. */
Result<std::vector<dp::Neighbour>> neighbours(nl::Socket& sock, uint32_t ifindex);

/** The forwarding entries of bridge `bridge` (AF_BRIDGE neighbour dump). */
Result<std::vector<dp::FdbEntry>> bridgeFdb(nl::Socket& sock, uint32_t bridge);

/** Asks the kernel to resolve addr on ifindex (RTM_NEWNEIGH with NTF_USE, as `ip neigh add
 *  ADDR dev DEV use`): an unknown or stale entry is probed, and the pod's answer also refreshes
 *  the bridge's forwarding entry. The entry is the kernel's (states and ageing its own). */
Status provokeNeighbour(nl::Socket& sock, const IpAddress& addr, uint32_t ifindex);

/** The id the socket's namespace gives the namespace of nsFd (RTM_GETNSID, NETNSA_FD), or -1
 *  when it has none. */
Result<int32_t> nsidOf(nl::Socket& sock, int nsFd);

}  // namespace kst
