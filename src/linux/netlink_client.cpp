#include "linux/netlink_client.h"

#include <libmnl/libmnl.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>
#include <arpa/inet.h>

#include <cstring>

#include <algorithm>
#include <map>

#include <fmt/format.h>

namespace kst {

NetlinkClientImpl::NetlinkClientImpl(std::unique_ptr<nl::Socket> sock, const DataplaneConfig& cfg)
    : sock_(std::move(sock)), cfg_(cfg), tags_{cfg.routeProtocol} {}

Result<std::vector<dp::Link>> NetlinkClientImpl::links() {
  std::vector<dp::Link> out;
  auto st = sock_->dump(nl::dumpLinksRequest(), [&](const nlmsghdr* h) {
    if (auto l = nl::parseLink(h)) out.push_back(std::move(*l));
  });
  if (!st) return std::unexpected(st.error());
  ifindex_.clear();
  for (auto& l : out) ifindex_[l.name] = l.ifindex;
  ifindexValid_ = true;
  return out;
}

Result<std::map<uint32_t, std::string>> NetlinkClientImpl::ifnames() {
  auto ls = links();
  if (!ls) return std::unexpected(ls.error());
  std::map<uint32_t, std::string> m;
  for (auto& l : *ls) m[l.ifindex] = l.name;
  return m;
}

Result<std::vector<dp::Address>> NetlinkClientImpl::addresses(bool ownedOnly) {
  auto names = ifnames();
  if (!names) return std::unexpected(names.error());
  std::vector<dp::Address> out;
  auto st = sock_->dump(nl::dumpAddressesRequest(), [&](const nlmsghdr* h) {
    if (auto a = nl::parseAddress(h)) {
      if (ownedOnly && a->protocol != tags_.protocol) return;
      a->addr.dev = (*names)[a->ifindex];
      out.push_back(a->addr);
    }
  });
  if (!st) return std::unexpected(st.error());
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::vector<dp::Nexthop>> NetlinkClientImpl::nexthops() {
  auto names = ifnames();
  if (!names) return std::unexpected(names.error());
  std::vector<dp::Nexthop> out;
  auto st = sock_->dump(nl::dumpNexthopsRequest(), [&](const nlmsghdr* h) {
    auto p = nl::parseNexthop(h);
    if (!p || p->protocol != tags_.protocol) return;
    if (p->nh.id < cfg_.nexthopIdBase || p->nh.id >= cfg_.nexthopIdEnd()) return;
    p->nh.dev = (*names)[p->oif];
    out.push_back(p->nh);
  });
  if (!st) return std::unexpected(st.error());
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.id < b.id; });
  return out;
}

Result<std::vector<dp::Route>> NetlinkClientImpl::routes(uint32_t tableLo, uint32_t tableHi) {
  std::map<uint32_t, std::string> names;
  std::vector<dp::Route> out;
  for (int af : {AF_INET, AF_INET6}) {
    std::vector<std::pair<dp::Route, uint32_t>> got;
    auto st = sock_->dump(nl::dumpRoutesRequest(af), [&](const nlmsghdr* h) {
      auto p = nl::parseRoute(h);
      if (!p || p->protocol != tags_.protocol) return;
      if (p->route.key.table < tableLo || p->route.key.table >= tableHi) return;
      got.emplace_back(p->route, p->oif);
    });
    if (!st) return std::unexpected(st.error());
    for (auto& [r, oif] : got) {
      if (!r.nhid && oif) {
        if (names.empty()) {
          auto n = ifnames();
          if (!n) return std::unexpected(n.error());
          names = std::move(*n);
        }
        r.dev = names[oif];
      }
      out.push_back(r);
    }
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.key < b.key; });
  return out;
}

