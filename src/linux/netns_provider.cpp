#include "linux/netns_provider.h"

#include <dirent.h>

#include <charconv>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "linux/host_view.h"

namespace kst {

namespace {

std::string idOf(dev_t dev, ino_t ino) { return fmt::format("{}:{}", dev, ino); }

}  // namespace

NetnsProviderImpl::NetnsProviderImpl(const DataplaneConfig& cfg, std::vector<std::string> dirs,
                                     bool scanProc)
    : cfg_(cfg), dirs_(std::move(dirs)), scanProc_(scanProc) {
  // The constructing thread's namespace is the daemon's (threads never move, netns.h).
  self_ = netnsIdentity("/proc/thread-self/ns/net");
  host_ = netnsIdentity("/proc/1/ns/net");
}

bool NetnsProviderImpl::refused(dev_t dev, ino_t ino) const {
  auto id = std::make_pair(dev, ino);
  return (self_ && *self_ == id) || (host_ && *host_ == id);
}

std::vector<NetnsProviderImpl::Ns> NetnsProviderImpl::list() {
  std::vector<Ns> out;
  for (auto& r : listNetns(dirs_, scanProc_)) {
    if (refused(r.dev, r.ino)) continue;
    auto id = idOf(r.dev, r.ino);
    if (auto it = held_.find(id); it != held_.end()) {
      out.push_back({id, it->second.path});
      continue;
    }
    // The identity that counts is the opened handle's: the path may have changed since the
    // scan (a process exited and its PID was reused).
    auto h = NetnsHandle::open(r.path);
    if (!h) continue;  // vanished or not accessible: not a candidate
    if (refused(h->dev(), h->ino())) continue;
    id = idOf(h->dev(), h->ino());
    if (held_.contains(id)) {
      out.push_back({id, held_[id].path});
      continue;
    }
    Held held;
    held.handle = std::move(*h);
    held.path = r.path;
    held_.emplace(id, std::move(held));
    out.push_back({id, r.path});
  }
  return out;
}

Result<nl::Socket*> NetnsProviderImpl::hostSocket() {
  if (!hostSock_) {
    auto s = nl::Socket::open();
    if (!s) return std::unexpected(s.error().wrap("rtnetlink socket in the node's namespace"));
    hostSock_ = std::move(*s);
  }
  return hostSock_.get();
}

std::optional<NetnsProviderImpl::Ns> NetnsProviderImpl::byNsid(int32_t nsid) {
  auto sock = hostSocket();
  if (!sock) return std::nullopt;
  auto search = [&]() -> std::optional<Ns> {
    for (auto& [id, h] : held_) {
      if (!h.nsid) {
        auto n = nsidOf(**sock, h.handle.fd());
        if (n && *n >= 0) h.nsid = *n;  // -1 (none yet) is asked again next time
      }
      if (h.nsid && *h.nsid == nsid) return Ns{id, h.path};
    }
    return std::nullopt;
  };
  if (auto ns = search()) return ns;
  list();  // a namespace not held yet: a new pod
  return search();
}

std::map<IpAddress, Result<dp::NetnsProvider::Ns>> NetnsProviderImpl::routed(
    const std::vector<IpAddress>& ips) {
  std::map<IpAddress, Result<Ns>> out;
  auto everyone = [&](const Error& e) {
    for (auto& ip : ips) out.emplace(ip, std::unexpected(e));
    return out;
  };
  auto sock = hostSocket();
  if (!sock) return everyone(sock.error());
  dp::HostFacts facts;
  auto links = hostLinks(**sock);
  if (!links) return everyone(links.error());
  facts.links = std::move(*links);
  std::map<IpAddress, dp::RouteToPod> routes;
  std::vector<dp::RouteToPod> all;
  for (auto& ip : ips) {
    auto r = routeToPod(**sock, ip);
    if (!r) {
      out.emplace(ip, std::unexpected(r.error()));
      continue;
    }
    routes.emplace(ip, *r);
    all.push_back(*r);
  }
  if (dp::needsBridgeFacts(all, facts)) {
    std::set<uint32_t> bridges;
    for (auto& r : all)
      if (auto it = facts.links.find(r.oif); it != facts.links.end() && it->second.kind == "bridge")
        bridges.insert(r.oif);
    for (uint32_t b : bridges) {
      if (auto n = neighbours(**sock, b)) facts.neighbours.insert(facts.neighbours.end(), n->begin(), n->end());
      if (auto f = bridgeFdb(**sock, b)) facts.fdb.insert(facts.fdb.end(), f->begin(), f->end());
    }
  }
  for (auto& [ip, route] : routes) {
    auto peer = dp::podPeer(ip, route, facts);
    if (!peer) {
      if (peer.error().code == dp::kNeedsNeighbour) {
        // Provoke resolution: the pod's answer creates the neighbour and forwarding entries
        // that the next pass reads.
        auto st = provokeNeighbour(**sock, ip, route.oif);
        out.emplace(ip, fail(dp::kNeedsNeighbour,
                             peer.error().message + (st ? " (resolution started)"
                                                        : " (" + st.error().message + ")")));
      } else {
        out.emplace(ip, std::unexpected(peer.error()));
      }
      continue;
    }
    if (auto ns = byNsid(peer->nsid)) {
      out.emplace(ip, *ns);
    } else {
      out.emplace(ip, fail(fmt::format("{}: the node delivers it to {}{}, whose peer namespace "
                                       "(nsid {}) is not among the candidates",
                                       ip.str(), peer->hostDevice,
                                       peer->via.empty() ? "" : " on " + peer->via, peer->nsid)));
    }
  }
  return out;
}

NetnsProviderImpl::Held* NetnsProviderImpl::find(const Ns& ns) {
  auto it = held_.find(ns.id);
  return it == held_.end() ? nullptr : &it->second;
}

Result<dp::NetlinkClient*> NetnsProviderImpl::client(const Ns& ns) {
  Held* h = find(ns);
  if (!h) return fail(ENOENT, "namespace " + ns.path + " is not held (released or never found)");
  if (h->client) return h->client.get();
  std::unique_ptr<nl::Socket> sock;
  auto st = runInNetns(h->handle.fd(), [&]() -> Status {
    auto s = nl::Socket::open();
    if (!s) return std::unexpected(s.error());
    sock = std::move(*s);
    return {};
  });
  if (!st) return std::unexpected(st.error().wrap(ns.path));
  h->client = std::make_unique<NetlinkClientImpl>(std::move(sock), cfg_);
  return h->client.get();
}

void NetnsProviderImpl::forget(const Ns& ns) {
  held_.erase(ns.id);
  nft_.forget(ns.id);
  decap_.forget(ns.id);
}

void NetnsProviderImpl::retainOnly(const std::set<std::string>& keep) {
  for (auto it = held_.begin(); it != held_.end();) {
    if (keep.contains(it->first)) {
      ++it;
      continue;
    }
    nft_.forget(it->first);  // an id (dev:ino) may name another namespace once released
    decap_.forget(it->first);
    it = held_.erase(it);
  }
}

size_t NetnsProviderImpl::socketCount() const {
  size_t n = hostSock_ ? 1 : 0;
  for (auto& [id, h] : held_)
    if (h.client) ++n;
  return n;
}

Status NetnsProviderImpl::podTable(const Ns& ns, const dp::PodTable* want) {
  Held* h = find(ns);
  if (!h) return fail(ENOENT, "namespace " + ns.path + " is not held (released or never found)");
  return nft_.apply(ns.id, h->handle.fd(), want);
}

Result<size_t> NetnsProviderImpl::podDecap(const Ns& ns, const dp::PodDecap* want) {
  Held* h = find(ns);
  if (!h) return fail(ENOENT, "namespace " + ns.path + " is not held (released or never found)");
  return decap_.apply(ns.id, h->handle.fd(), want);
}

Status NetnsProviderImpl::prepare(const Ns& ns, const dp::PodSysctls& sysctls) {
  Held* h = find(ns);
  if (!h) return fail(ENOENT, "namespace " + ns.path + " is not held (released or never found)");
  if (h->prepared) return {};
  auto st = runInNetns(h->handle.fd(), [&]() -> Status {
    // Decapsulated packets arrive on the tunnel link while the route back to the client is via
    // the pod's uplink: strict reverse-path filtering would drop them. Effective value is
    // max(all, dev), so both must be 0.
    for (std::string key : {std::string("net/ipv4/conf/all/rp_filter"),
                            "net/ipv4/conf/" + sysctls.decapDevice + "/rp_filter"}) {
      auto cur = readSysctl(key);
      if (cur && *cur != "0") {
        if (auto w = writeSysctl(key, "0"); !w) return w;
        spdlog::info("netns {}: {} {} -> 0", ns.path, key, *cur);
      }
    }
    if (sysctls.mpls) {
      auto cur = readSysctl("net/mpls/platform_labels");
      if (!cur) return fail(ENOENT, "MPLS is not available in this kernel (mpls_router)");
      unsigned long labels = 0;
      auto [p, ec] = std::from_chars(cur->data(), cur->data() + cur->size(), labels);
      if (ec != std::errc() || labels <= sysctls.mplsLabel)
        if (auto w = writeSysctl("net/mpls/platform_labels",
                                 std::to_string(sysctls.mplsLabel + 1));
            !w)
          return w;
      if (DIR* d = opendir("/proc/sys/net/mpls/conf")) {
        while (auto* e = readdir(d)) {
          std::string n = e->d_name;
          if (n == "." || n == ".." || n == "lo" || n == "all" || n == "default") continue;
          (void)writeSysctl("net/mpls/conf/" + n + "/input", "1");
        }
        closedir(d);
      }
    }
    return {};
  });
  if (st) h->prepared = true;
  return st;
}

}  // namespace kst
