#include "linux/bpf_classifier.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <libmnl/libmnl.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/magic.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "dataplane/modes.h"
#include "desired/nft_render.h"
#include "hashing/maglev.h"
#include "linux/bpf/router_maps.h"
#include "linux/bpf_util.h"
#include "linux/host_view.h"
#include "linux/netlink_socket.h"
#include "router.skel.h"

namespace kst {

namespace bpf {

std::array<uint8_t, 16> mapKey(const IpAddress& a) {
  std::array<uint8_t, 16> k{};
  if (a.isV4()) {
    k[10] = k[11] = 0xff;
    std::memcpy(k.data() + 12, a.data(), 4);
  } else {
    std::memcpy(k.data(), a.data(), 16);
  }
  return k;
}

IpAddress fromMapKey(const uint8_t* b) {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(b, kMapped, 12) == 0) return IpAddress::fromBytes(Family::V4, b + 12);
  return IpAddress::fromBytes(Family::V6, b);
}

namespace {
using U128 = unsigned __int128;
U128 toU128(const std::array<uint8_t, 16>& k) {
  U128 v = 0;
  for (uint8_t b : k) v = (v << 8) | b;
  return v;
}
std::array<uint8_t, 16> fromU128(U128 v) {
  std::array<uint8_t, 16> k{};
  for (int i = 15; i >= 0; --i) {
    k[size_t(i)] = uint8_t(v);
    v >>= 8;
  }
  return k;
}
}  // namespace

std::vector<std::pair<std::array<uint8_t, 16>, uint8_t>> coverPrefixes(const IpAddress& first,
                                                                       const IpAddress& last) {
  std::vector<std::pair<std::array<uint8_t, 16>, uint8_t>> out;
  if (first.family() != last.family()) return out;
  U128 lo = toU128(mapKey(first)), hi = toU128(mapKey(last));
  if (lo > hi) return out;
  while (true) {
    // The largest aligned block 2^bits starting at lo that does not pass hi.
    int bits = 0;
    while (bits < 128) {
      if (bits + 1 == 128) {  // the whole space: one /0
        if (lo == 0 && hi == ~U128(0)) bits = 128;
        break;
      }
      const U128 twice = U128(1) << (bits + 1);
      if ((lo & (twice - 1)) != 0 || lo + (twice - 1) > hi) break;
      ++bits;
    }
    out.emplace_back(fromU128(lo), uint8_t(128 - bits));
    if (bits == 128) break;
    const U128 end = lo + ((U128(1) << bits) - 1);
    if (end >= hi) break;
    lo = end + 1;
  }
  return out;
}

std::string programId(const DataplaneConfig& cfg) {
  size_t sz = 0;
  const void* elf = router_bpf__elf_bytes(&sz);
  std::string bytes(static_cast<const char*>(elf), sz);
  return fmt::format("bpf{:016x}-{}", stableHash(bytes, 7), modeTraits(cfg.mode).name);
}

std::string storedId(const std::string& program, const std::string& skeletonId) {
  return program + "/" + skeletonId;
}

std::optional<std::string> adoptedSkeletonId(const std::string& stored, const std::string& program) {
  if (!stored.starts_with(program + "/")) return std::nullopt;
  return stored.substr(program.size() + 1);
}

dp::ClassifierHashes classifierHashes(Family family, uint32_t seed,
                                      const std::set<uint32_t>& bucketCounts) {
  const std::string ip = family == Family::V4 ? "ip " : "ip6 ";
  const std::vector<std::string> addrs{ip + "saddr", ip + "daddr"};
  std::vector<std::string> tuple = addrs;
  tuple.insert(tuple.end(), {"th sport", "th dport"});
  dp::ClassifierHashes h;
  for (uint32_t b : bucketCounts) {
    h.buckets.push_back({dp::BucketHashRule::Protocols::WithPorts, {tuple, b, seed, kBucketMarkBase}});
    h.buckets.push_back({dp::BucketHashRule::Protocols::WithoutPorts, {addrs, b, seed, kBucketMarkBase}});
  }
  for (const auto& f : tuple) h.flowKey.push_back({f, std::nullopt});
  return h;
}

std::optional<std::vector<uint8_t>> flowMapKey(Family family, std::span<const uint8_t> r) {
  const size_t a = family == Family::V4 ? 4 : 16;
  if (r.size() != 2 * a + 8) return std::nullopt;
  kst_flow_key k{};
  const auto s = mapKey(IpAddress::fromBytes(family, r.data()));
  const auto d = mapKey(IpAddress::fromBytes(family, r.data() + a));
  std::memcpy(k.saddr, s.data(), 16);
  std::memcpy(k.daddr, d.data(), 16);
  std::memcpy(&k.sport, r.data() + 2 * a, 2);  // network order, as the register holds it
  std::memcpy(&k.dport, r.data() + 2 * a + 4, 2);
  k.v4 = family == Family::V4 ? 1 : 0;
  std::vector<uint8_t> out(sizeof(k));
  std::memcpy(out.data(), &k, sizeof(k));
  return out;
}

}  // namespace bpf

