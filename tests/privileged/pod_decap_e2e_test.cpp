// The agent's --pod-decap bpf end to end with the real daemon binary (router + node1's agent on
// scripts/lib/topo.sh's topology, vxlan-gpe: the only tunnel module of the test container; the
// other modes' wire formats go through the program in kst_pod_decap_test). TCP, UDP and ping
// over IPv4 and IPv6 reach the pod with the client's address, decapsulated by the program (its
// counter rises, the pod's decap device receives nothing); UDP replies still leave from the VIP
// (the pod table learns by VIP); a restarted agent changes nothing and a UDP stream across the
// restart loses no datagram; a removed VIP leaves the
// map; `--pod-decap device` removes the program and the device carries the traffic again;
// `cleanup` leaves nothing.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <net/if.h>

#include "linux/bpf_classifier.h"
#include "linux/netns.h"
#include "linux/pod_decap.h"
#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10";
const std::string kVip6 = "2001:db8:ffff::10";
const std::string kPod = "198.19.1.2", kPod6 = "2001:db8:1::2";

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

class PodDecapE2E : public E2E {
 protected:
  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    usePrefix("kpd");
    libbpf_set_print(nullptr);  // expected misses (no clsact qdisc yet) are no news
  }
  std::string manifest(bool withV6) const {
    std::string y = serviceYaml("web4", kVip) + "---\n" +
                    sliceYaml("web4", "IPv4", {{kPod, "node1"}});
    if (withV6)
      y += "---\n" + serviceYaml("web6", kVip6) + "---\n" +
           sliceYaml("web6", "IPv6", {{kPod6, "node1"}});
    return y;
  }
  /** The program in pod p1a as the agent would observe it. */
  dp::ObservedPodDecap program() {
    dp::ObservedPodDecap out;
    auto st = runInNetns("/run/netns/" + ns("p1a"), [&]() -> Status {
      auto o = PodDecapPrograms::observe();
      if (!o) return std::unexpected(o.error());
      out = *o;
      return {};
    });
    EXPECT_TRUE(st) << st.error().message;
    return out;
  }
  uint64_t decapsulated() {
    auto s = PodDecapPrograms::statsAt("/run/netns/" + ns("p1a"));
    EXPECT_TRUE(s) << s.error().message;
    return s ? s->packets : 0;
  }

  /** The id of the program attached to p1a's eth0 at our handle and priority (0: none). */
  uint32_t attachedId() {
    uint32_t id = 0;
    (void)runInNetns("/run/netns/" + ns("p1a"), [&]() -> Status {
      DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = int(if_nametoindex("eth0")),
                          .attach_point = BPF_TC_INGRESS);
      DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = bpf::kTcHandle,
                          .priority = bpf::kPodDecapPriority);
      if (bpf_tc_query(&hook, &opts) == 0) id = opts.prog_id;
      return {};
    });
    return id;
  }
  long deviceRx() {
    return std::atol(out("p1a", "cat /sys/class/net/kst-vxg/statistics/rx_packets").c_str());
  }
  static bool allFrom(const std::vector<std::string>& answers, const std::string& who) {
    if (answers.empty()) return false;
    for (auto& a : answers)
      if (a != who) return false;
    return true;
  }
  std::vector<std::string> agentFlags(const std::string& decap) const {
    return {"--pod-decap", decap};
  }
};

