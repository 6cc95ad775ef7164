// Helpers for the VM end-to-end tests (tests/vm/modes_test.cpp), on top of the host harness
// (tests/privileged/harness.h, used unchanged). Under TCG every fork+exec costs 25-50 ms, so
// the helpers batch shell commands into one `sh -c` and read kernel state with `ip -n` (one
// exec) rather than `ip netns exec NS ip ...` (two).
#pragma once

#include <fcntl.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "privileged/harness.h"

namespace kst::e2e {

inline bool inVm() { return std::getenv("KST_IN_VM") != nullptr; }

/** The router-side name of the per-endpoint GRE link for an IPv4 endpoint with the default
 *  prefix: "kst" + the address in hex (desired/router.cpp greLinkName). */
inline std::string greLinkFor(const std::string& v4) {
  unsigned a, b, c, d;
  if (std::sscanf(v4.c_str(), "%u.%u.%u.%u", &a, &b, &c, &d) != 4) return "?";
  char buf[16];
  std::snprintf(buf, sizeof buf, "%02x%02x%02x%02x", a, b, c, d);
  return std::string("kst") + buf;
}

/** E2E with "kv" namespaces and daemons started with an explicit --mode. */
class VmE2E : public E2E {
 protected:
  int starts_ = 0;

  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    usePrefix("kv");
  }

  // ---- topology: a few `ip -batch` runs instead of topo.sh's ~100 execs -------------------
  std::vector<std::string> nsCreated_;
  std::vector<std::string> rootBatch_;
  std::map<std::string, std::vector<std::string>> nsBatch_;