namespace {

constexpr const char* kMapNames[] = {"config", "vips",  "vipstats", "buckets", "slots",
                                     "epstats", "sources", "flows",   "totals"};
// Pinned but kept across rebuilds (the record of the clsact qdiscs we created).
constexpr const char* kClsactMap = "clsact";

std::unexpected<Error> errnoFail(int err, const std::string& what) {
  return fail(err, fmt::format("bpf: {}: {}", what, std::strerror(err)));
}

using bpf::Fd;

uint64_t monotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

int possibleCpus() {
  static const int n = std::max(1, libbpf_num_possible_cpus());
  return n;
}

/** Every (key, value) of a map, value bytes as the syscall returns them (per-CPU: one
 *  8-byte-aligned value per possible CPU). fn(key, value). */
template <typename K, typename Fn>
Status forEach(int fd, size_t valueSize, Fn&& fn) {
  K key{}, next{};
  std::vector<uint8_t> value(valueSize);
  bool first = true;
  while (true) {
    int r = bpf_map_get_next_key(fd, first ? nullptr : &key, &next);
    if (r != 0) {
      if (errno == ENOENT) return {};
      return errnoFail(errno, "map iteration");
    }
    first = false;
    key = next;
    if (bpf_map_lookup_elem(fd, &key, value.data()) != 0) {
      if (errno == ENOENT) continue;  // deleted meanwhile
      return errnoFail(errno, "map lookup");
    }
    fn(key, value.data());
  }
}

/** As forEach, for a plain hash map, in batches of lookups (BPF_MAP_LOOKUP_BATCH: one
 *  syscall per few thousand entries instead of two per entry; the bucket map holds 640k
 *  entries at V = 10k, B = 64). fn(key, value). */
template <typename K, typename V, typename Fn>
Status forEachBatch(int fd, Fn&& fn) {
  uint32_t chunk = 4096;
  std::vector<K> keys(chunk);
  std::vector<V> values(chunk);
  uint32_t token = 0;
  bool first = true;
  while (true) {
    uint32_t count = chunk, next = 0;
    int r = bpf_map_lookup_batch(fd, first ? nullptr : &token, &next, keys.data(), values.data(),
                                 &count, nullptr);
    const int err = r != 0 ? errno : 0;
    if (err == ENOSPC && chunk < (1u << 20)) {  // one hash bucket holds more than a chunk
      chunk *= 2;
      keys.resize(chunk);
      values.resize(chunk);
      continue;
    }
    if (err != 0 && err != ENOENT) return errnoFail(err, "map batch lookup");
    for (uint32_t i = 0; i < count; ++i) fn(keys[i], values[i]);
    if (err == ENOENT) return {};
    token = next;
    first = false;
  }
}

size_t perCpuSize(size_t v) { return ((v + 7) / 8 * 8) * size_t(possibleCpus()); }

template <typename V>
V sumPerCpu(const uint8_t* raw) {
  V total{};
  const size_t stride = (sizeof(V) + 7) / 8 * 8;
  for (int c = 0; c < possibleCpus(); ++c) {
    V v;
    std::memcpy(&v, raw + stride * size_t(c), sizeof(V));
    const auto* in = reinterpret_cast<const uint64_t*>(&v);
    auto* out = reinterpret_cast<uint64_t*>(&total);
    for (size_t i = 0; i < sizeof(V) / 8; ++i) out[i] += in[i];
  }
  return total;
}

bool isBpffs(const std::string& path) {
  struct statfs st {};
  return statfs(path.c_str(), &st) == 0 && st.f_type == BPF_FS_MAGIC;
}

}  // namespace

Status bpf::preparePinDir(const std::string& dir) {
  namespace fs = std::filesystem;
  fs::path parent = fs::path(dir).parent_path();
  if (!isBpffs(parent.string())) {
    if (parent.string().starts_with("/sys/fs/bpf") && !isBpffs("/sys/fs/bpf")) {
      if (mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700") != 0)
        return errnoFail(errno, "mount bpffs at /sys/fs/bpf");
      spdlog::info("bpf: mounted bpffs at /sys/fs/bpf");
    }
    std::error_code ec;
    fs::create_directories(parent, ec);
    if (!isBpffs(parent.string()))
      return fail(EINVAL, fmt::format("bpf: {} is not on a bpf filesystem", parent.string()));
  }
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return errnoFail(errno, "mkdir " + dir);
  return {};
}

namespace {

/** The name of the program behind a prog id ("" when unknown). */
std::string progName(uint32_t id) {
  Fd fd(bpf_prog_get_fd_by_id(id));
  if (fd.fd < 0) return {};
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd.fd, &info, &len) != 0) return {};
  return info.name;
}

uint32_t progId(int fd) {
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) return 0;
  return info.id;
}

/** The program id of our filter on ifindex's ingress (0: none). */
uint32_t attachedId(int ifindex) {
  DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
  DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = bpf::kTcHandle, .priority = bpf::kTcPriority);
  if (bpf_tc_query(&hook, &opts) != 0) return 0;
  return opts.prog_id;
}

/** A dump of the tc filters under parent on ifindex (RTM_GETTFILTER): each reply to onMessage. */
Status dumpTcFilters(nl::Socket& sock, int ifindex, uint32_t parent,
                     const std::function<void(const nlmsghdr*)>& onMessage) {
  nl::Message req(MNL_ALIGN(sizeof(nlmsghdr)) + MNL_ALIGN(sizeof(tcmsg)), 0);
  auto* h = mnl_nlmsg_put_header(req.data());
  h->nlmsg_type = RTM_GETTFILTER;
  h->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  auto* tc = static_cast<tcmsg*>(mnl_nlmsg_put_extra_header(h, sizeof(tcmsg)));
  tc->tcm_family = AF_UNSPEC;
  tc->tcm_ifindex = ifindex;
  tc->tcm_parent = parent;
  req.resize(h->nlmsg_len);
  return sock.dump(std::move(req), onMessage);
}

/** The name tc keeps for the bpf filter at our handle and priority on ifindex's ingress ("":
 *  none, or no name). libbpf names what it attaches "<program name>:[<id>]", so ours reads
 *  "kst_router:[N]". Read from a filter dump, which needs no capability. */
std::string attachedName(nl::Socket& sock, int ifindex) {
  std::string name;
  const uint32_t ingress = TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS);
  Status s = dumpTcFilters(sock, ifindex, ingress, [&](const nlmsghdr* m) {
    if (m->nlmsg_type != RTM_NEWTFILTER || m->nlmsg_len < NLMSG_LENGTH(sizeof(tcmsg))) return;
    const auto* f = static_cast<const tcmsg*>(mnl_nlmsg_get_payload(m));
    if (f->tcm_handle != bpf::kTcHandle || TC_H_MAJ(f->tcm_info) >> 16 != bpf::kTcPriority)
      return;
    // Bounds-checked walks (libmnl: a truncated attribute ends them).
    const nlattr* opts = nullptr;
    bool isBpf = false;
    auto* tail = static_cast<const char*>(mnl_nlmsg_get_payload_tail(m));
    for (auto* a = static_cast<const nlattr*>(mnl_nlmsg_get_payload_offset(m, sizeof(tcmsg)));
         mnl_attr_ok(a, int(tail - reinterpret_cast<const char*>(a))); a = mnl_attr_next(a)) {
      if (mnl_attr_get_type(a) == TCA_KIND)
        isBpf = mnl_attr_validate(a, MNL_TYPE_NUL_STRING) == 0 &&
                std::string_view(mnl_attr_get_str(a)) == "bpf";
      else if (mnl_attr_get_type(a) == TCA_OPTIONS)
        opts = a;
    }
    if (!isBpf || !opts) return;
    auto* end = static_cast<const char*>(mnl_attr_get_payload(opts)) + mnl_attr_get_payload_len(opts);
    for (auto* o = static_cast<const nlattr*>(mnl_attr_get_payload(opts));
         mnl_attr_ok(o, int(end - reinterpret_cast<const char*>(o))); o = mnl_attr_next(o)) {
      if (mnl_attr_get_type(o) == TCA_BPF_NAME && mnl_attr_validate(o, MNL_TYPE_NUL_STRING) == 0)
        name = mnl_attr_get_str(o);
    }
  });
  if (!s) spdlog::debug("bpf: filter dump of ifindex {}: {}", ifindex, s.error().message);
  return name;
}

