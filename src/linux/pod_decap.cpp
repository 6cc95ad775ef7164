#include "linux/pod_decap.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "desired/agent.h"
#include "hashing/maglev.h"
#include "linux/bpf/pod_decap_maps.h"
#include "linux/bpf_classifier.h"
#include "linux/bpf_util.h"
#include "linux/netns.h"
#include "pod_decap.skel.h"

namespace kst {

namespace {

std::unexpected<Error> errnoFail(int err, const std::string& what) {
  return fail(err, fmt::format("pod decap: {}: {}", what, std::strerror(err)));
}

using bpf::Fd;

uint32_t modeCode(Mode m) {
  switch (m) {
    case Mode::VxlanGpe: return KST_PD_VXLAN_GPE;
    case Mode::Ipip: return KST_PD_IPIP;
    case Mode::GreFlow: return KST_PD_GRE;
    case Mode::Gre: return KST_PD_GRE;
    case Mode::Mpls: return 0;
  }
  return 0;
}

/** The program id of our filter on ifindex's ingress (0: none there). */
uint32_t attachedId(int ifindex) {
  DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
  DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = bpf::kTcHandle,
                      .priority = bpf::kPodDecapPriority);
  if (bpf_tc_query(&hook, &opts) != 0) return 0;
  return opts.prog_id;
}

/** The maps of an attached program, by name. */
struct ProgMaps {
  Fd prog, config, addrs, stats;
};

Result<ProgMaps> openProgram(uint32_t progId) {
  ProgMaps m;
  m.prog = Fd(bpf_prog_get_fd_by_id(progId));
  if (m.prog.fd < 0) return errnoFail(errno, fmt::format("program {}", progId));
  uint32_t ids[8] = {};
  bpf_prog_info info{};
  info.nr_map_ids = 8;
  info.map_ids = reinterpret_cast<uint64_t>(ids);
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(m.prog.fd, &info, &len) != 0)
    return errnoFail(errno, fmt::format("program {} info", progId));
  if (std::string(info.name) != bpf::kPodDecapProgName)
    return fail(EINVAL, fmt::format("pod decap: program {} is {}, not ours", progId, info.name));
  for (uint32_t i = 0; i < std::min<uint32_t>(info.nr_map_ids, 8); ++i) {
    Fd fd(bpf_map_get_fd_by_id(ids[i]));
    if (fd.fd < 0) continue;
    bpf_map_info mi{};
    uint32_t ml = sizeof(mi);
    if (bpf_obj_get_info_by_fd(fd.fd, &mi, &ml) != 0) continue;
    std::string name = mi.name;
    if (name == "pd_config" && mi.value_size == sizeof(kst_pd_config)) m.config = std::move(fd);
    else if (name == "pd_addrs" && mi.key_size == 16 && mi.value_size == 4) m.addrs = std::move(fd);
    else if (name == "pd_stats" && mi.value_size == sizeof(kst_pd_stats)) m.stats = std::move(fd);
  }
  if (m.config.fd < 0 || m.addrs.fd < 0 || m.stats.fd < 0)
    return fail(EINVAL, fmt::format("pod decap: program {} lacks its maps", progId));
  return m;
}

/** Interface name → program id, for every interface whose ingress runs a program named
 *  kst_pod_decap at our handle and priority. */
std::map<std::string, uint32_t> ourFilters() {
  std::map<std::string, uint32_t> out;
  if (struct if_nameindex* all = if_nameindex()) {
    for (auto* p = all; p->if_index != 0 && p->if_name; ++p) {
      const uint32_t id = attachedId(int(p->if_index));
      if (!id) continue;
      Fd fd(bpf_prog_get_fd_by_id(id));
      if (fd.fd < 0) continue;
      bpf_prog_info info{};
      uint32_t len = sizeof(info);
      if (bpf_obj_get_info_by_fd(fd.fd, &info, &len) != 0) continue;
      if (std::string(info.name) == bpf::kPodDecapProgName) out[p->if_name] = id;
    }
    if_freenameindex(all);
  }
  return out;
}

