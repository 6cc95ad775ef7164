#include "linux/host_view.h"

#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/net_namespace.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

#include <cstring>

#include <fmt/format.h>

namespace kst {

namespace {

/** A request of `type` with a zeroed family header T; NLM_F_ACK ends a non-dump answer. */
template <typename T>
std::pair<nl::Message, nlmsghdr*> request(uint16_t type, uint16_t flags, size_t room = 64) {
  nl::Message m(MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(T)) + room, 0);
  auto* h = mnl_nlmsg_put_header(m.data());
  h->nlmsg_type = type;
  h->nlmsg_flags = static_cast<uint16_t>(NLM_F_REQUEST | flags);
  mnl_nlmsg_put_extra_header(h, sizeof(T));
  return {std::move(m), h};
}

/** Calls fn for every attribute after the family header of size `offset` (bounds-checked by
 *  libmnl: a truncated attribute ends the walk). */
template <typename F>
void forEachAttr(const nlmsghdr* m, size_t offset, F&& fn) {
  auto* tail = static_cast<const char*>(mnl_nlmsg_get_payload_tail(m));
  for (auto* a = static_cast<const nlattr*>(mnl_nlmsg_get_payload_offset(m, offset));
       mnl_attr_ok(a, static_cast<int>(tail - reinterpret_cast<const char*>(a)));
       a = mnl_attr_next(a))
    fn(a);
}

/** Calls fn for every attribute nested in a. */
template <typename F>
void forEachNested(const nlattr* a, F&& fn) {
  auto* end = static_cast<const char*>(mnl_attr_get_payload(a)) + mnl_attr_get_payload_len(a);
  for (auto* i = static_cast<const nlattr*>(mnl_attr_get_payload(a));
       mnl_attr_ok(i, static_cast<int>(end - reinterpret_cast<const char*>(i)));
       i = mnl_attr_next(i))
    fn(i);
}

std::optional<dp::MacAddress> macOf(const nlattr* a) {
  if (mnl_attr_get_payload_len(a) != 6) return std::nullopt;
  dp::MacAddress m;
  std::memcpy(m.data(), mnl_attr_get_payload(a), 6);
  return m;
}

}  // namespace

Result<std::map<uint32_t, dp::HostLink>> hostLinks(nl::Socket& sock) {
  auto [req, h] = request<ifinfomsg>(RTM_GETLINK, NLM_F_DUMP);
  req.resize(h->nlmsg_len);
  std::map<uint32_t, dp::HostLink> out;
  auto st = sock.dump(std::move(req), [&](const nlmsghdr* m) {
    if (m->nlmsg_type != RTM_NEWLINK) return;
    auto* ifi = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(m));
    dp::HostLink l;
    l.ifindex = static_cast<uint32_t>(ifi->ifi_index);
    forEachAttr(m, sizeof(ifinfomsg), [&](const nlattr* a) {
      switch (mnl_attr_get_type(a)) {
        case IFLA_IFNAME:
          if (mnl_attr_validate(a, MNL_TYPE_NUL_STRING) >= 0) l.name = mnl_attr_get_str(a);
          break;
        case IFLA_MASTER:
          if (mnl_attr_get_payload_len(a) >= 4) l.master = mnl_attr_get_u32(a);
          break;
        case IFLA_LINK_NETNSID:
          if (mnl_attr_get_payload_len(a) >= 4)
            l.linkNetnsid = static_cast<int32_t>(mnl_attr_get_u32(a));
          break;
        case IFLA_ADDRESS: l.mac = macOf(a); break;
        case IFLA_LINKINFO: {
          forEachNested(a, [&](const nlattr* i) {
            if (mnl_attr_get_type(i) == IFLA_INFO_KIND &&
                mnl_attr_validate(i, MNL_TYPE_NUL_STRING) >= 0)
              l.kind = mnl_attr_get_str(i);
          });
          break;
        }
        default: break;
      }
    });
    out[l.ifindex] = std::move(l);
  });
  if (!st) return std::unexpected(st.error().wrap("node links"));
  return out;
}

Result<dp::RouteToPod> routeToPod(nl::Socket& sock, const IpAddress& addr) {
  // One RTM_GETROUTE request (not a dump); NLM_F_ACK makes the reply end with an ack, which
  // Socket::dump() treats as the end of the answer.
  auto [req, h] = request<rtmsg>(RTM_GETROUTE, NLM_F_ACK);
  auto* rt = static_cast<rtmsg*>(mnl_nlmsg_get_payload(h));
  rt->rtm_family = static_cast<unsigned char>(addr.af());
  rt->rtm_dst_len = addr.hostPrefixLen();
  mnl_attr_put(h, RTA_DST, addr.size(), addr.data());
  req.resize(h->nlmsg_len);
  dp::RouteToPod out;
  bool got = false;
  auto st = sock.dump(std::move(req), [&](const nlmsghdr* m) {
    if (m->nlmsg_type != RTM_NEWROUTE) return;
    got = true;
    out.type = static_cast<const rtmsg*>(mnl_nlmsg_get_payload(m))->rtm_type;
    forEachAttr(m, sizeof(rtmsg), [&](const nlattr* a) {
      switch (mnl_attr_get_type(a)) {
        case RTA_OIF:
          if (mnl_attr_get_payload_len(a) >= 4) out.oif = mnl_attr_get_u32(a);
          break;
        case RTA_GATEWAY:
        case RTA_VIA:
        case RTA_MULTIPATH: out.gateway = true; break;
        case RTA_PREFSRC:
          if (mnl_attr_get_payload_len(a) == addr.size())
            out.prefsrc = IpAddress::fromBytes(addr.family(), mnl_attr_get_payload(a));
          break;
        default: break;
      }
    });
  });
  if (!st) return std::unexpected(st.error().wrap("route get " + addr.str()));
  if (!got) return fail("route get " + addr.str() + ": no answer");
  return out;
}