/** The interfaces whose ingress runs our filter: handle, priority and program kst_router —
 *  by the name tc keeps for the filter, or else by the program's own name (looking a program
 *  up by id needs CAP_SYS_ADMIN, which a router pod does not have). */
std::vector<std::pair<int, std::string>> interfacesWithOurFilter() {
  std::vector<std::pair<int, std::string>> out;
  auto sock = nl::Socket::open();
  if (!sock) spdlog::debug("bpf: {}", sock.error().message);
  const std::string ours = std::string(bpf::kProgName) + ":[";
  if (struct if_nameindex* all = if_nameindex()) {
    for (auto* p = all; p->if_index != 0 && p->if_name; ++p) {
      const uint32_t id = attachedId(int(p->if_index));
      if (!id) continue;
      if ((sock && attachedName(**sock, int(p->if_index)).starts_with(ours)) ||
          progName(id) == bpf::kProgName)
        out.emplace_back(int(p->if_index), p->if_name);
    }
    if_freenameindex(all);
  }
  return out;
}

}  // namespace

struct BpfClassifier::Maps {
  Fd config, vips, vipstats, buckets, slots, epstats, sources, flows, totals;
  Fd* all[9] = {&config, &vips, &vipstats, &buckets, &slots, &epstats, &sources, &flows, &totals};
};

BpfClassifier::BpfClassifier(const DataplaneConfig& cfg, BpfOptions opts)
    : cfg_(cfg), opts_(std::move(opts)), program_(bpf::programId(cfg)) {
  bpf::logLibbpfAtDebug();
}

BpfClassifier::~BpfClassifier() = default;

Result<BpfClassifier::Maps> BpfClassifier::openMaps() const {
  Maps m;
  for (size_t i = 0; i < std::size(kMapNames); ++i) {
    std::string path = opts_.pinDir + "/" + kMapNames[i];
    m.all[i]->fd = bpf_obj_get(path.c_str());
    if (m.all[i]->fd < 0) return errnoFail(errno, "open " + path);
  }
  return m;
}

std::vector<std::pair<std::string, int>> BpfClassifier::targets() const {
  std::vector<std::pair<std::string, int>> out;
  if (!opts_.ingress.empty()) {
    for (auto& n : opts_.ingress)
      if (unsigned idx = if_nametoindex(n.c_str())) out.emplace_back(n, int(idx));
    return out;
  }
  if (struct if_nameindex* all = if_nameindex()) {
    for (auto* p = all; p->if_index != 0 && p->if_name; ++p) {
      std::string n = p->if_name;
      if (n == "lo" || n.starts_with(cfg_.linkPrefix)) continue;
      out.emplace_back(n, int(p->if_index));
    }
    if_freenameindex(all);
  }
  return out;
}

namespace {

/** The MTU of an interface in the calling thread's namespace (0: no such interface). */
uint32_t linkMtu(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ) return 0;
  Fd sock(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (sock.fd < 0) return 0;
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  if (ioctl(sock.fd, SIOCGIFMTU, &ifr) != 0) return 0;
  return ifr.ifr_mtu > 0 ? uint32_t(ifr.ifr_mtu) : 0;
}

/** net.ipv4.ip_local_port_range, the range udp_flow_src_port() scales vxlan's source port
 *  into when the device has none of its own (ours have none); the kernel's default else. */
std::pair<uint16_t, uint16_t> localPortRange() {
  unsigned lo = 32768, hi = 60999;
  if (FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "re")) {
    unsigned a = 0, b = 0;
    if (std::fscanf(f, "%u %u", &a, &b) == 2 && a > 0 && a < b && b <= 65535) lo = a, hi = b;
    std::fclose(f);
  }
  return {uint16_t(lo), uint16_t(hi)};
}

}  // namespace

bool BpfClassifier::headerPath() const {
  return opts_.encap == BpfEncap::Headers &&
         (cfg_.mode == Mode::VxlanGpe || cfg_.mode == Mode::Ipip || cfg_.mode == Mode::GreFlow);
}

std::array<uint8_t, 16> BpfClassifier::outerSource(const IpAddress& endpoint) {
  if (auto it = sources_.find(endpoint); it != sources_.end()) return it->second;
  std::array<uint8_t, 16> out{};
  if (!nl_) {
    auto s = nl::Socket::open();
    if (!s) {
      spdlog::warn("bpf: netlink: {}", s.error().message);
      return out;
    }
    nl_ = std::move(*s);
  }
  auto r = routeToPod(*nl_, endpoint);
  if (!r) {
    spdlog::debug("bpf: outer source toward {}: {}", endpoint.str(), r.error().message);
  } else if (r->prefsrc && r->prefsrc->family() == endpoint.family() &&
             r->type == RTN_UNICAST) {
    out = bpf::mapKey(*r->prefsrc);
  }
  sources_[endpoint] = out;
  return out;
}

