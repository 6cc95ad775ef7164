// End-to-end harness for privileged tests: namespaces from scripts/lib/topo.sh, the real
// daemon binary started inside them, real traffic from kst-testtool. Every namespace, file and
// process is named with a per-test prefix and removed in TearDown, also when a test fails.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/watchdog.h"

namespace kst::e2e {

inline const std::string kBin = KST_BINARY_DIR "/src/kube-service-tunnel";
inline const std::string kTool = KST_BINARY_DIR "/tests/kst-testtool";
inline const std::string kTopo = KST_SOURCE_DIR "/scripts/lib/topo.sh";

/** The router datapath under test: KST_TEST_DATAPATH=bpf (CTest's "privileged;bpf" variants)
 *  starts every router of the harness with `--datapath bpf`; unset or "nft": the nft table. */
inline bool bpfDatapath() {
  const char* v = std::getenv("KST_TEST_DATAPATH");
  return v && std::string(v) == "bpf";
}
/** The agents' pod-side decapsulation under test: KST_TEST_POD_DECAP=bpf adds `--pod-decap bpf`
 *  to every agent of the harness. */
inline bool bpfPodDecap() {
  const char* v = std::getenv("KST_TEST_POD_DECAP");
  return v && std::string(v) == "bpf";
}

struct Cmd {
  int rc;
  std::string out;
};

inline Cmd sh(const std::string& cmd, bool withStderr = true) {
  kst::testing::noteStep("sh: " + cmd);
  std::string full = cmd + (withStderr ? " 2>&1" : " 2>/dev/null");
  FILE* f = popen(full.c_str(), "r");
  if (!f) return {-1, "popen failed"};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  int st = pclose(f);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

inline std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> v;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) v.push_back(l);
  return v;
}