/** The interfaces holding one of ips (getifaddrs, the calling thread's namespace). */
std::set<std::string> interfacesHolding(const std::set<IpAddress>& ips) {
  std::set<std::string> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (auto* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || !a->ifa_name || std::string(a->ifa_name) == "lo") continue;
    std::optional<IpAddress> ip;
    if (a->ifa_addr->sa_family == AF_INET)
      ip = IpAddress::fromBytes(Family::V4,
                                &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr);
    else if (a->ifa_addr->sa_family == AF_INET6)
      ip = IpAddress::fromBytes(Family::V6,
                                &reinterpret_cast<sockaddr_in6*>(a->ifa_addr)->sin6_addr);
    if (ip && ips.contains(*ip)) out.insert(a->ifa_name);
  }
  freeifaddrs(list);
  return out;
}

Status attach(int progFd, const std::string& iface) {
  int ifindex = int(if_nametoindex(iface.c_str()));
  if (!ifindex) return errnoFail(errno, "interface " + iface);
  DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
  int r = bpf_tc_hook_create(&hook);
  if (r != 0 && r != -EEXIST) return errnoFail(-r, iface + ": clsact");
  DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = progFd, .flags = BPF_TC_F_REPLACE,
                      .handle = bpf::kTcHandle, .priority = bpf::kPodDecapPriority);
  if (r = bpf_tc_attach(&hook, &opts); r != 0) return errnoFail(-r, iface + ": attach");
  return {};
}

Status detach(const std::string& iface) {
  int ifindex = int(if_nametoindex(iface.c_str()));
  if (!ifindex) return {};  // gone: so is its filter
  DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
  DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = bpf::kTcHandle,
                      .priority = bpf::kPodDecapPriority);
  if (int r = bpf_tc_detach(&hook, &opts); r != 0 && r != -ENOENT)
    return errnoFail(-r, iface + ": detach");
  return {};
}

Status writeAddrs(int fd, const dp::PodDecapChanges& ch) {
  for (const auto& a : ch.erase) {
    auto k = bpf::mapKey(a);
    if (bpf_map_delete_elem(fd, k.data()) != 0 && errno != ENOENT)
      return errnoFail(errno, "remove " + a.str());
  }
  for (const auto& [a, flags] : ch.put) {
    auto k = bpf::mapKey(a);
    uint32_t v = flags;
    if (bpf_map_update_elem(fd, k.data(), &v, BPF_ANY) != 0)
      return errnoFail(errno, "write " + a.str());
  }
  return {};
}

/** Loads a fresh instance configured for want with its entries; returns the program fd (the
 *  skeleton is destroyed: the fd keeps the program, the program its maps). */
Result<Fd> loadProgram(const dp::PodDecap& want, const dp::PodDecapChanges& ch) {
  pod_decap_bpf* skel = pod_decap_bpf__open_and_load();
  if (!skel) return errnoFail(errno, "load program");
  struct Destroy {
    pod_decap_bpf* s;
    ~Destroy() { pod_decap_bpf__destroy(s); }
  } destroy{skel};
  kst_pd_config c{};
  std::snprintf(c.id, sizeof(c.id), "%s", bpf::podDecapProgramId(want).c_str());
  c.mode = modeCode(want.mode);
  c.port = want.port;
  if (auto s = writeAddrs(bpf_map__fd(skel->maps.pd_addrs), ch); !s)
    return std::unexpected(s.error());
  uint32_t zero = 0;
  // The config last: until it names a mode the program decapsulates nothing.
  if (bpf_map_update_elem(bpf_map__fd(skel->maps.pd_config), &zero, &c, BPF_ANY) != 0)
    return errnoFail(errno, "write config");
  Fd prog(dup(bpf_program__fd(skel->progs.kst_pod_decap)));
  if (prog.fd < 0) return errnoFail(errno, "dup program");
  return prog;
}

}  // namespace

std::string bpf::podDecapProgramId(const dp::PodDecap& want) {
  static const uint64_t hash = [] {
    size_t sz = 0;
    const void* elf = pod_decap_bpf__elf_bytes(&sz);
    return stableHash(std::string(static_cast<const char*>(elf), sz), 7);
  }();
  return fmt::format("pd{:016x}-{}-{}", hash, modeTraits(want.mode).name, want.port);
}