Status BpfClassifier::refreshConfig(const Maps& m) {
  uint32_t zero = 0;
  kst_config c{};
  if (bpf_map_lookup_elem(m.config.fd, &zero, &c) != 0) return errnoFail(errno, "read config");
  kst_config want = c;
  want.seed = cfg_.hashSeed;
  want.flow_timeout_ns = uint64_t(cfg_.flowTimeoutSeconds) * 1000000000ull;
  want.ttl = cfg_.ttl;
  const ModeTraits& t = modeTraits(cfg_.mode);
  const std::string n4 = cfg_.tunnelLinkName();
  const std::string n6 = *t.suffix6 ? cfg_.linkPrefix + t.suffix6 : n4;
  // Redirect to the collect-md device in the modes whose tunnel key the program can set as
  // the nexthop's `encap ip` does (no GRE key): vxlan-gpe and ipip.
  const bool redirect = opts_.encap == BpfEncap::Device &&
                        (cfg_.mode == Mode::VxlanGpe || cfg_.mode == Mode::Ipip);
  want.flags = redirect ? KST_CFG_REDIRECT : 0;
  if (cfg_.mode == Mode::VxlanGpe) want.flags |= KST_CFG_ZERO_CSUM4;
  want.ifindex4 = want.ifindex6 = 0;
  if (redirect) {
    want.ifindex4 = if_nametoindex(n4.c_str());
    want.ifindex6 = if_nametoindex(n6.c_str());
  }
  want.encap = KST_ENCAP_NONE;
  want.udp_port = want.port_min = want.port_max = 0;
  want.mtu4 = want.mtu6 = 0;
  if (headerPath()) {
    want.flags |= KST_CFG_HEADERS;
    want.encap = cfg_.mode == Mode::VxlanGpe ? KST_ENCAP_VXLAN_GPE
                 : cfg_.mode == Mode::Ipip   ? KST_ENCAP_IPIP
                                             : KST_ENCAP_GRE;
    want.udp_port = cfg_.vxlanPort;
    std::tie(want.port_min, want.port_max) = localPortRange();
    // The inner packets the stack would pass: the MTU of the tunnel device the mark path
    // uses (absent device: 0, every packet of that family takes the mark path).
    want.mtu4 = linkMtu(n4);
    want.mtu6 = linkMtu(n6);
  }
  if (std::memcmp(&want, &c, sizeof(c)) == 0) return {};
  if (bpf_map_update_elem(m.config.fd, &zero, &want, BPF_ANY) != 0)
    return errnoFail(errno, "write config");
  return {};
}

Status BpfClassifier::linksChanged() {
  if (access((opts_.pinDir + "/config").c_str(), F_OK) != 0) return {};
  auto m = openMaps();
  if (!m) return std::unexpected(m.error());
  return refreshConfig(*m);
}

Status BpfClassifier::refreshSources(const Maps& m,
                                     const std::vector<std::pair<kst_slot_key, kst_slot_val>>& slots) {
  if (!headerPath()) return {};
  sources_.clear();  // routes may have changed since the last observation
  size_t changed = 0;
  for (auto [k, v] : slots) {
    if (!(v.flags & KST_SLOT_ENDPOINT)) continue;
    auto src = outerSource(bpf::fromMapKey(v.endpoint));
    if (std::memcmp(src.data(), v.src, 16) == 0) continue;
    std::memcpy(v.src, src.data(), 16);
    // Only when the entry is still what was read (a concurrent write is not ours to undo).
    if (bpf_map_update_elem(m.slots.fd, &k, &v, BPF_EXIST) != 0 && errno != ENOENT)
      return errnoFail(errno, "update slot source");
    ++changed;
  }
  if (changed) spdlog::info("bpf: outer source address refreshed for {} slot(s)", changed);
  return {};
}

Result<dp::NftState> BpfClassifier::observe() {
  dp::NftState st;
  if (access((opts_.pinDir + "/config").c_str(), F_OK) != 0) {
    // No pins, but our filter may still be attached: its pins lived in a bpffs that is gone
    // (a mount namespace of `ip netns exec`, a container without the hostPath) or were removed
    // by hand. Reported as present under an id no configuration renders, so that the next
    // pass rebuilds it (fresh maps, the filter replaced in place) or deletes it (cleanup, the
    // other datapath) instead of leaving a program with stale maps attached.
    if (!interfacesWithOurFilter().empty()) {
      st.present = true;
      st.skeletonId = "orphan";
    }
    return st;
  }
  auto m = openMaps();
  if (!m) return std::unexpected(m.error());
  uint32_t zero = 0;
  kst_config c{};
  if (bpf_map_lookup_elem(m->config.fd, &zero, &c) != 0)
    return errnoFail(errno, "read config");
  c.id[KST_ID_LEN - 1] = 0;
  st.present = true;
  auto adopted = bpf::adoptedSkeletonId(c.id, program_);
  // Another build's program or mode: reported under an id no configuration renders (Rebuild).
  st.skeletonId = adopted ? *adopted : std::string("other:") + c.id;
  Status s = forEach<kst_vip_key>(m->vips.fd, sizeof(kst_vip_val),
                                  [&](const kst_vip_key& k, const uint8_t* raw) {
                                    kst_vip_val v;
                                    std::memcpy(&v, raw, sizeof(v));
                                    IpAddress vip = bpf::fromMapKey(k.addr);
                                    if (v.flags & KST_VIP_SET) st.vips.insert(vip);
                                    if (v.flags & KST_VIP_COUNT) st.vipBuckets[vip] = v.buckets;
                                    if (v.flags & KST_VIP_RANGED) st.sourceRanges[vip];
                                  });
  if (!s) return std::unexpected(s.error());
  std::map<IpAddress, std::map<uint32_t, uint32_t>> buckets;
  s = forEachBatch<kst_bucket_key, uint32_t>(
      m->buckets.fd, [&](const kst_bucket_key& k, uint32_t mark) {
        buckets[bpf::fromMapKey(k.vip)][k.bucket] = mark;
      });
  if (!s) return std::unexpected(s.error());
  for (auto& [vip, bm] : buckets) {
    std::vector<uint32_t> marks(bm.rbegin()->first + 1, 0);
    for (auto& [b, mark] : bm) marks[b] = mark;
    st.buckets.setVip(vip, std::move(marks));
  }
  std::vector<std::pair<kst_slot_key, kst_slot_val>> slotEntries;
  const bool collect = adopted && opts_.repair && headerPath();
  s = forEach<kst_slot_key>(m->slots.fd, sizeof(kst_slot_val),
                            [&](const kst_slot_key& k, const uint8_t* raw) {
                              kst_slot_val v;
                              std::memcpy(&v, raw, sizeof(v));
                              if (collect) slotEntries.emplace_back(k, v);
                              IpAddress vip = bpf::fromMapKey(k.vip);
                              if (v.flags & KST_SLOT_LIVE) st.live.insert({vip, k.mark});
                              if (v.flags & KST_SLOT_ENDPOINT)
                                st.endpoints[vip][k.mark] = bpf::fromMapKey(v.endpoint);
                            });
  if (!s) return std::unexpected(s.error());
  std::map<IpAddress, std::set<dp::SourceInterval>> ranges;
  s = forEach<kst_src_key>(m->sources.fd, sizeof(kst_src_val),
                           [&](const kst_src_key& k, const uint8_t* raw) {
                             kst_src_val v;
                             std::memcpy(&v, raw, sizeof(v));
                             ranges[bpf::fromMapKey(k.vip)].insert(
                                 {bpf::fromMapKey(v.first), bpf::fromMapKey(v.last)});
                           });
  if (!s) return std::unexpected(s.error());
  for (auto& [vip, set] : ranges) {
    // An interval of a VIP that is not filtered is still observed (and deleted by the diff).
    auto& v = st.sourceRanges[vip];
    v.assign(set.begin(), set.end());
  }
  // Repairs: a detached program or a renamed device (the periodic resync observes).
  if (adopted && opts_.repair) {
    if (auto r = refreshConfig(*m); !r) spdlog::warn("{}", r.error().message);
    if (auto r = refreshSources(*m, slotEntries); !r) spdlog::warn("{}", r.error().message);
    Fd prog(bpf_obj_get((opts_.pinDir + "/prog").c_str()));
    if (prog.fd >= 0) {
      if (auto r = ensureAttached(prog.fd, false); !r) spdlog::warn("{}", r.error().message);
    }
  }
  return st;
}

