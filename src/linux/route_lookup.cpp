#include "linux/route_lookup.h"

#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>

#include <cstring>

#include <spdlog/spdlog.h>

#include "linux/host_view.h"

namespace kst {

Result<FibLookup> fibLookup(nl::Socket& sock, const IpAddress& addr) {
  auto route = routeToPod(sock, addr);
  if (!route) return std::unexpected(route.error());
  FibLookup out;
  out.oif = route->oif;
  out.gateway = route->gateway;
  out.type = route->type;
  if (out.oif) {
    // The device's name in the socket's namespace: RTM_GETLINK by index over the same socket.
    nl::Message lreq(MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(ifinfomsg)), 0);
    auto* lh = mnl_nlmsg_put_header(lreq.data());
    lh->nlmsg_type = RTM_GETLINK;
    lh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(lh, sizeof(ifinfomsg)));
    ifi->ifi_family = AF_UNSPEC;
    ifi->ifi_index = static_cast<int>(out.oif);
    lreq.resize(lh->nlmsg_len);
    auto ls = sock.dump(std::move(lreq), [&](const nlmsghdr* m) {
      if (m->nlmsg_type != RTM_NEWLINK) return;
      mnl_attr_parse(m, sizeof(ifinfomsg), [](const nlattr* a, void* data) {
        if (mnl_attr_get_type(a) == IFLA_IFNAME)
          static_cast<FibLookup*>(data)->dev = mnl_attr_get_str(a);
        return MNL_CB_OK;
      }, &out);
    });
    if (!ls) return std::unexpected(ls.error().wrap("link " + std::to_string(out.oif)));
  }
  return out;
}

std::optional<std::string> directDevice(nl::Socket& sock, const IpAddress& addr) {
  auto r = fibLookup(sock, addr);
  if (!r) {
    spdlog::debug("mpls: {}", r.error().message);
    return std::nullopt;
  }
  if (r->type != RTN_UNICAST || r->gateway || r->dev.empty()) {
    spdlog::debug("mpls: {} is not directly connected (type {}, gateway {}, dev {:?})",
                  addr.str(), r->type, r->gateway, r->dev);
    return std::nullopt;
  }
  return r->dev;
}

}  // namespace kst
