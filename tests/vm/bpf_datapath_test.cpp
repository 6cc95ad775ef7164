// The router's tc-BPF datapath (--datapath bpf) on Debian's 6.1 kernel, the oldest kernel the
// project claims: booted by tools/vm, this binary carries the CTest label "vm" and runs only
// there (the host's kernel is newer; the privileged suite covers the datapath on it).
//
// Per flow-based mode and way out (docs/bpf-datapath.md "Per packet"): --bpf-encap headers
// (the default: the program writes the outer headers and sends with bpf_redirect_neigh, the
// router's tunnel device sends next to nothing) for vxlan-gpe, ipip and gre-flow, and device
// (the tunnel key set, redirected to the collect-md device) for vxlan-gpe:
//   1. the program loads and is attached to the router's ingress interface (tc clsact, our
//      name), its maps pinned under --bpf-pin-dir;
//   2. TCP, UDP and ping from the client reach the pods, which see the client's address;
//   3. the program carried them: its run count (kernel.bpf_stats_enabled) rose by at least the
//      packets sent, the pods' decap devices received them (so the headers are the ones the
//      kernel's decap devices accept on 6.1), and the router's tunnel device sent them (device)
//      or a tenth of them at most (headers);
//   4. the same flows (source ports) land on the same pods when an nft router takes over
//      after `cleanup`, so both datapaths compute the same buckets on this kernel;
//   5. `cleanup` removed the program and everything pinned.
// Topology: scripts/lib/topo.sh's layout (vm_harness.h nodesTopology).
#include <sys/mount.h>

#include <cstring>
#include <set>

#include "vm/vm_harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10";  // p1a, p1b, p2a
const std::string kClient = "198.18.0.10";
constexpr const char* kProgName = "kst_router";  // linux/bpf_classifier.h bpf::kProgName