Status BpfClassifier::run(const std::string&) {
  return fail(ENOTSUP, "bpf datapath: nft scripts are not supported");
}

Status BpfClassifier::ensureAttached(int progFd, bool replaceAll) {
  const uint32_t id = progId(progFd);
  std::string errors;
  for (auto& [name, ifindex] : targets()) {
    const uint32_t have = attachedId(ifindex);
    if (have == id && !replaceAll) continue;
    DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    int r = bpf_tc_hook_create(&hook);
    if (r != 0 && r != -EEXIST) {
      errors += fmt::format(" {}: clsact: {};", name, std::strerror(-r));
      continue;
    }
    if (r == 0) recordClsact(ifindex, name);
    DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = progFd, .flags = BPF_TC_F_REPLACE,
                        .handle = bpf::kTcHandle, .priority = bpf::kTcPriority);
    r = bpf_tc_attach(&hook, &opts);
    if (r != 0) {
      errors += fmt::format(" {}: attach: {};", name, std::strerror(-r));
      continue;
    }
    spdlog::info("bpf: {} on {} ingress", have ? "replaced the program" : "attached", name);
  }
  if (!errors.empty()) return fail(EIO, "bpf:" + errors);
  return {};
}

Status BpfClassifier::load(const std::string& skeletonId) {
  if (auto s = bpf::preparePinDir(opts_.pinDir); !s) return s;
  // Fresh maps: the old ones stay alive (and in use) as long as the attached program holds
  // them, and go with it when the new program replaces it.
  for (const char* n : kMapNames) unlink((opts_.pinDir + "/" + n).c_str());
  router_bpf* skel = router_bpf__open();
  if (!skel) return errnoFail(errno, "open program");
  struct Destroy {
    router_bpf* s;
    ~Destroy() { router_bpf__destroy(s); }
  } destroy{skel};
  bpf_map__set_max_entries(skel->maps.flows, std::max<uint32_t>(cfg_.flowTableSize, 1));
  bpf_object* obj = skel->obj;
  bpf_map* map;
  bpf_object__for_each_map(map, obj) {
    // The program's private maps (the outer IPv4 id counter) live with the program only.
    const std::string name = bpf_map__name(map);
    if (name != kClsactMap &&
        std::find_if(std::begin(kMapNames), std::end(kMapNames),
                     [&](const char* n) { return name == n; }) == std::end(kMapNames))
      continue;
    std::string path = opts_.pinDir + "/" + name;
    if (int r = bpf_map__set_pin_path(map, path.c_str()); r != 0)
      return errnoFail(-r, "pin path " + path);
  }
  if (int r = router_bpf__load(skel); r != 0) return errnoFail(-r, "load program");
  auto m = openMaps();
  if (!m) return std::unexpected(m.error());
  uint32_t zero = 0;
  kst_config c{};
  std::string id = bpf::storedId(program_, skeletonId);
  std::snprintf(c.id, sizeof(c.id), "%s", id.c_str());
  if (bpf_map_update_elem(m->config.fd, &zero, &c, BPF_ANY) != 0)
    return errnoFail(errno, "write config");
  if (auto s = refreshConfig(*m); !s) return s;
  const std::string progPath = opts_.pinDir + "/prog";
  unlink(progPath.c_str());
  if (bpf_program__pin(skel->progs.kst_router, progPath.c_str()) != 0)
    return errnoFail(errno, "pin program");
  return {};
}

void BpfClassifier::recordClsact(int ifindex, const std::string& name) const {
  Fd map(bpf_obj_get((opts_.pinDir + "/" + kClsactMap).c_str()));
  if (map.fd < 0) return;  // no record: cleanup leaves that qdisc (as any it did not create)
  const uint32_t key = uint32_t(ifindex);
  kst_clsact_val v{};
  std::snprintf(v.name, sizeof(v.name), "%s", name.c_str());
  if (bpf_map_update_elem(map.fd, &key, &v, BPF_ANY) != 0)
    spdlog::warn("bpf: record the clsact qdisc of {}: {}", name, std::strerror(errno));
}

namespace {

/** The number of tc filters under parent on ifindex (a dump of RTM_GETTFILTER). */
Result<size_t> tcFilterCount(nl::Socket& sock, int ifindex, uint32_t parent) {
  size_t n = 0;
  auto st = dumpTcFilters(sock, ifindex, parent, [&](const nlmsghdr* m) {
    if (m->nlmsg_type != RTM_NEWTFILTER) return;
    auto* t = static_cast<const tcmsg*>(mnl_nlmsg_get_payload(m));
    // A dump lists each priority's classifier once without a handle, then its filters.
    if (t->tcm_ifindex == ifindex && t->tcm_parent == parent && t->tcm_handle != 0) ++n;
  });
  if (!st) return std::unexpected(st.error());
  return n;
}

}  // namespace

