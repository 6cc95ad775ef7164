// The agent's --pod-decap bpf on Debian's 6.1 kernel (the oldest claimed; its verifier and its
// bpf_skb_adjust_room without the 6.3 decap flags), in every tunnel mode with the real
// modules: an nft router, node1's agent with --pod-decap bpf, pod p1a serving an IPv4 VIP and,
// where the mode carries IPv6 pods, an IPv6 VIP through an IPv6 pod address (p1a in
// vxlan-gpe; p1b in ipip and gre-flow, whose decap device has one kind per pod address family
// and dual-stack pods are a known gap, docs/modes.md). TCP,
// UDP and ping reach the pod with the client's address; the program decapsulated them (its
// counter rose by at least the packets sent) and the pod's decap device received none of
// them; `cleanup` detaches it. The program's handling of every wire format and family
// (including IPv6 inside IPv4) is kst_pod_decap_test, also run in the VM
// (kst_vm_pod_decap_prog).
#include "linux/netns.h"
#include "linux/pod_decap.h"
#include "vm/vm_harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10", kVip6 = "2001:db8:ffff::10";
const std::string kClient = "198.18.0.10", kClient6 = "2001:db8:f::10";

struct DecapModeSpec {
  std::string mode;
  std::string dev;   // the decap device in the pods
  std::string pod6;  // the pod serving the IPv6 VIP ("": no IPv6 endpoints in this mode)
};
void PrintTo(const DecapModeSpec& m, std::ostream* os) { *os << m.mode; }
std::string name(const ::testing::TestParamInfo<DecapModeSpec>& i) {
  std::string n = i.param.mode;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

class PodDecapOn61 : public VmE2E, public ::testing::WithParamInterface<DecapModeSpec> {
 protected:
  void SetUp() override {
    VmE2E::SetUp();
    if (IsSkipped()) return;
    if (!inVm()) GTEST_SKIP() << "Debian's 6.1 kernel: runs in the VM (tools/vm/run-ctest.sh BUILD -L vm)";
    usePrefix("kpd");
  }
  uint64_t decapsulated(const std::string& pod) {
    auto s = PodDecapPrograms::statsAt("/run/netns/" + ns(pod));
    EXPECT_TRUE(s) << s.error().message;
    return s ? s->packets : 0;
  }

  std::string filters(const std::string& pod = "p1a") const {
    return sh("tc -n " + ns(pod) + " filter show dev eth0 ingress").out;
  }
};

TEST_P(PodDecapOn61, CarriesTrafficThroughTheProgramAndCleansUp) {
  const DecapModeSpec& spec = GetParam();
  ASSERT_NO_FATAL_FAILURE(nodesTopology());
  const bool v6 = !spec.pod6.empty();
  const std::string pod6 = v6 ? spec.pod6 : "p1a";
  serve("p1a");
  if (v6 && pod6 != "p1a") serve(pod6);
  std::string y = serviceYaml("web", kVip) + "---\n" +
                  sliceYaml("web", "IPv4", {{"198.19.1.2", "node1"}});
  if (v6)
    y += "---\n" + serviceYaml("web6", kVip6) + "---\n" +
         sliceYaml("web6", "IPv6", {{pod6 == "p1a" ? "2001:db8:1::2" : "2001:db8:1::3", "node1"}});
  writeManifest("web.yaml", y);
  startDaemon("rt", "router", spec.mode);
  startDaemon("n1", "agent", spec.mode, "node1", "n1", {"--pod-decap", "bpf"});
  ASSERT_TRUE(waitUntil([&] { return filters().find("kst_pod_decap") != std::string::npos; }, 60))
      << filters() << "\n" << procs["n1"].log();
  ASSERT_TRUE(reachable(kVip, 30)) << joined(ownedAll({"rt", "n1", "p1a"})) << procs["n1"].log();
  if (v6) {
    ASSERT_TRUE(reachable(kVip6, 30)) << procs["n1"].log();
  }

  std::vector<std::pair<std::string, std::string>> devs{{"p1a", spec.dev}};
  if (pod6 != "p1a") devs.push_back({pod6, spec.dev});
  auto decapsulatedAll = [&] { return decapsulated("p1a") + (pod6 != "p1a" ? decapsulated(pod6) : 0); };
  auto rx0 = sum(counters(devs, "rx_packets"));
  uint64_t n0 = decapsulatedAll();
  auto answers = tcp(kVip, 10);
  ASSERT_EQ(answers.size(), 10u);
  for (auto& a : answers) EXPECT_EQ(a, "p1a " + kClient);
  for (auto& a : udp(kVip, 4)) EXPECT_EQ(a, "p1a " + kClient);  // reply from the VIP
  EXPECT_EQ(in("cl", "ping -c 3 -i 0.2 -W 2 " + kVip).rc, 0);
  uint64_t expected = 10 * 3 + 4 + 3;
  if (v6) {
    for (auto& a : tcp(kVip6, 10)) EXPECT_EQ(a, pod6 + " " + kClient6);
    for (auto& a : udp(kVip6, 4)) EXPECT_EQ(a, pod6 + " " + kClient6);
    EXPECT_EQ(in("cl", "ping -6 -c 3 -i 0.2 -W 2 " + kVip6).rc, 0);
    expected *= 2;
  }
  uint64_t n = decapsulatedAll() - n0;
  auto rx = sum(counters(devs, "rx_packets")) - rx0;
  std::cerr << "[" << spec.mode << "] decapsulated by the program " << n << ", " << spec.dev
            << " rx " << rx << "\n";
  EXPECT_GE(n, expected) << "the program did not decapsulate them";
  EXPECT_EQ(rx, 0u) << "the pod's " << spec.dev << " received packets the program should strip";

  EXPECT_EQ(procs["n1"].stop(), 0) << procs["n1"].log();
  Process c({"ip", "netns", "exec", ns("n1"), kBin, "cleanup", "--role", "agent", "--mode",
             spec.mode, "--scan-proc=false", "--netns-dir", "/run/kst-netns/" + prefix + "/n1"},
            dir + "/cleanup.log");
  EXPECT_EQ(c.wait(60), 0) << c.log();
  EXPECT_EQ(filters().find("kst_pod_decap"), std::string::npos) << filters();
  EXPECT_EQ(filters(pod6).find("kst_pod_decap"), std::string::npos) << filters(pod6);
}

INSTANTIATE_TEST_SUITE_P(Vm, PodDecapOn61,
                         ::testing::Values(DecapModeSpec{"vxlan-gpe", "kst-vxg", "p1a"},
                                           DecapModeSpec{"ipip", "kst-ipip", "p1b"},
                                           DecapModeSpec{"gre-flow", "kst-gre", "p1b"},
                                           DecapModeSpec{"gre", "kst-gre", ""}),
                         name);

}  // namespace
}  // namespace kst::e2e