  /** Queues a namespace (lo up) for build(). */
  void addNs(const std::string& n) {
    nsCreated_.push_back(n);
    nsBatch_[n].push_back("link set lo up");
  }
  /** Queues a veth pair: ifA in a, ifB in b, both set up. */
  void addVeth(const std::string& a, const std::string& ifA, const std::string& b,
               const std::string& ifB) {
    rootBatch_.push_back("link add " + ifA + " netns " + ns(a) + " type veth peer name " + ifB +
                         " netns " + ns(b));
    nsBatch_[a].push_back("link set " + ifA + " up");
    nsBatch_[b].push_back("link set " + ifB + " up");
  }
  void batch(const std::string& n, const std::string& line) { nsBatch_[n].push_back(line); }
  /** Runs the queued batches: one exec for the root namespace and one per namespace. */
  void build() {
    std::vector<std::string> add;
    for (auto& n : nsCreated_) add.push_back("netns add " + ns(n));
    auto r = sh(batchFile("netns", add, ""));
    ASSERT_EQ(r.rc, 0) << r.out;
    // Before any interface exists: no IPv6 DAD, so no address event arrives seconds later
    // (while a test watches for kernel changes), as in topo.sh.
    for (auto& n : nsCreated_)
      for (auto k : {"all", "default"})
        ASSERT_NO_FATAL_FAILURE(sysctl(n, std::string("net/ipv6/conf/") + k + "/accept_dad", "0"));
    std::string script = "set -e\n" + batchFile("root", rootBatch_, "");
    for (auto& n : nsCreated_) script += batchFile(n, nsBatch_[n], "-n " + ns(n) + " ");
    r = sh(script);
    ASSERT_EQ(r.rc, 0) << r.out;
    rootBatch_.clear();
    nsBatch_.clear();
  }
  std::string batchFile(const std::string& n, const std::vector<std::string>& ls,
                        const std::string& opt) {
    std::string f = dir + "/batch-" + n;
    std::ofstream out(f);
    for (auto& l : ls) out << l << "\n";
    return "ip " + opt + "-b " + f + "\n";
  }
  /** Writes a sysctl inside namespace n from a thread that entered it (no exec). */
  void sysctl(const std::string& n, const std::string& key, const std::string& value) {
    bool ok = false;
    std::thread([&] {
      int fd = open(("/run/netns/" + ns(n)).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return;
      if (setns(fd, CLONE_NEWNET) == 0) {
        std::ofstream f("/proc/sys/" + key);
        f << value;
        f.flush();
        ok = bool(f);
      }
      close(fd);
    }).join();
    ASSERT_TRUE(ok) << n << ": " << key << "=" << value;
  }
  /** Lists pod namespace ns(pod) in /run/kst-netns/PREFIX/<dir>: what that agent scans. */
  void agentSees(const std::string& agentDir, const std::string& pod) {
    std::string d = "/run/kst-netns/" + prefix + "/" + agentDir;
    std::filesystem::create_directories(d);
    std::filesystem::create_symlink("/run/netns/" + ns(pod), d + "/" + ns(pod));
  }

  /** scripts/lib/topo.sh's layout, built in ~12 execs:
   *    cl 198.18.0.10 / 2001:db8:f::10, rt .1 / ::1, n1 .11 / ::11, n2 .12 / ::12 on a bridge
   *    in fab; behind node I (1, 2) the pods pIa 198.19.I.2, pIb .3, pIc .4 (and 2001:db8:I::2,
   *    ::3, ::4); a pod's gateway is its node (198.19.I.1 on the node's lo, fe80::1 on the
   *    node's veth); the router routes 198.19.I.0/24 and 2001:db8:I::/64 via node I. */
  void nodesTopology() {
    for (auto n : {"fab", "cl", "rt", "n1", "n2", "p1a", "p1b", "p1c", "p2a", "p2b", "p2c"})
      addNs(n);
    batch("fab", "link add br0 type bridge");
    batch("fab", "link set br0 up");
    const std::map<std::string, std::string> fabHost{
        {"cl", "10"}, {"rt", "1"}, {"n1", "11"}, {"n2", "12"}};
    for (auto& [n, h] : fabHost) {
      addVeth(n, "eth0", "fab", "b-" + n);
      batch("fab", "link set b-" + n + " master br0");
      batch(n, "addr add 198.18.0." + h + "/24 dev eth0");
      batch(n, "addr add 2001:db8:f::" + h + "/64 dev eth0 nodad");
    }
    batch("cl", "route add 203.0.113.0/24 via 198.18.0.1");
    batch("cl", "route add 2001:db8:ffff::/64 via 2001:db8:f::1");
    for (auto i : {"1", "2"}) {
      std::string node = std::string("n") + i, net = std::string("198.19.") + i + ".",
                  net6 = std::string("2001:db8:") + i + "::";
      batch("rt", "route add " + net + "0/24 via 198.18.0.1" + i);
      batch("rt", "route add " + net6 + "/64 via 2001:db8:f::1" + i);
      batch(node, "addr add " + net + "1/32 dev lo");
      batch(node, "addr add " + net6 + "1/128 dev lo nodad");
      for (auto [letter, host] : {std::pair{"a", "2"}, std::pair{"b", "3"}, std::pair{"c", "4"}}) {
        std::string pod = std::string("p") + i + letter, v = std::string("v") + letter;
        addVeth(pod, "eth0", node, v);
        batch(node, "addr add fe80::1/64 dev " + v + " nodad");
        batch(node, "route add " + net + host + "/32 dev " + v);
        batch(node, "route add " + net6 + host + "/128 dev " + v);
        podAddress(pod, net + host, net + "1", net6 + host);
        agentSees(node, pod);
      }
    }
    ASSERT_NO_FATAL_FAILURE(build());
    for (auto n : {"rt", "n1", "n2"}) {
      ASSERT_NO_FATAL_FAILURE(sysctl(n, "net/ipv4/ip_forward", "1"));
      ASSERT_NO_FATAL_FAILURE(sysctl(n, "net/ipv6/conf/all/forwarding", "1"));
    }
    // Replies leave the nodes toward the client without passing the router (DSR).
    for (auto n : {"cl", "rt", "n1", "n2"})
      ASSERT_NO_FATAL_FAILURE(sysctl(n, "net/ipv4/conf/all/rp_filter", "0"));
  }
  /** A pod's addresses (/32, /128 on eth0) and routes (v4 via gw4, v6 via fe80::1). */
  void podAddress(const std::string& pod, const std::string& ip, const std::string& gw,
                  const std::string& ip6 = "") {
    batch(pod, "addr add " + ip + "/32 dev eth0");
    batch(pod, "route add " + gw + "/32 dev eth0");
    batch(pod, "route add default via " + gw + " dev eth0");
    if (!ip6.empty()) {
      batch(pod, "addr add " + ip6 + "/128 dev eth0 nodad");
      batch(pod, "route add default via fe80::1 dev eth0");
    }
  }

  void TearDown() override {
    for (auto& [name, p] : procs) p.stop();
    procs.clear();
    if (HasFailure() && !dir.empty()) {  // every log, also of daemons that were restarted
      std::vector<std::filesystem::path> logs;
      for (auto& e : std::filesystem::directory_iterator(dir))
        if (e.path().extension() == ".log") logs.push_back(e.path());
      std::sort(logs.begin(), logs.end());
      for (auto& f : logs) {
        std::ifstream in(f);
        std::cerr << "---- " << f.filename().string() << " ----\n" << in.rdbuf() << "\n";
      }
    }
    if (!nsCreated_.empty()) {
      std::vector<std::string> del;
      for (auto& n : nsCreated_) del.push_back("netns del " + ns(n));
      sh("ip -b " + [&] {
        std::string f = dir + "/batch-del";
        std::ofstream out(f);
        for (auto& l : del) out << l << "\n";
        return f;
      }());
      std::filesystem::remove_all("/run/kst-netns/" + prefix);
    }
    E2E::TearDown();  // topo.sh down: finds nothing left; removes dir
  }

  /** Starts `kube-service-tunnel run` in namespace n. Agents get NODE and scan only
   *  /run/kst-netns/PREFIX/<netnsDir> (the pods of that node). Each start logs to a new file,
   *  so "reconciled" in log() is this process's. */
  void startDaemon(const std::string& n, const std::string& role, const std::string& mode,
                   const std::string& node = "", const std::string& netnsDir = "",
                   const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv{"ip", "netns", "exec", ns(n), kBin, "run", "--role", role,
                                  "--manifests", manifests, "--mode", mode,
                                  "--resync-interval", "5", "--log-level", "debug",
                                  "--flow-timeout", "1",
                                  // The VIP ranges of the topology (the daemon is default-deny).
                                  "--vip-pool", "203.0.113.0/24", "--vip-pool", "2001:db8:ffff::/64"};
    if (!node.empty()) {
      for (std::string a : {std::string("--node-name"), node, std::string("--scan-proc=false"),
                            std::string("--netns-dir"),
                            "/run/kst-netns/" + prefix + "/" + netnsDir})
        argv.push_back(a);
    }
    for (auto& e : extra) argv.push_back(e);
    procs[n] = Process(argv, dir + "/" + n + "." + std::to_string(++starts_) + ".log");
  }

  /** `ip -n NS ARGS` (one exec). */
  Cmd ipn(const std::string& n, const std::string& args) const {
    return sh("ip -n " + ns(n) + " " + args);
  }

  /** Owned kernel objects per namespace: links named kst*; nexthops, rules, IPv4/IPv6 routes
   *  and MPLS label routes tagged proto 211; any address of the test's VIP ranges
   *  203.0.113.0/24 and 2001:db8:ffff::/64, also on lo (iproute2 6.1 can neither show nor filter IFA_PROTO); nft
   *  tables named kube_service_tunnel*. Five execs per namespace, in one shell: `ip -b` runs
   *  several listings per exec, and the filtering happens here, not in grep processes. */
  std::map<std::string, std::string> ownedAll(const std::vector<std::string>& names) const {
    std::string b4 = dir + "/owned4.batch", b6 = dir + "/owned6.batch";
    if (!std::filesystem::exists(b4)) {
      std::ofstream(b4) << "link show\nnexthop show\nrule show\nroute show table all\n"
                           "addr show\n";
      std::ofstream(b6) << "rule show\nroute show table all\n";
    }
    std::string script;
    for (auto& n : names) {
      std::string N = ns(n);
      script += "echo '@@" + n + "'; ip -o -n " + N + " -b " + b4 + "; ip -o -6 -n " + N +
                " -b " + b6 + "; ip -f mpls -n " + N + " route show; ip netns exec " + N +
                " nft list tables; ";
    }
    std::map<std::string, std::string> out;
    std::string cur;
    for (auto& l : lines(sh(script + "true", false).out)) {
      if (l.starts_with("@@")) {
        cur = l.substr(2);
        out[cur];
        continue;
      }
      bool mine = l.find(": kst") != std::string::npos ||              // links
                  l.find(" proto 211") != std::string::npos ||         // nh, rules, routes
                  l.find(" 203.0.113.") != std::string::npos ||        // VIP addresses
                  l.find(" 2001:db8:ffff:") != std::string::npos ||
                  l.find("table inet kube_service_tunnel") != std::string::npos;
      // `ip -o addr show` lines name the interface after the index ("5: kst-gre inet ..."),
      // which ": kst" already matched; a "link/..." continuation belongs to a link line.
      if (mine) out[cur] += l + "\n";
    }
    return out;
  }
  static std::string joined(const std::map<std::string, std::string>& m) {
    std::string s;
    for (auto& [n, v] : m)
      if (!v.empty()) s += "== " + n + "\n" + v;
    return s;
  }

  /** Reads /sys/class/net/DEV/statistics/WHAT for several (ns, dev) pairs in one shell.
   *  A missing device reads as 0. */
  std::map<std::string, uint64_t> counters(
      const std::vector<std::pair<std::string, std::string>>& nsDev, const std::string& what) {
    std::string script;
    for (auto& [n, dev] : nsDev)
      script += "ip netns exec " + ns(n) + " cat /sys/class/net/" + dev + "/statistics/" + what +
                " 2>/dev/null || echo 0; ";
    auto ls = lines(sh(script, false).out);
    std::map<std::string, uint64_t> out;
    for (size_t i = 0; i < nsDev.size(); ++i)
      out[nsDev[i].first + "/" + nsDev[i].second] = i < ls.size() ? std::stoull(ls[i]) : 0;
    return out;
  }
  static uint64_t sum(const std::map<std::string, uint64_t>& m) {
    uint64_t s = 0;
    for (auto& [k, v] : m) s += v;
    return s;
  }

  /** `ip -o monitor` of every rtnetlink object type the daemon writes (incl. MPLS routes,
   *  which `ip monitor route` reports too) plus `nft monitor` on routers. */
  struct Monitors {
    std::vector<std::pair<std::string, Process>> procs;
  };
  Monitors watch(const std::vector<std::string>& rtnl, const std::vector<std::string>& nft) {
    Monitors m;
    for (auto& n : rtnl)
      m.procs.emplace_back("ip monitor " + n,
                           Process({"ip", "-n", ns(n), "-o", "monitor", "link", "address",
                                    "route", "rule", "nexthop"},
                                   dir + "/mon-" + n + ".log"));
    for (auto& n : nft)
      m.procs.emplace_back("nft monitor " + n,
                           Process({"ip", "netns", "exec", ns(n), "nft", "monitor"},
                                   dir + "/nft-" + n + ".log"));
    return m;
  }
  /** Stops the monitors; returns what they saw (empty when nothing changed). */
  static std::string stopAll(Monitors& m) {
    std::string out;
    for (auto& [name, p] : m.procs) {
      p.stop();
      auto l = p.log();
      if (!l.empty()) out += "---- " + name + " ----\n" + l;
    }
    return out;
  }
};

}  // namespace kst::e2e