void BpfClassifier::removeOwnClsacts() {
  const std::string path = opts_.pinDir + "/" + kClsactMap;
  Fd map(bpf_obj_get(path.c_str()));
  if (map.fd < 0) return;
  auto sock = nl::Socket::open();
  std::vector<uint32_t> keys;
  uint32_t key = 0, next = 0;
  for (void* prev = nullptr; bpf_map_get_next_key(map.fd, prev, &next) == 0; prev = &key) {
    keys.push_back(next);
    key = next;
  }
  for (uint32_t k : keys) {
    kst_clsact_val v{};
    if (bpf_map_lookup_elem(map.fd, &k, &v) != 0) continue;
    v.name[sizeof(v.name) - 1] = 0;
    char now[IF_NAMESIZE] = {};
    // Still the same interface, and nothing but ours ever hung on it (ingress and egress).
    if (sock && if_indextoname(k, now) && std::strcmp(now, v.name) == 0) {
      auto in = tcFilterCount(**sock, int(k), TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS));
      auto eg = tcFilterCount(**sock, int(k), TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS));
      if (in && eg && *in == 0 && *eg == 0) {
        DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = int(k),
                            .attach_point = bpf_tc_attach_point(BPF_TC_INGRESS | BPF_TC_EGRESS));
        if (int r = bpf_tc_hook_destroy(&hook); r != 0 && r != -ENOENT)
          spdlog::warn("bpf: remove the clsact qdisc of {}: {}", v.name, std::strerror(-r));
        else
          spdlog::info("bpf: removed the clsact qdisc of {} (ours, no filter left)", v.name);
      } else if (in && eg) {
        spdlog::info("bpf: the clsact qdisc of {} stays: {} other filter(s) on it", v.name,
                     *in + *eg);
      }
    }
  }
  unlink(path.c_str());
}

Status BpfClassifier::remove() {
  // Our filter (handle, priority and program name) on every interface, the clsact qdiscs we
  // created that carry no other filter, then every pin.
  for (const auto& [ifindex, name] : interfacesWithOurFilter()) {
    DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = bpf::kTcHandle,
                        .priority = bpf::kTcPriority);
    if (int r = bpf_tc_detach(&hook, &opts); r != 0)
      spdlog::warn("bpf: detach from {}: {}", name, std::strerror(-r));
  }
  removeOwnClsacts();
  for (const char* n : kMapNames) unlink((opts_.pinDir + "/" + n).c_str());
  unlink((opts_.pinDir + "/prog").c_str());
  rmdir(opts_.pinDir.c_str());
  return {};
}

Status BpfClassifier::applyStep(dp::TableStep step, const std::string& skeletonId,
                                const std::string&, const dp::NftElementChanges& elements) {
  switch (step) {
    case dp::TableStep::Keep:
      return applyElements(elements);
    case dp::TableStep::Delete:
      return remove();
    case dp::TableStep::Create:
    case dp::TableStep::Rebuild:
      break;
  }
  if (auto s = load(skeletonId); !s) return s;
  if (auto s = applyElements(elements); !s) return s;
  Fd prog(bpf_obj_get((opts_.pinDir + "/prog").c_str()));
  if (prog.fd < 0) return errnoFail(errno, "open pinned program");
  return ensureAttached(prog.fd, true);
}

namespace {

/** Read-modify-write of a flag word in a map entry; the entry is deleted when its flags are
 *  all clear. set: the flags to set; clear: to clear; fill(value) for additions. */
template <typename K, typename V, typename Fill>
Status editFlags(int fd, const K& key, uint32_t set, uint32_t clear, Fill&& fill) {
  V v{};
  const bool had = bpf_map_lookup_elem(fd, &key, &v) == 0;
  if (!had && !set) return {};
  v.flags = (v.flags | set) & ~clear;
  if (set) fill(v);
  if (v.flags == 0) {
    if (bpf_map_delete_elem(fd, &key) != 0 && errno != ENOENT)
      return errnoFail(errno, "delete entry");
    return {};
  }
  if (bpf_map_update_elem(fd, &key, &v, BPF_ANY) != 0) return errnoFail(errno, "write entry");
  return {};
}

Status del(int fd, const void* key) {
  if (bpf_map_delete_elem(fd, key) != 0 && errno != ENOENT) return errnoFail(errno, "delete");
  return {};
}

Status put(int fd, const void* key, const void* value, uint64_t flags = BPF_ANY) {
  if (bpf_map_update_elem(fd, key, value, flags) != 0 && !(flags == BPF_NOEXIST && errno == EEXIST))
    return errnoFail(errno, "update");
  return {};
}

kst_vip_key vipKey(const IpAddress& a) {
  kst_vip_key k{};
  auto b = bpf::mapKey(a);
  std::memcpy(k.addr, b.data(), 16);
  return k;
}
kst_slot_key slotKey(const IpAddress& vip, uint32_t mark) {
  kst_slot_key k{};
  auto b = bpf::mapKey(vip);
  std::memcpy(k.vip, b.data(), 16);
  k.mark = mark;
  return k;
}

}  // namespace

#define KST_TRY(expr)                     \
  do {                                    \
    if (auto s_ = (expr); !s_) return s_; \
  } while (0)