inline bool waitUntil(const std::function<bool()>& fn, double seconds = 10) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(int(seconds * 1000));
  while (std::chrono::steady_clock::now() < end) {
    if (fn()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return fn();
}

/** A background process (usually `ip netns exec NS ...`) with its output in a log file. */
class Process {
 public:
  Process() = default;
  Process(const std::vector<std::string>& argv, const std::string& log) : log_(log) {
    std::string line = "start:";
    for (auto& a : argv) line += " " + a;
    kst::testing::noteStep(line);
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      FILE* f = fopen(log.c_str(), "a");
      if (f) {
        dup2(fileno(f), 1);
        dup2(fileno(f), 2);
      }
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
      a.push_back(nullptr);
      execvp(a[0], a.data());
      _exit(127);
    }
  }
  Process(Process&& o) noexcept : pid_(o.pid_), log_(std::move(o.log_)) { o.pid_ = -1; }
  Process& operator=(Process&& o) noexcept {
    stop();
    pid_ = o.pid_;
    log_ = std::move(o.log_);
    o.pid_ = -1;
    return *this;
  }
  ~Process() { stop(); }
  /** SIGTERM, then SIGKILL after a grace period. @return exit status or -1. */
  int stop(int sig = SIGTERM) {
    if (pid_ <= 0) return -1;
    kill(-pid_, sig);
    int st = 0;
    for (int i = 0; i < 100; ++i) {
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(-pid_, SIGKILL);
    waitpid(pid_, &st, 0);
    pid_ = -1;
    return -1;
  }
  /** Waits for the process to exit by itself. @return exit status, or -1 on timeout. */
  int wait(double seconds) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(int(seconds * 1000));
    int st = 0;
    while (pid_ > 0 && std::chrono::steady_clock::now() < end) {
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }
  bool running() {
    if (pid_ <= 0) return false;
    if (waitpid(pid_, nullptr, WNOHANG) == 0) return true;
    pid_ = -1;  // reaped: never signal this pid (or its group) again, it may be reused
    return false;
  }
  std::string log() const {
    std::ifstream f(log_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

/** Base fixture: topology + manifests dir + daemons. */
class E2E : public ::testing::Test {
 protected:
  std::string prefix;  // short: namespaces are PREFIX-rt, PREFIX-p1a, ...
  std::string dir;     // temp dir for manifests and logs
  std::string manifests;
  std::map<std::string, Process> procs;

  void SetUp() override {
    if (getuid() != 0) GTEST_SKIP() << "needs root (CTest label privileged)";
    usePrefix("ke");
  }
  /** Names everything this test creates (namespaces, links, /tmp/PREFIX) with stem + pid:
   *  a suite with its own stem calls it again after E2E::SetUp(). */
  void usePrefix(const std::string& stem) {
    if (!dir.empty()) std::filesystem::remove_all(dir);
    prefix = stem + std::to_string(getpid() % 100000);
    dir = "/tmp/" + prefix;
    manifests = dir + "/manifests";
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(manifests);
  }
  void TearDown() override {
    for (auto& [name, p] : procs) {
      p.stop();
      if (HasFailure()) std::cerr << "---- log of " << name << " ----\n" << p.log() << "\n";
    }
    procs.clear();
    if (!prefix.empty()) sh(kTopo + " down " + prefix);
    // The bpf routers' pins (their programs went with the namespaces): lazily, in case a
    // command still holds the filesystem.
    if (!bpffsMount_.empty()) umount2(bpffsMount_.c_str(), MNT_DETACH);
    bpffsMount_.clear();
    if (!dir.empty()) std::filesystem::remove_all(dir);
  }

  std::string ns(const std::string& n) const { return prefix + "-" + n; }
  Cmd in(const std::string& n, const std::string& cmd) const {
    return sh("ip netns exec " + ns(n) + " " + cmd);
  }
  /** Standard output only (for JSON). */
  std::string out(const std::string& n, const std::string& cmd) const {
    return sh("ip netns exec " + ns(n) + " " + cmd, false).out;
  }
  /** Loads an nft script into a namespace. */
  int nftLoad(const std::string& n, const std::string& script) {
    std::string f = dir + "/load.nft";
    std::ofstream(f) << script;
    return in(n, "nft -f " + f).rc;
  }
  void topology(int podsPerNode = 2, int routers = 1) {
    auto r = sh(kTopo + " up " + prefix + " " + std::to_string(podsPerNode) + " " +
                std::to_string(routers));
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  void serve(const std::string& pod) {
    procs[pod] = Process({"ip", "netns", "exec", ns(pod), kTool, "serve", pod, "8080"},
                         dir + "/" + pod + ".log");
  }
  void writeManifest(const std::string& name, const std::string& yaml) {
    std::string tmp = manifests + "/." + name + ".tmp";
    {
      std::ofstream f(tmp);
      f << yaml;
    }
    std::filesystem::rename(tmp, manifests + "/" + name);
  }
  void removeManifest(const std::string& name) { std::filesystem::remove(manifests + "/" + name); }

  /** The VIP pools of every test VIP (the daemon is default-deny): topo.sh's VIP ranges. */
  static std::vector<std::string> vipPoolFlags() {
    return {"--vip-pool", "203.0.113.0/24", "--vip-pool", "2001:db8:ffff::/64"};
  }
  std::vector<std::string> commonFlags(const std::string& mode = "vxlan-gpe") const {
    return {"--manifests", manifests, "--mode", mode, "--resync-interval", "5",
            "--log-level", "debug"};
  }
  /** The pin directory of router n's bpf datapath: in a bpffs the test mounts under its own
   *  directory (a bpffs at /sys/fs/bpf would not outlive the daemon: `ip netns exec` mounts a
   *  fresh /sys for each command). */
  std::string bpfPinDir(const std::string& n) {
    if (bpffsMount_.empty()) {
      const std::string m = dir + "/bpffs";
      std::filesystem::create_directories(m);
      if (mount("bpf", m.c_str(), "bpf", 0, "mode=0700") != 0)
        ADD_FAILURE() << "mount bpffs at " << m << ": " << std::strerror(errno);
      bpffsMount_ = m;
    }
    return bpffsMount_ + "/" + n;
  }
  /** The router's datapath flags (`run`, `cleanup`, `status`, `explain` of router n): empty for
   *  nft, `--datapath bpf --bpf-pin-dir …` under KST_TEST_DATAPATH=bpf. */
  std::vector<std::string> datapathFlags(const std::string& n) {
    if (!bpfDatapath()) return {};
    return {"--datapath", "bpf", "--bpf-pin-dir", bpfPinDir(n)};
  }
  /** datapathFlags as a command line tail (" --datapath bpf …" or ""). */
  std::string datapathArgs(const std::string& n) {
    std::string s;
    for (auto& f : datapathFlags(n)) s += " " + f;
    return s;
  }
  void startRouter(const std::string& n = "rt", std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{"ip", "netns", "exec", ns(n), kBin, "run", "--role", "router"};
    for (auto& f : commonFlags()) argv.push_back(f);
    for (auto& f : vipPoolFlags()) argv.push_back(f);
    // A test that chooses the datapath itself (bpf_datapath_test) keeps its choice.
    if (std::find(extra.begin(), extra.end(), "--datapath") == extra.end())
      for (auto& f : datapathFlags(n)) argv.push_back(f);
    for (auto& f : extra) argv.push_back(f);
    procs[n] = Process(argv, dir + "/" + n + ".log");
  }
  void startAgent(int node, std::vector<std::string> extra = {}) {
    std::string n = "n" + std::to_string(node);
    // Agents take the same pools from the environment, as the DaemonSets do (a ConfigMap
    // value may hold several, separated by spaces or newlines).
    std::vector<std::string> argv{"ip", "netns", "exec", ns(n), "env",
                                  "TUNNEL_VIP_POOLS=203.0.113.0/24\n 2001:db8:ffff::/64", kBin,
                                  "run", "--role", "agent",
                                  "--node-name", "node" + std::to_string(node), "--scan-proc=false",
                                  "--netns-dir", "/run/kst-netns/" + prefix + "/" + n};
    for (auto& f : commonFlags()) argv.push_back(f);
    if (bpfPodDecap()) {
      argv.push_back("--pod-decap");
      argv.push_back("bpf");
    }
    for (auto& f : extra) argv.push_back(f);
    procs[n] = Process(argv, dir + "/" + n + ".log");
  }

  /** Answers of COUNT TCP connections from the client to VIP:8080: "podname clientip". */
  std::vector<std::string> tcp(const std::string& vip, int count, int srcBase = 0) {
    auto r = in("cl", kTool + " tcp " + vip + " 8080 " + std::to_string(count) +
                          (srcBase ? " " + std::to_string(srcBase) : ""));
    return lines(r.out);
  }
  /** size > 0: datagrams of that many bytes, not to be fragmented on the way (DF). */
  std::vector<std::string> udp(const std::string& vip, int count, int size = 0) {
    return lines(in("cl", kTool + " udp " + vip + " 8080 " + std::to_string(count) +
                              (size > 0 ? " " + std::to_string(size) : "")).out);
  }
  /** Waits until COUNT probes to the VIP all succeed. */
  bool reachable(const std::string& vip, double seconds = 10) {
    return waitUntil([&] {
      auto a = tcp(vip, 4);
      for (auto& l : a)
        if (l == "FAIL") return false;
      return a.size() == 4;
    }, seconds);
  }
  /** Owned kernel objects in a namespace, one line each (for "nothing left behind"). */
  std::string owned(const std::string& n) const {
    std::string out;
    out += in(n, "ip -o link show | grep -E ': kst' || true").out;
    out += in(n, "ip nexthop show proto 211 2>/dev/null || true").out;
    out += in(n, "ip -4 rule show | grep 'proto 211' || true").out;
    out += in(n, "ip -6 rule show | grep 'proto 211' || true").out;
    out += in(n, "ip -4 route show table all proto 211 || true").out;
    out += in(n, "ip -6 route show table all proto 211 || true").out;
    out += in(n, "ip -o addr show proto 211 2>/dev/null || true").out;
    out += in(n, "nft list tables | grep kube_service_tunnel || true").out;
    // The bpf datapath's: our filter on any interface's ingress, our pins.
    out += in(n, "sh -c 'for d in $(ls /sys/class/net); do tc filter show dev $d ingress; done' "
                 "| grep kst_router || true").out;
    if (!bpffsMount_.empty()) out += sh("ls -A " + bpffsMount_ + "/" + n + " 2>/dev/null || true").out;
    return out;
  }

  // ---- the router's classifier state, read the same way for both datapaths: nft's maps and
  // sets (`nft -j list`), or the bpf program's pinned maps (`bpftool -j map dump`, BTF-formatted).

  /** The formatted {key, value} entries of one pinned map of router n's program ([] if none). */
  nlohmann::json bpfDump(const std::string& n, const std::string& map) {
    auto j = nlohmann::json::parse(
        sh("bpftool -j map dump pinned " + bpfPinDir(n) + "/" + map, false).out, nullptr, false);
    nlohmann::json out = nlohmann::json::array();
    if (!j.is_array()) return out;
    for (auto& e : j)
      if (e.contains("formatted")) out.push_back(e["formatted"]);
    return out;
  }
  /** A 16-byte map address (IPv4 mapped) as text. */
  static std::string bpfAddress(const nlohmann::json& bytes) {
    uint8_t b[16] = {};
    for (size_t i = 0; i < 16 && i < bytes.size(); ++i) b[i] = bytes[i].get<uint8_t>();
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    char buf[INET6_ADDRSTRLEN] = {};
    if (std::memcmp(b, mapped, 12) == 0) inet_ntop(AF_INET, b + 12, buf, sizeof buf);
    else inet_ntop(AF_INET6, b, buf, sizeof buf);
    return buf;
  }
  /** Elements [key, data] of one of the router's nft maps or sets ([] if none). */
  nlohmann::json nftElements(const std::string& n, const std::string& what, const std::string& name) {
    auto doc = nlohmann::json::parse(
        out(n, "nft -j list " + what + " inet kube_service_tunnel " + name), nullptr, false);
    nlohmann::json out = nlohmann::json::array();
    if (doc.is_discarded() || !doc.contains("nftables")) return out;
    for (auto& item : doc["nftables"])
      if (item.contains(what) && item[what].contains("elem"))
        for (auto& e : item[what]["elem"]) out.push_back(e);
    return out;
  }
  /** VIP → (bucket → slot mark) of router n, one family. */
  std::map<std::string, std::map<uint32_t, uint32_t>> bucketMarks(const std::string& n, bool v6 = false) {
    std::map<std::string, std::map<uint32_t, uint32_t>> m;
    if (bpfDatapath()) {
      for (auto& e : bpfDump(n, "buckets")) {
        std::string vip = bpfAddress(e["key"]["vip"]);
        if ((vip.find(':') != std::string::npos) == v6)
          m[vip][e["key"]["bucket"].get<uint32_t>()] = e["value"].get<uint32_t>();
      }
      return m;
    }
    for (auto& e : nftElements(n, "map", v6 ? "b2s6" : "b2s4"))
      if (e.is_array() && e.size() == 2 && e[0].contains("concat") && e[1].is_number())
        m[e[0]["concat"][0].get<std::string>()][e[0]["concat"][1].get<uint32_t>() - 0x40000000] =
            e[1].get<uint32_t>();
    return m;
  }
  /** VIP → its bucket count (the count element: nft's bcount map, the program's vips map). */
  std::map<std::string, uint32_t> bucketCounts(const std::string& n, bool v6 = false) {
    std::map<std::string, uint32_t> m;
    if (bpfDatapath()) {
      for (auto& e : bpfDump(n, "vips")) {
        std::string vip = bpfAddress(e["key"]["addr"]);
        if ((vip.find(':') != std::string::npos) == v6 && (e["value"]["flags"].get<uint32_t>() & 2))
          m[vip] = e["value"]["buckets"].get<uint32_t>();
      }
      return m;
    }
    for (auto& e : nftElements(n, "map", v6 ? "bcount6" : "bcount4"))
      if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_number())
        m[e[0].get<std::string>()] = e[1].get<uint32_t>() & 0x7fffffff;
    return m;
  }
  /** Slot mark → how many flow pins of router n (one family) point at it. */
  std::map<uint32_t, size_t> flowPins(const std::string& n, bool v6 = false) {
    std::map<uint32_t, size_t> m;
    if (bpfDatapath()) {
      for (auto& e : bpfDump(n, "flows"))
        if ((e["key"]["v4"].get<uint32_t>() == 0) == v6) ++m[e["value"]["mark"].get<uint32_t>()];
      return m;
    }
    for (auto& e : nftElements(n, "map", v6 ? "flow6" : "flow4"))
      if (e.is_array() && e.size() == 2 && e[1].is_number()) ++m[e[1].get<uint32_t>()];
    return m;
  }
  /** Whether (VIP, mark) is a live slot of router n (flow pins to it are followed). */
  bool liveSlot(const std::string& n, const std::string& vip, uint32_t mark) {
    if (bpfDatapath()) {
      for (auto& e : bpfDump(n, "slots"))
        if (bpfAddress(e["key"]["vip"]) == vip && e["key"]["mark"].get<uint32_t>() == mark)
          return e["value"]["flags"].get<uint32_t>() & 1;
      return false;
    }
    const bool v6 = vip.find(':') != std::string::npos;
    char key[80];
    std::snprintf(key, sizeof key, "%s . 0x%08x", vip.c_str(), mark);
    return out(n, std::string("nft list set inet kube_service_tunnel ") + (v6 ? "live6" : "live4"))
               .find(key) != std::string::npos;
  }
  /** Router n's bpf datapath as a restart must leave it: the program attached to each ingress
   *  (its id) and the contents of the maps the reconciler owns; "" for nft (`nft monitor`
   *  watches that table). */
  std::string bpfProgrammed(const std::string& n) {
    if (!bpfDatapath()) return "";
    std::string s = in(n, "sh -c 'for d in $(ls /sys/class/net); do echo $d; tc filter show dev $d "
                          "ingress; done'").out;
    for (auto map : {"config", "vips", "buckets", "slots", "sources"}) {
      std::vector<std::string> rows;
      for (auto& e : bpfDump(n, map)) rows.push_back(e.dump());
      std::sort(rows.begin(), rows.end());
      s += std::string(map) + ":\n";
      for (auto& r : rows) s += r + "\n";
    }
    return s;
  }

 private:
  std::string bpffsMount_;  // mounted by bpfPinDir, removed in TearDown
};

inline std::string serviceYaml(const std::string& name, const std::string& vip,
                               const std::string& created = "2026-01-01T00:00:00Z") {
  return "apiVersion: v1\nkind: Service\nmetadata:\n  name: " + name +
         "\n  namespace: default\n  creationTimestamp: \"" + created +
         "\"\n  annotations:\n    cmd.nu/tunnel: \"" + vip + "\"\n";
}

struct Ep {
  std::string ip;
  std::string node;
  bool ready = true;
  bool serving = true;
  bool terminating = false;
};

inline std::string sliceYaml(const std::string& service, const std::string& family,
                             const std::vector<Ep>& eps, const std::string& suffix = "a") {
  std::string y = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: " +
                  service + "-" + suffix +
                  "\n  namespace: default\n  labels:\n    kubernetes.io/service-name: " + service +
                  "\naddressType: " + family + "\nendpoints:\n";
  for (auto& e : eps) {
    y += "- addresses: [\"" + e.ip + "\"]\n  nodeName: " + e.node + "\n  conditions:\n";
    y += std::string("    ready: ") + (e.ready ? "true" : "false") + "\n";
    y += std::string("    serving: ") + (e.serving ? "true" : "false") + "\n";
    y += std::string("    terminating: ") + (e.terminating ? "true" : "false") + "\n";
  }
  return y;
}

}  // namespace kst::e2e