Result<std::vector<dp::Neighbour>> neighbours(nl::Socket& sock, uint32_t ifindex) {
  std::vector<dp::Neighbour> out;
  for (int af : {AF_INET, AF_INET6}) {
    auto [req, h] = request<ndmsg>(RTM_GETNEIGH, NLM_F_DUMP);
    auto* nd = static_cast<ndmsg*>(mnl_nlmsg_get_payload(h));
    nd->ndm_family = static_cast<uint8_t>(af);
    nd->ndm_ifindex = static_cast<int>(ifindex);  // filtered by the kernel (strict or not)
    req.resize(h->nlmsg_len);
    auto st = sock.dump(std::move(req), [&](const nlmsghdr* m) {
      if (m->nlmsg_type != RTM_NEWNEIGH) return;
      auto* n = static_cast<const ndmsg*>(mnl_nlmsg_get_payload(m));
      if (n->ndm_family != af || static_cast<uint32_t>(n->ndm_ifindex) != ifindex) return;
      dp::Neighbour nb;
      nb.ifindex = ifindex;
      nb.state = n->ndm_state;
      bool hasIp = false;
      forEachAttr(m, sizeof(ndmsg), [&](const nlattr* a) {
        if (mnl_attr_get_type(a) == NDA_DST &&
            mnl_attr_get_payload_len(a) == (af == AF_INET ? 4u : 16u)) {
          nb.ip = IpAddress::fromBytes(af == AF_INET ? Family::V4 : Family::V6,
                                       mnl_attr_get_payload(a));
          hasIp = true;
        } else if (mnl_attr_get_type(a) == NDA_LLADDR) {
          nb.mac = macOf(a);
        }
      });
      if (hasIp) out.push_back(std::move(nb));
    });
    if (!st) return std::unexpected(st.error().wrap("neighbours"));
  }
  return out;
}

Result<std::vector<dp::FdbEntry>> bridgeFdb(nl::Socket& sock, uint32_t bridge) {
  auto [req, h] = request<ndmsg>(RTM_GETNEIGH, NLM_F_DUMP);
  static_cast<ndmsg*>(mnl_nlmsg_get_payload(h))->ndm_family = AF_BRIDGE;
  mnl_attr_put_u32(h, NDA_MASTER, bridge);
  req.resize(h->nlmsg_len);
  std::vector<dp::FdbEntry> out;
  auto st = sock.dump(std::move(req), [&](const nlmsghdr* m) {
    if (m->nlmsg_type != RTM_NEWNEIGH) return;
    auto* n = static_cast<const ndmsg*>(mnl_nlmsg_get_payload(m));
    if (n->ndm_family != AF_BRIDGE) return;
    dp::FdbEntry e;
    e.port = static_cast<uint32_t>(n->ndm_ifindex);
    e.local = (n->ndm_state & NUD_PERMANENT) != 0;
    bool hasMac = false;
    forEachAttr(m, sizeof(ndmsg), [&](const nlattr* a) {
      if (mnl_attr_get_type(a) == NDA_LLADDR) {
        if (auto mac = macOf(a)) {
          e.mac = *mac;
          hasMac = true;
        }
      } else if (mnl_attr_get_type(a) == NDA_MASTER && mnl_attr_get_payload_len(a) >= 4) {
        e.master = mnl_attr_get_u32(a);
      }
    });
    if (hasMac && e.master == bridge) out.push_back(e);
  });
  if (!st) return std::unexpected(st.error().wrap("bridge forwarding entries"));
  return out;
}

Status provokeNeighbour(nl::Socket& sock, const IpAddress& addr, uint32_t ifindex) {
  auto [req, h] = request<ndmsg>(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_ACK);
  auto* nd = static_cast<ndmsg*>(mnl_nlmsg_get_payload(h));
  nd->ndm_family = static_cast<uint8_t>(addr.af());
  nd->ndm_ifindex = static_cast<int>(ifindex);
  nd->ndm_flags = NTF_USE;
  mnl_attr_put(h, NDA_DST, addr.size(), addr.data());
  req.resize(h->nlmsg_len);
  std::vector<nl::Message> msgs{std::move(req)};
  auto r = sock.transact(msgs);
  if (!r) return std::unexpected(r.error());
  if (!r->empty()) return fail((*r)[0].code, "resolve " + addr.str() + ": " + (*r)[0].message);
  return {};
}

Result<int32_t> nsidOf(nl::Socket& sock, int nsFd) {
  auto [req, h] = request<rtgenmsg>(RTM_GETNSID, NLM_F_ACK);
  static_cast<rtgenmsg*>(mnl_nlmsg_get_payload(h))->rtgen_family = AF_UNSPEC;
  mnl_attr_put_u32(h, NETNSA_FD, static_cast<uint32_t>(nsFd));
  req.resize(h->nlmsg_len);
  std::optional<int32_t> id;
  auto st = sock.dump(std::move(req), [&](const nlmsghdr* m) {
    if (m->nlmsg_type != RTM_NEWNSID) return;
    forEachAttr(m, sizeof(rtgenmsg), [&](const nlattr* a) {
      if (mnl_attr_get_type(a) == NETNSA_NSID && mnl_attr_get_payload_len(a) >= 4)
        id = static_cast<int32_t>(mnl_attr_get_u32(a));
    });
  });
  if (!st) return std::unexpected(st.error().wrap("nsid of a namespace handle"));
  if (!id) return fail("nsid of a namespace handle: no answer");
  return *id;
}

}  // namespace kst