Status BpfClassifier::applyElements(const dp::NftElementChanges& d) {
  if (d.size() == 0) return {};
  auto mr = openMaps();
  if (!mr) return std::unexpected(mr.error());
  Maps& m = *mr;
  sources_.clear();  // resolved afresh for this batch's endpoints
  auto noop = [](auto&) {};
  const std::vector<uint8_t> zeroVip(perCpuSize(sizeof(kst_vip_counter)), 0);
  const std::vector<uint8_t> zeroEp(perCpuSize(sizeof(kst_counter)), 0);
  // The nft batch's order (dp::NftClient::applyElements): VIPs leave first, then source
  // ranges, endpoint counters, bucket counts, buckets and live slots go; additions in the
  // reverse order, VIPs last.
  for (auto& v : d.vipDeletes) {
    KST_TRY((editFlags<kst_vip_key, kst_vip_val>(m.vips.fd, vipKey(v), 0, KST_VIP_SET, noop)));
    auto k = vipKey(v);
    KST_TRY(del(m.vipstats.fd, &k));
  }
  auto rangeKeys = [](const dp::NftElementChanges::SourceRange& r) {
    std::vector<kst_src_key> keys;
    auto vip = bpf::mapKey(r.vip);
    for (auto& [addr, len] : bpf::coverPrefixes(r.src.first, r.src.last)) {
      kst_src_key k{};
      k.prefixlen = 128u + len;
      std::memcpy(k.vip, vip.data(), 16);
      std::memcpy(k.src, addr.data(), 16);
      keys.push_back(k);
    }
    return keys;
  };
  for (auto& r : d.rangeDeletes)
    for (auto& k : rangeKeys(r)) KST_TRY(del(m.sources.fd, &k));
  for (auto& v : d.rangedDeletes)
    KST_TRY((editFlags<kst_vip_key, kst_vip_val>(m.vips.fd, vipKey(v), 0, KST_VIP_RANGED, noop)));
  for (auto& e : d.endpointDeletes) {
    auto k = slotKey(e.vip, e.mark);
    KST_TRY(del(m.epstats.fd, &k));
    KST_TRY((editFlags<kst_slot_key, kst_slot_val>(m.slots.fd, k, 0, KST_SLOT_ENDPOINT, noop)));
  }
  for (auto& c : d.countDeletes)
    KST_TRY((editFlags<kst_vip_key, kst_vip_val>(m.vips.fd, vipKey(c.vip), 0, KST_VIP_COUNT,
                                                 noop)));
  for (auto& b : d.bucketDeletes) {
    kst_bucket_key k{};
    auto a = bpf::mapKey(b.vip);
    std::memcpy(k.vip, a.data(), 16);
    k.bucket = b.bucket;
    KST_TRY(del(m.buckets.fd, &k));
  }
  for (auto& l : d.liveDeletes)
    KST_TRY((editFlags<kst_slot_key, kst_slot_val>(m.slots.fd, slotKey(l.vip, l.mark), 0,
                                                   KST_SLOT_LIVE, noop)));
  for (auto& l : d.liveAdds)
    KST_TRY((editFlags<kst_slot_key, kst_slot_val>(m.slots.fd, slotKey(l.vip, l.mark),
                                                   KST_SLOT_LIVE, 0, noop)));
  // Bucket additions in batches (BPF_MAP_UPDATE_BATCH; a cold start writes V × B of them).
  for (size_t i = 0; i < d.bucketAdds.size();) {
    const size_t n = std::min<size_t>(d.bucketAdds.size() - i, 8192);
    std::vector<kst_bucket_key> keys(n);
    std::vector<uint32_t> marks(n);
    for (size_t j = 0; j < n; ++j) {
      const auto& b = d.bucketAdds[i + j];
      auto a = bpf::mapKey(b.vip);
      std::memcpy(keys[j].vip, a.data(), 16);
      keys[j].bucket = b.bucket;
      marks[j] = b.mark;
    }
    uint32_t count = uint32_t(n);
    DECLARE_LIBBPF_OPTS(bpf_map_batch_opts, bo, .elem_flags = BPF_ANY);
    if (bpf_map_update_batch(m.buckets.fd, keys.data(), marks.data(), &count, &bo) != 0)
      return errnoFail(errno, "bucket batch update");
    i += n;
  }
  for (auto& c : d.countAdds)
    KST_TRY((editFlags<kst_vip_key, kst_vip_val>(m.vips.fd, vipKey(c.vip), KST_VIP_COUNT, 0,
                                                 [&](kst_vip_val& v) { v.buckets = c.buckets; })));
  for (auto& e : d.endpointAdds) {
    auto k = slotKey(e.vip, e.mark);
    KST_TRY((editFlags<kst_slot_key, kst_slot_val>(
        m.slots.fd, k, KST_SLOT_ENDPOINT, 0, [&](kst_slot_val& v) {
          auto a = bpf::mapKey(e.endpoint);
          std::memcpy(v.endpoint, a.data(), 16);
          v.v4 = e.endpoint.isV4() ? 1 : 0;
          std::memset(v.src, 0, sizeof(v.src));
          if (headerPath()) {
            auto src = outerSource(e.endpoint);
            std::memcpy(v.src, src.data(), 16);
          }
        })));
    KST_TRY(put(m.epstats.fd, &k, zeroEp.data()));  // a new endpoint's counter starts at zero
  }
  for (auto& v : d.rangedAdds)
    KST_TRY((editFlags<kst_vip_key, kst_vip_val>(m.vips.fd, vipKey(v), KST_VIP_RANGED, 0, noop)));
  for (auto& r : d.rangeAdds) {
    kst_src_val val{};
    auto f = bpf::mapKey(r.src.first), l = bpf::mapKey(r.src.last);
    std::memcpy(val.first, f.data(), 16);
    std::memcpy(val.last, l.data(), 16);
    for (auto& k : rangeKeys(r)) KST_TRY(put(m.sources.fd, &k, &val));
  }
  for (auto& v : d.vipAdds) {
    auto k = vipKey(v);
    KST_TRY(put(m.vipstats.fd, &k, zeroVip.data(), BPF_NOEXIST));
    KST_TRY((editFlags<kst_vip_key, kst_vip_val>(m.vips.fd, k, KST_VIP_SET, 0, noop)));
  }
  return refreshConfig(m);
}

namespace {

/** One pinned map of ours, opened for reading; an error unless its key and value sizes are
 *  this build's (a lookup copies the map's value size into our buffer). */
Result<Fd> openPinned(const std::string& pinDir, const char* name, uint32_t keySize,
                      uint32_t valueSize) {
  const std::string path = pinDir + "/" + name;
  if (access((pinDir + "/config").c_str(), F_OK) != 0)
    return fail(ENOENT, fmt::format("bpf: no program of the daemon pinned under {} (not a router "
                                    "with --datapath bpf, or another --bpf-pin-dir?)", pinDir));
  Fd fd(bpf_obj_get(path.c_str()));
  if (fd.fd < 0) return errnoFail(errno, "open " + path);
  bpf_map_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd.fd, &info, &len) != 0) return errnoFail(errno, "map info " + path);
  if (info.key_size != keySize || info.value_size != valueSize)
    return fail(EINVAL, fmt::format("bpf: {} is not a map of this build's layout (key {} value {} "
                                    "bytes, not {} and {})", path, info.key_size, info.value_size,
                                    keySize, valueSize));
  return fd;
}