Result<std::vector<dp::Rule>> NetlinkClientImpl::rules(uint32_t prioLo, uint32_t prioHi) {
  std::vector<dp::Rule> out;
  for (int af : {AF_INET, AF_INET6}) {
    auto st = sock_->dump(nl::dumpRulesRequest(af), [&](const nlmsghdr* h) {
      auto p = nl::parseRule(h);
      if (!p || p->protocol != tags_.protocol) return;
      if (p->rule.priority < prioLo || p->rule.priority >= prioHi) return;
      out.push_back(p->rule);
    });
    if (!st) return std::unexpected(st.error());
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::vector<dp::MplsPop>> NetlinkClientImpl::mplsPops() {
  // Parsed minimally: label routes tagged with our protocol whose output is a device.
  std::vector<dp::MplsPop> out;
  auto names = ifnames();
  if (!names) return std::unexpected(names.error());
  auto st = sock_->dump(nl::dumpRoutesRequest(AF_MPLS), [&](const nlmsghdr* h) {
    if (h->nlmsg_type != RTM_NEWROUTE) return;
    auto* rt = static_cast<const rtmsg*>(mnl_nlmsg_get_payload(h));
    if (rt->rtm_family != AF_MPLS || rt->rtm_protocol != tags_.protocol) return;
    dp::MplsPop pop;
    for (auto* a = static_cast<const nlattr*>(mnl_nlmsg_get_payload_offset(h, sizeof(rtmsg)));
         mnl_attr_ok(a, static_cast<int>(static_cast<const char*>(mnl_nlmsg_get_payload_tail(h)) -
                                         reinterpret_cast<const char*>(a)));
         a = mnl_attr_next(a)) {
      if (mnl_attr_get_type(a) == RTA_DST && mnl_attr_get_payload_len(a) >= 4) {
        uint32_t lse;
        memcpy(&lse, mnl_attr_get_payload(a), 4);
        pop.label = ntohl(lse) >> 12;
      }
      if (mnl_attr_get_type(a) == RTA_OIF) pop.dev = (*names)[mnl_attr_get_u32(a)];
    }
    out.push_back(pop);
  });
  if (!st) {
    // Kernels without MPLS answer EAFNOSUPPORT/EINVAL: nothing of ours can exist there.
    return out;
  }
  return out;
}

Result<std::vector<std::string>> NetlinkClientImpl::apply(const std::vector<dp::Change>& changes) {
  using A = dp::Change::Action;
  auto op = [](A a) {
    return a == A::Add ? nl::Op::Add : a == A::Replace ? nl::Op::Replace : nl::Op::Delete;
  };
  std::vector<std::string> failures;
  auto run = [&](std::vector<nl::Message>& msgs, const std::vector<const dp::Change*>& src) -> Status {
    if (msgs.empty()) return {};
    auto r = sock_->transact(msgs);
    if (!r) return std::unexpected(r.error());
    for (auto& e : *r) failures.push_back(fmt::format("{}: {}", dp::describe(*src[e.index]), e.message));
    return {};
  };
  // Stage 1: link creations, so that later requests can resolve their ifindex.
  std::vector<nl::Message> msgs;
  std::vector<const dp::Change*> src;
  for (auto& c : changes) {
    if (auto* l = std::get_if<dp::Link>(&c.object); l && c.action != A::Delete) {
      if (c.action == A::Replace) {  // a link's kind cannot change in place: recreate it
        msgs.push_back(nl::encodeLink(*l, nl::Op::Delete));
        src.push_back(&c);
      }
      msgs.push_back(nl::encodeLink(*l, nl::Op::Add));
      src.push_back(&c);
    }
  }
  if (!msgs.empty()) ifindexValid_ = false;  // links created or recreated
  if (auto s = run(msgs, src); !s) return std::unexpected(s.error());
  msgs.clear();
  src.clear();
  auto refresh = [&]() -> Status {
    auto ls = links();
    if (!ls) return std::unexpected(ls.error());
    return {};
  };
  if (!ifindexValid_)
    if (auto s = refresh(); !s) return std::unexpected(s.error());
  auto ifindexOf = [&](const std::string& name, const dp::Change& c) -> std::optional<uint32_t> {
    auto it = ifindex_.find(name);
    if (it == ifindex_.end() && refresh()) it = ifindex_.find(name);
    if (it == ifindex_.end()) {
      failures.push_back(fmt::format("{}: device {:?} does not exist", dp::describe(c), name));
      return std::nullopt;
    }
    return it->second;
  };
  // Stage 2: everything else except link deletions, in the given order.
  for (auto& c : changes) {
    std::optional<nl::Message> m;
    if (auto* nh = std::get_if<dp::Nexthop>(&c.object)) {
      if (c.action == A::Delete) m = nl::encodeNexthop(*nh, 0, nl::Op::Delete, tags_);
      else if (auto i = ifindexOf(nh->dev, c)) m = nl::encodeNexthop(*nh, *i, op(c.action), tags_);
    } else if (auto* r = std::get_if<dp::Route>(&c.object)) {
      uint32_t oif = 0;
      if (!r->nhid && !r->unreachable && c.action != A::Delete) {
        auto i = ifindexOf(r->dev, c);
        if (!i) continue;
        oif = *i;
      }
      m = nl::encodeRoute(*r, oif, op(c.action), tags_);
    } else if (auto* ru = std::get_if<dp::Rule>(&c.object)) {
      m = nl::encodeRule(*ru, op(c.action), tags_);
    } else if (auto* a = std::get_if<dp::Address>(&c.object)) {
      if (auto i = ifindexOf(a->dev, c)) m = nl::encodeAddress(*a, *i, op(c.action), tags_);
    } else if (auto* p = std::get_if<dp::MplsPop>(&c.object)) {
      if (auto i = ifindexOf(p->dev, c)) m = nl::encodeMplsPop(p->label, *i, op(c.action), tags_);
    } else if (auto* lm = std::get_if<dp::LinkMtu>(&c.object)) {
      m = nl::encodeLinkMtu(lm->name, lm->mtu);
    }
    if (m) {
      msgs.push_back(std::move(*m));
      src.push_back(&c);
    }
  }
  if (auto s = run(msgs, src); !s) return std::unexpected(s.error());
  msgs.clear();
  src.clear();
  // Stage 3: link deletions.
  for (auto& c : changes) {
    if (auto* l = std::get_if<dp::Link>(&c.object); l && c.action == A::Delete) {
      msgs.push_back(nl::encodeLink(*l, nl::Op::Delete));
      src.push_back(&c);
    }
  }
  if (!msgs.empty()) ifindexValid_ = false;
  if (auto s = run(msgs, src); !s) return std::unexpected(s.error());
  if (!failures.empty()) ifindexValid_ = false;  // e.g. ENODEV: a link went away under us
  return failures;
}

}  // namespace kst
