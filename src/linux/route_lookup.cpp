#include "linux/route_lookup.h"

#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>

#include <cstring>

#include <spdlog/spdlog.h>

namespace kst {

Result<FibLookup> fibLookup(nl::Socket& sock, const IpAddress& addr) {
  // One RTM_GETROUTE request (not a dump); NLM_F_ACK makes the reply end with an ack, which
  // Socket::dump() treats as the end of the answer.
  nl::Message req(MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(rtmsg)) + 64, 0);
  auto* h = mnl_nlmsg_put_header(req.data());
  h->nlmsg_type = RTM_GETROUTE;
  h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  auto* rt = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(h, sizeof(rtmsg)));
  rt->rtm_family = static_cast<unsigned char>(addr.af());
  rt->rtm_dst_len = addr.hostPrefixLen();
  mnl_attr_put(h, RTA_DST, addr.size(), addr.data());
  req.resize(h->nlmsg_len);

  FibLookup out;
  bool got = false;
  auto st = sock.dump(std::move(req), [&](const nlmsghdr* m) {
    if (m->nlmsg_type != RTM_NEWROUTE) return;
    auto* r = static_cast<const rtmsg*>(mnl_nlmsg_get_payload(m));
    got = true;
    out.type = r->rtm_type;
    mnl_attr_parse(m, sizeof(rtmsg), [](const nlattr* a, void* data) {
      auto* o = static_cast<FibLookup*>(data);
      switch (mnl_attr_get_type(a)) {
        case RTA_OIF:
          if (mnl_attr_get_payload_len(a) >= 4) o->oif = mnl_attr_get_u32(a);
          break;
        case RTA_GATEWAY:
        case RTA_VIA:
        case RTA_MULTIPATH: o->gateway = true; break;
      }
      return MNL_CB_OK;
    }, &out);
  });
  if (!st) return std::unexpected(st.error().wrap("route get " + addr.str()));
  if (!got) return fail("route get " + addr.str() + ": no answer");
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