TEST_F(PodDecapE2E, TcpUdpPingReachThePodThroughTheProgram) {
  topology(2);
  serve("p1a");
  writeManifest("web.yaml", manifest(true));
  startRouter();
  startAgent(1, agentFlags("bpf"));
  ASSERT_TRUE(reachable(kVip)) << owned("p1a");
  ASSERT_TRUE(reachable(kVip6)) << owned("p1a");

  auto seen = program();
  EXPECT_EQ(seen.attached, std::set<std::string>{"eth0"});
  EXPECT_EQ(seen.addrs, (std::map<IpAddress, uint32_t>{{ip(kPod), dp::kPodDecapPod},
                                                       {ip(kPod6), dp::kPodDecapPod},
                                                       {ip(kVip), dp::kPodDecapVip},
                                                       {ip(kVip6), dp::kPodDecapVip}}));
  const long rx0 = deviceRx();
  const uint64_t n0 = decapsulated();
  // The pod answers with the client's address it saw: the client's own, not rewritten.
  EXPECT_TRUE(allFrom(tcp(kVip, 8), "p1a 198.18.0.10"));
  EXPECT_TRUE(allFrom(tcp(kVip6, 8), "p1a 2001:db8:f::10"));
  // UDP to a server bound to the wildcard: the reply must come from the VIP (connected client
  // socket), i.e. the pod table learned the peer from a datagram the program decapsulated.
  EXPECT_TRUE(allFrom(udp(kVip, 8), "p1a 198.18.0.10"));
  EXPECT_TRUE(allFrom(udp(kVip6, 8), "p1a 2001:db8:f::10"));
  EXPECT_EQ(in("cl", "ping -c 3 -i 0.2 -W 2 " + kVip).rc, 0);
  EXPECT_EQ(in("cl", "ping -6 -c 3 -i 0.2 -W 2 " + kVip6).rc, 0);
  const uint64_t n1 = decapsulated();
  // At least 3 packets in per TCP connection (SYN, ACK + data, FIN or RST), 1 per datagram
  // and echo request.
  EXPECT_GE(n1 - n0, uint64_t(16 * 3 + 16 + 6)) << n0 << " → " << n1;
  EXPECT_EQ(deviceRx(), rx0) << "the decap device received what the program should have";

  // A restarted agent adopts the program: zero kernel changes, the same program instance, and
  // a UDP stream across the restart loses nothing (every datagram answered, none through the
  // device).
  const uint32_t id = attachedId();
  ASSERT_NE(id, 0u);
  const long rxRestart = deviceRx();
  Process stream({"ip", "netns", "exec", ns("cl"), kTool, "udpstream", kVip, "8080", "41000",
                  "4", "20"},
                 dir + "/stream.log");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  procs.erase("n1");
  const size_t before = std::filesystem::file_size(dir + "/n1.log");  // appended to
  startAgent(1, agentFlags("bpf"));
  auto restarted = [&] { return procs["n1"].log().substr(before); };
  ASSERT_TRUE(waitUntil([&] { return restarted().find("reconciled") != std::string::npos; }, 15))
      << restarted();
  EXPECT_EQ(restarted().find("kernel changes"), std::string::npos) << restarted();
  EXPECT_EQ(attachedId(), id);
  EXPECT_EQ(stream.wait(10), 0);
  auto streamed = lines(stream.log());
  // 4 s every 20 ms: 200 datagrams; the last answer may arrive after the stream stopped reading.
  EXPECT_GE(streamed.size(), 199u) << "datagrams lost across the restart";
  for (auto& l : streamed) EXPECT_NE(l.find(" p1a 198.18.0.10"), std::string::npos) << l;
  EXPECT_EQ(deviceRx(), rxRestart);
  EXPECT_TRUE(allFrom(udp(kVip, 4), "p1a 198.18.0.10"));

  // The IPv6 VIP leaves: its map entry goes, the program stays.
  writeManifest("web.yaml", manifest(false));
  EXPECT_TRUE(waitUntil([&] { return !program().addrs.contains(ip(kVip6)); }, 15));
  EXPECT_EQ(attachedId(), id);
  // The IPv4 VIP and the pod's IPv4 address (its IPv6 address is no endpoint any more).
  EXPECT_EQ(program().addrs, (std::map<IpAddress, uint32_t>{{ip(kPod), dp::kPodDecapPod},
                                                            {ip(kVip), dp::kPodDecapVip}}));
  const uint64_t n2 = decapsulated();
  EXPECT_TRUE(allFrom(tcp(kVip, 4), "p1a 198.18.0.10"));
  EXPECT_GT(decapsulated(), n2);

  // The last VIP: the program is detached.
  removeManifest("web.yaml");
  EXPECT_TRUE(waitUntil([&] { return attachedId() == 0; }, 15));

  // Back, then `--pod-decap device`: the program goes, the device carries the traffic.
  writeManifest("web.yaml", manifest(true));
  ASSERT_TRUE(waitUntil([&] { return program().addrs.size() == 4; }, 15));
  procs.erase("n1");
  startAgent(1, agentFlags("device"));
  EXPECT_TRUE(waitUntil([&] { return attachedId() == 0; }, 15));
  ASSERT_TRUE(reachable(kVip));
  const long rx1 = deviceRx();
  EXPECT_TRUE(allFrom(udp(kVip, 4), "p1a 198.18.0.10"));
  EXPECT_GE(deviceRx() - rx1, 4);

  // bpf again, then cleanup: nothing left.
  procs.erase("n1");
  startAgent(1, agentFlags("bpf"));
  ASSERT_TRUE(waitUntil([&] { return attachedId() != 0; }, 15));
  procs.erase("n1");
  EXPECT_EQ(in("n1", kBin + " cleanup --role agent --scan-proc=false --netns-dir /run/kst-netns/" +
                         prefix + "/n1").rc,
            0);
  EXPECT_EQ(attachedId(), 0u);
  EXPECT_EQ(owned("p1a"), "");
}

}  // namespace
}  // namespace kst::e2e