Result<dp::ObservedPodDecap> PodDecapPrograms::observe() {
  dp::ObservedPodDecap have;
  auto filters = ourFilters();
  if (filters.empty()) return have;
  uint32_t first = filters.begin()->second;
  for (const auto& [iface, id] : filters) {
    have.attached.insert(iface);
    if (id != first) have.consistent = false;
  }
  auto m = openProgram(first);
  if (!m) {
    have.consistent = false;  // unreadable: rebuilt
    return have;
  }
  kst_pd_config c{};
  uint32_t zero = 0;
  if (bpf_map_lookup_elem(m->config.fd, &zero, &c) == 0) {
    c.id[sizeof(c.id) - 1] = 0;
    have.program = c.id;
  }
  std::array<uint8_t, 16> key{}, next{};
  bool start = true;
  for (size_t n = 0; n < 65536; ++n) {  // bounded: the map holds at most 4096
    if (bpf_map_get_next_key(m->addrs.fd, start ? nullptr : key.data(), next.data()) != 0) break;
    start = false;
    key = next;
    uint32_t v = 0;
    if (bpf_map_lookup_elem(m->addrs.fd, key.data(), &v) == 0)
      have.addrs[bpf::fromMapKey(key.data())] = v;
  }
  return have;
}

Result<PodDecapStats> PodDecapPrograms::stats() {
  PodDecapStats out;
  auto filters = ourFilters();
  if (filters.empty()) return out;
  auto m = openProgram(filters.begin()->second);
  if (!m) return std::unexpected(m.error());
  int cpus = std::max(1, libbpf_num_possible_cpus());
  std::vector<kst_pd_stats> per(static_cast<size_t>(cpus));
  uint32_t zero = 0;
  if (bpf_map_lookup_elem(m->stats.fd, &zero, per.data()) != 0)
    return errnoFail(errno, "read counters");
  for (const auto& s : per) {
    out.packets += s.packets;
    out.bytes += s.bytes;
  }
  return out;
}

PodDecapPrograms::PodDecapPrograms() { bpf::logLibbpfAtDebug(); }

Result<PodDecapStats> PodDecapPrograms::statsAt(const std::string& netnsPath) {
  PodDecapStats out;
  auto st = runInNetns(netnsPath, [&]() -> Status {
    auto s = stats();
    if (!s) return std::unexpected(s.error());
    out = *s;
    return {};
  });
  if (!st) return std::unexpected(st.error());
  return out;
}

Result<size_t> PodDecapPrograms::apply(const std::string& nsId, int nsFd,
                                       const dp::PodDecap* want) {
  if (!want && absent_.contains(nsId)) return size_t(0);
  size_t changes = 0;
  auto st = runInNetns(nsFd, [&]() -> Status {
    auto have = observe();
    if (!have) return std::unexpected(have.error());
    std::set<std::string> targets = want ? interfacesHolding(want->podIps)
                                         : std::set<std::string>{};
    const std::string program = want ? bpf::podDecapProgramId(*want) : std::string();
    auto ch = podDecapDiff(want, program, *have, targets);
    if (want && targets.empty()) {
      for (const auto& i : ch.detach) (void)detach(i);
      changes = ch.detach.size();
      return fail(ENOENT, "pod decap: no interface holds the pod's address");
    }
    if (ch.empty()) return {};
    changes = ch.size();
    if (ch.load) {
      auto prog = loadProgram(*want, ch);
      if (!prog) return std::unexpected(prog.error());
      for (const auto& i : ch.attach)
        if (auto s = attach(prog->fd, i); !s) return s;
    } else {
      if (!ch.attach.empty() || !ch.erase.empty() || !ch.put.empty()) {
        auto filters = ourFilters();
        if (filters.empty()) return fail(ENOENT, "pod decap: program vanished");
        auto m = openProgram(filters.begin()->second);
        if (!m) return std::unexpected(m.error());
        // Entries removed, then written (the reconciler removes a leaving VIP here before its
        // address, and adds a new one after the address is in place).
        if (auto s = writeAddrs(m->addrs.fd, ch); !s) return s;
        for (const auto& i : ch.attach)
          if (auto s = attach(m->prog.fd, i); !s) return s;
      }
    }
    for (const auto& i : ch.detach)
      if (auto s = detach(i); !s) return s;
    return {};
  });
  if (!st) {
    absent_.erase(nsId);
    return std::unexpected(st.error());
  }
  if (want) absent_.erase(nsId);
  else absent_.insert(nsId);
  return changes;
}

}  // namespace kst
