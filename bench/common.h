// Shared helpers of the benchmarks: synthetic models, trials in private network namespaces,
// timing and medians. Everything a benchmark creates lives in a namespace it owns: a trial
// runs in a forked child that unshare()s a fresh network namespace, so the namespace (and
// every kernel object in it) disappears when the child exits, also on failure.
#pragma once

#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "desired/config.h"
#include "model/model.h"

namespace kb {

using Clock = std::chrono::steady_clock;

inline double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/** Nearest-rank percentile, p in [0, 100]. */
inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

/** VIP i: 100.64.0.0 + i (CGNAT space, only ever inside the benchmark's own namespaces). */
inline kst::IpAddress vipOf(uint32_t i) { return kst::IpAddress::fromV4(htonl(0x64400000u + i)); }
/** Endpoint j of VIP i (all distinct: E·V nexthops): 10.0.0.0 + i·E + j + 1. */
inline kst::IpAddress endpointOf(uint32_t i, uint32_t j, uint32_t e, uint32_t shift = 0) {
  return kst::IpAddress::fromV4(htonl(0x0a000000u + i * e + j + 1 + shift));
}

inline kst::TunnelService benchService(uint32_t i, uint32_t e) {
  kst::TunnelService s;
  s.key = {"bench", fmt::format("svc-{}", i)};
  s.vip = vipOf(i);
  for (uint32_t j = 0; j < e; ++j) s.endpoints.push_back({endpointOf(i, j, e), "n1", true, false, ""});
  return s;
}

/** V services with E distinct endpoints each, sorted by VIP (as buildModel returns them). */
inline kst::Model benchModel(uint32_t v, uint32_t e) {
  kst::Model m;
  m.services.reserve(v);
  for (uint32_t i = 0; i < v; ++i) m.services.push_back(benchService(i, e));
  std::sort(m.services.begin(), m.services.end(), [](auto& a, auto& b) { return a.vip < b.vip; });
  return m;
}

/** The EndpointSlice of service i (E endpoints; endpoint 0 replaced by `first` if set). */
inline kst::EndpointSliceObject benchSlice(uint32_t i, uint32_t e,
                                           std::optional<kst::IpAddress> first = std::nullopt) {
  kst::EndpointSliceObject sl;
  sl.key = {"bench", fmt::format("svc-{}-a", i)};
  sl.serviceName = fmt::format("svc-{}", i);
  sl.addressType = "IPv4";
  for (uint32_t j = 0; j < e; ++j) {
    kst::SliceEndpoint se;
    se.address = (j == 0 && first ? *first : endpointOf(i, j, e)).str();
    se.nodeName = "n1";
    sl.endpoints.push_back(se);
  }
  return sl;
}

/** The cluster objects behind benchModel(v, e): V annotated Services, one slice each. */
inline kst::ClusterObjects benchObjects(uint32_t v, uint32_t e) {
  kst::ClusterObjects o;
  for (uint32_t i = 0; i < v; ++i) {
    kst::ServiceObject s;
    s.key = {"bench", fmt::format("svc-{}", i)};
    s.uid = fmt::format("uid-{}", i);
    s.creationTimestamp = "2026-01-01T00:00:00Z";
    s.annotations["cmd.nu/tunnel"] = vipOf(i).str();
    o.services.emplace(s.key, s);
    auto sl = benchSlice(i, e);
    o.slices.emplace(sl.key, std::move(sl));
  }
  return o;
}

inline kst::DataplaneConfig benchConfig(uint32_t buckets) {
  kst::DataplaneConfig cfg;
  cfg.buckets = buckets;
  return cfg;
}

/** Runs fn in a forked child inside a fresh, unnamed network namespace (lo up). The child's
 *  standard output is returned; an exit status other than 0 is reported on stderr and gives
 *  an empty string. */
inline std::string inFreshNetns(const std::function<int()>& fn) {
  int p[2];
  if (pipe(p) != 0) return {};
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    dup2(p[1], 1);
    close(p[1]);
    if (unshare(CLONE_NEWNET) != 0) {
      perror("unshare(CLONE_NEWNET)");
      _exit(2);
    }
    if (system("ip link set lo up") != 0) _exit(2);
    int rc = fn();
    fflush(stdout);
    // Remove the objects now (not timed) instead of leaving them to the kernel's asynchronous
    // namespace cleanup, which would run during the next trial.
    if (system("ip nexthop flush >/dev/null 2>&1; nft flush ruleset >/dev/null 2>&1") != 0) {
    }
    _exit(rc);
  }
  close(p[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(p[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "trial failed (status %d): %s\n", st, out.c_str());
    return {};
  }
  return out;
}

/** Parses "key=value" words of a trial's output line. */
inline double field(const std::string& out, const std::string& key, double dflt = -1) {
  auto pos = out.find(key + "=");
  if (pos == std::string::npos) return dflt;
  return std::atof(out.c_str() + pos + key.size() + 1);
}

inline int run(const std::string& cmd) {
  int st = system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

inline std::string capture(const std::string& cmd) {
  std::string out;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  pclose(f);
  return out;
}

inline double loadAverage1() {
  double l = 0;
  std::ifstream("/proc/loadavg") >> l;
  return l;
}

}  // namespace kb