struct BpfModeSpec {
  std::string mode;
  std::string dev;    // the collect-md device on the router, the decap device in the pods
  std::string encap;  // --bpf-encap
};
void PrintTo(const BpfModeSpec& m, std::ostream* os) { *os << m.mode << "/" << m.encap; }
std::string name(const ::testing::TestParamInfo<BpfModeSpec>& i) {
  std::string n = i.param.mode + (i.param.encap == "headers" ? "" : "_" + i.param.encap);
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

class BpfOn61 : public VmE2E, public ::testing::WithParamInterface<BpfModeSpec> {
 protected:
  std::string bpffs, pinDir;

  void SetUp() override {
    VmE2E::SetUp();
    if (IsSkipped()) return;
    if (!inVm()) GTEST_SKIP() << "Debian's 6.1 kernel: runs in the VM (tools/vm/run-ctest.sh BUILD -L vm)";
    usePrefix("kbp");  // after VmE2E's "kv": this suite's own namespaces
    // A bpffs of the test's own, outside /sys: `ip netns exec` mounts a fresh /sys for the
    // daemons it starts, so pins under /sys/fs/bpf would live in each process's own bpffs and
    // neither `cleanup` nor this test would see them.
    bpffs = dir + "/bpffs";
    std::filesystem::create_directories(bpffs);
    ASSERT_EQ(mount("bpf", bpffs.c_str(), "bpf", 0, nullptr), 0) << std::strerror(errno);
    pinDir = bpffs + "/rt";
    setStats(true);
  }
  void TearDown() override {
    // Lazily: the pins go once the daemons have stopped.
    if (!bpffs.empty()) umount2(bpffs.c_str(), MNT_DETACH);
    VmE2E::TearDown();
    if (inVm()) setStats(false);
  }
  static void setStats(bool on) { std::ofstream("/proc/sys/kernel/bpf_stats_enabled") << (on ? 1 : 0); }

  std::vector<std::string> bpfFlags() const {
    return {"--datapath", "bpf", "--bpf-pin-dir", pinDir, "--bpf-encap", GetParam().encap};
  }
  void startBpfRouter() { startDaemon("rt", "router", GetParam().mode, "", "", bpfFlags()); }

  /** The router's ingress filters on eth0 (tc's text: our program's name when attached). */
  std::string filters() const { return sh("tc -n " + ns("rt") + " filter show dev eth0 ingress").out; }

  /** run_cnt of our program (0 when absent). bpftool sees every program of the (VM's) kernel;
   *  the test's own router is the only one loaded there. */
  uint64_t runCount() const {
    // "… run_time_ns 1234 run_cnt 56" per program, on its first line.
    std::string out = sh("bpftool prog show name " + std::string(kProgName), false).out;
    uint64_t n = 0;
    for (size_t at = out.find("run_cnt "); at != std::string::npos;
         at = out.find("run_cnt ", at + 1))
      n += std::strtoull(out.c_str() + at + 8, nullptr, 10);
    return n;
  }
  static std::string podOf(const std::string& answer) { return answer.substr(0, answer.find(' ')); }
};

TEST_P(BpfOn61, LoadsCarriesTrafficMatchesNftAndCleansUp) {
  const BpfModeSpec& spec = GetParam();
  ASSERT_NO_FATAL_FAILURE(nodesTopology());
  for (auto pod : {"p1a", "p1b", "p2a"}) serve(pod);
  writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" +
                                sliceYaml("web", "IPv4",
                                          {{"198.19.1.2", "node1"},
                                           {"198.19.1.3", "node1"},
                                           {"198.19.2.2", "node2"}}));
  startBpfRouter();
  startDaemon("n1", "agent", spec.mode, "node1", "n1");
  startDaemon("n2", "agent", spec.mode, "node2", "n2");

  // ---- 1. loaded, attached, pinned ----------------------------------------------------------
  ASSERT_TRUE(waitUntil([&] { return filters().find(kProgName) != std::string::npos; }, 60))
      << filters() << "\n" << procs["rt"].log();
  EXPECT_TRUE(std::filesystem::exists(pinDir) && !std::filesystem::is_empty(pinDir)) << pinDir;
  ASSERT_TRUE(reachable(kVip, 30)) << joined(ownedAll({"rt", "n1", "p1a"})) << procs["rt"].log();

  // ---- 2 + 3. traffic, carried by the program and the tunnel devices -------------------------
  std::vector<std::pair<std::string, std::string>> pods{
      {"p1a", spec.dev}, {"p1b", spec.dev}, {"p2a", spec.dev}};
  uint64_t runs0 = runCount();
  auto tx0 = counters({{"rt", spec.dev}}, "tx_packets");
  auto rx0 = counters(pods, "rx_packets");
  auto answers = tcp(kVip, 30, 22000);
  ASSERT_EQ(answers.size(), 30u);
  std::set<std::string> seen;
  for (auto& a : answers) {
    ASSERT_NE(a, "FAIL") << procs["rt"].log();
    seen.insert(podOf(a));
    EXPECT_EQ(a.substr(a.find(' ') + 1), kClient) << "the pod must see the client's address";
  }
  EXPECT_GE(seen.size(), 2u);
  for (auto& a : udp(kVip, 4)) EXPECT_TRUE(a.ends_with(" " + kClient)) << a;
  EXPECT_EQ(in("cl", "ping -c 3 -i 0.2 -W 2 " + kVip).rc, 0);
  uint64_t runs = runCount() - runs0;
  auto tx = sum(counters({{"rt", spec.dev}}, "tx_packets")) - sum(tx0);
  auto rx = sum(counters(pods, "rx_packets")) - sum(rx0);
  // 30 TCP exchanges send ≥ 4 packets each client → pod (SYN, ACK, data, FIN or RST).
  EXPECT_GE(runs, 120u) << "the program did not see the packets (run_cnt)";
  if (spec.encap == "device")
    EXPECT_GE(tx, 120u) << "the router's " << spec.dev << " did not send them";
  else
    EXPECT_LE(tx * 10, runs) << "the router's " << spec.dev << " sent them: not the header path";
  EXPECT_GE(rx, 120u) << "the pods' " << spec.dev << " did not receive them";
  std::cerr << "[" << spec.mode << "/" << spec.encap << "] program runs " << runs << ", router " << spec.dev << " tx "
            << tx << ", pods rx " << rx << "\n";

  // ---- 4. an nft router after cleanup: the same flows on the same pods -----------------------
  auto before = tcp(kVip, 40, 23000);
  ASSERT_EQ(before.size(), 40u);
  for (auto& a : before) ASSERT_NE(a, "FAIL");
  EXPECT_EQ(procs["rt"].stop(), 0) << procs["rt"].log();
  std::vector<std::string> cleanup{"ip", "netns", "exec", ns("rt"), kBin, "cleanup", "--role",
                                   "router", "--mode", spec.mode};
  for (auto& f : bpfFlags()) cleanup.push_back(f);
  Process c(cleanup, dir + "/cleanup.log");
  EXPECT_EQ(c.wait(60), 0) << c.log();

  // ---- 5. nothing of the program left --------------------------------------------------------
  EXPECT_EQ(filters().find(kProgName), std::string::npos) << filters();
  EXPECT_TRUE(!std::filesystem::exists(pinDir) || std::filesystem::is_empty(pinDir)) << pinDir;
  EXPECT_EQ(ownedAll({"rt"})["rt"], "") << "cleanup left owned objects on the router";

  startDaemon("rt", "router", spec.mode);  // the default datapath: nft
  ASSERT_TRUE(reachable(kVip, 30)) << procs["rt"].log();
  EXPECT_EQ(filters().find(kProgName), std::string::npos);
  auto after = tcp(kVip, 40, 23000);
  ASSERT_EQ(after.size(), 40u);
  for (size_t i = 0; i < after.size(); ++i)
    EXPECT_EQ(podOf(after[i]), podOf(before[i])) << "source port " << 23000 + i
                                                 << ": bpf and nft chose different pods";
  for (auto n : {"rt", "n1", "n2"}) EXPECT_TRUE(procs[n].running()) << n << " died:\n" << procs[n].log();
}

// The flow-based modes. (Per-endpoint gre and mpls take the same marked path as gre-flow.)
INSTANTIATE_TEST_SUITE_P(Vm, BpfOn61,
                         ::testing::Values(BpfModeSpec{"vxlan-gpe", "kst-vxg", "headers"},
                                           BpfModeSpec{"ipip", "kst-ipip", "headers"},
                                           BpfModeSpec{"gre-flow", "kst-gre", "headers"},
                                           BpfModeSpec{"vxlan-gpe", "kst-vxg", "device"}),
                         name);

}  // namespace
}  // namespace kst::e2e