Result<kst_config> readConfig(const std::string& pinDir) {
  auto fd = openPinned(pinDir, "config", sizeof(uint32_t), sizeof(kst_config));
  if (!fd) return std::unexpected(fd.error());
  uint32_t zero = 0;
  kst_config c{};
  if (bpf_map_lookup_elem(fd->fd, &zero, &c) != 0) return errnoFail(errno, "read config");
  return c;
}

}  // namespace

Result<dp::ClassifierHashes> BpfInspector::classifier(Family family) {
  auto c = readConfig(pinDir_);
  if (!c) return std::unexpected(c.error());
  auto vips = openPinned(pinDir_, "vips", sizeof(kst_vip_key), sizeof(kst_vip_val));
  if (!vips) return std::unexpected(vips.error());
  std::set<uint32_t> counts;
  Status s = forEach<kst_vip_key>(vips->fd, sizeof(kst_vip_val),
                                  [&](const kst_vip_key& k, const uint8_t* raw) {
                                    kst_vip_val v;
                                    std::memcpy(&v, raw, sizeof(v));
                                    if ((v.flags & KST_VIP_COUNT) &&
                                        bpf::fromMapKey(k.addr).family() == family)
                                      counts.insert(v.buckets);
                                  });
  if (!s) return std::unexpected(s.error());
  return bpf::classifierHashes(family, c->seed, counts);
}

Result<std::optional<uint32_t>> BpfInspector::flowMark(Family family, std::span<const uint8_t> key) {
  auto k = bpf::flowMapKey(family, key);
  if (!k) return fail(EINVAL, "bpf: not a flow key of the program's (saddr . daddr . ports)");
  auto c = readConfig(pinDir_);
  if (!c) return std::unexpected(c.error());
  auto flows = openPinned(pinDir_, "flows", sizeof(kst_flow_key), sizeof(kst_flow_val));
  if (!flows) return std::unexpected(flows.error());
  kst_flow_val v{};
  if (bpf_map_lookup_elem(flows->fd, k->data(), &v) != 0) {
    if (errno == ENOENT) return std::optional<uint32_t>();
    return errnoFail(errno, "flow lookup");
  }
  if (!bpf::pinValid(v.seen_ns, monotonicNs(), c->flow_timeout_ns)) return std::optional<uint32_t>();
  return std::optional<uint32_t>(v.mark);
}

Result<dp::NftCounterSnapshot> BpfClassifier::readCounters() {
  dp::NftCounterSnapshot snap;
  if (access((opts_.pinDir + "/config").c_str(), F_OK) != 0) return snap;
  auto m = openMaps();
  if (!m) return std::unexpected(m.error());
  snap.flowLimit = cfg_.flowTableSize;
  Status s = forEach<kst_vip_key>(
      m->vipstats.fd, perCpuSize(sizeof(kst_vip_counter)),
      [&](const kst_vip_key& k, const uint8_t* raw) {
        auto v = sumPerCpu<kst_vip_counter>(raw);
        IpAddress vip = bpf::fromMapKey(k.addr);
        snap.vip[vip] = {v.packets, v.bytes};
        snap.refusedByVip[vip] = {v.refused_packets, v.refused_bytes};
      });
  if (!s) return std::unexpected(s.error());
  std::map<std::pair<IpAddress, uint32_t>, IpAddress> endpointOf;
  s = forEach<kst_slot_key>(m->slots.fd, sizeof(kst_slot_val),
                            [&](const kst_slot_key& k, const uint8_t* raw) {
                              kst_slot_val v;
                              std::memcpy(&v, raw, sizeof(v));
                              if (v.flags & KST_SLOT_ENDPOINT)
                                endpointOf[{bpf::fromMapKey(k.vip), k.mark}] =
                                    bpf::fromMapKey(v.endpoint);
                            });
  if (!s) return std::unexpected(s.error());
  s = forEach<kst_slot_key>(m->epstats.fd, perCpuSize(sizeof(kst_counter)),
                            [&](const kst_slot_key& k, const uint8_t* raw) {
                              auto it = endpointOf.find({bpf::fromMapKey(k.vip), k.mark});
                              if (it == endpointOf.end()) return;
                              auto v = sumPerCpu<kst_counter>(raw);
                              auto& c = snap.endpoint[{it->first.first, it->second}];
                              c.packets += v.packets;
                              c.bytes += v.bytes;
                            });
  if (!s) return std::unexpected(s.error());
  std::vector<uint8_t> raw(perCpuSize(sizeof(kst_counter)));
  const char* reasons[KST_REFUSED_REASONS] = {"no_bucket", "source_range"};
  for (uint32_t r = 0; r < KST_REFUSED_REASONS; ++r) {
    if (bpf_map_lookup_elem(m->totals.fd, &r, raw.data()) != 0)
      return errnoFail(errno, "read refused counters");
    auto v = sumPerCpu<kst_counter>(raw.data());
    snap.refused[reasons[r]] = {v.packets, v.bytes};
  }
  const uint32_t nf = KST_TOTAL_NEW_FLOWS;
  if (bpf_map_lookup_elem(m->totals.fd, &nf, raw.data()) != 0)
    return errnoFail(errno, "read the new-flow counter");
  snap.newFlows = sumPerCpu<kst_counter>(raw.data()).packets;
  // Flow pins that are still valid by age (an LRU map keeps expired ones until it needs room).
  const uint64_t now = monotonicNs(), timeout = uint64_t(cfg_.flowTimeoutSeconds) * 1000000000ull;
  s = forEach<kst_flow_key>(m->flows.fd, sizeof(kst_flow_val),
                            [&](const kst_flow_key& k, const uint8_t* raw) {
                              kst_flow_val v;
                              std::memcpy(&v, raw, sizeof(v));
                              if (!bpf::pinValid(v.seen_ns, now, timeout)) return;
                              ++(k.v4 ? snap.flows4 : snap.flows6);
                            });
  if (!s) return std::unexpected(s.error());
  return snap;
}

}  // namespace kst
