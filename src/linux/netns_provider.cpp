#include "linux/netns_provider.h"

#include <dirent.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "linux/netns.h"

namespace kst {

NetnsProviderImpl::NetnsProviderImpl(const DataplaneConfig& cfg, std::vector<std::string> dirs,
                                     bool scanProc)
    : cfg_(cfg), dirs_(std::move(dirs)), scanProc_(scanProc) {}

std::vector<NetnsProviderImpl::Ns> NetnsProviderImpl::list() {
  std::vector<Ns> out;
  ino_t self = currentNetnsInode();
  for (auto& r : listNetns(dirs_, scanProc_)) {
    if (r.ino == self) continue;
    out.push_back({fmt::format("{}:{}", r.dev, r.ino), r.path});
  }
  return out;
}

Result<dp::NetlinkClient*> NetnsProviderImpl::client(const Ns& ns) {
  auto it = clients_.find(ns.id);
  if (it != clients_.end()) return it->second.get();
  std::unique_ptr<nl::Socket> sock;
  auto st = runInNetns(ns.path, [&]() -> Status {
    auto s = nl::Socket::open();
    if (!s) return std::unexpected(s.error());
    sock = std::move(*s);
    return {};
  });
  if (!st) return std::unexpected(st.error());
  auto c = std::make_unique<NetlinkClientImpl>(std::move(sock), cfg_);
  auto* raw = c.get();
  clients_.emplace(ns.id, std::move(c));
  return raw;
}

void NetnsProviderImpl::forget(const Ns& ns) {
  clients_.erase(ns.id);
  prepared_.erase(ns.id);
  nft_.forget(ns.id);
}

Status NetnsProviderImpl::prepare(const Ns& ns, const dp::PodSysctls& sysctls) {
  if (prepared_[ns.id]) return {};
  auto st = runInNetns(ns.path, [&]() -> Status {
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
      if (std::stoul(*cur) <= sysctls.mplsLabel)
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
  if (st) prepared_[ns.id] = true;
  return st;
}

}  // namespace kst
