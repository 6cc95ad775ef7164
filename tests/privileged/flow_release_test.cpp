// Flows pinned to an endpoint that leaves are hashed again onto a live endpoint on their next
// packet (the router takes the slot out of its live-slot set: lazy invalidation, nothing walks
// the flow table), a slot released that way is given to no other endpoint while stale pins to
// it may remain, and a draining endpoint keeps its pinned flows. The client is one UDP flow
// with a fixed source port sending every 5 ms, the kind of client (QUIC, DNS resolver, RTP)
// that does not reconnect on an ICMP error. With the bpf datapath (the ".bpf" variants) the
// program rewrites a stale pin with the new mark at the flow's next packet instead of leaving it
// to time out: the flow moves the same way and is pinned to its new slot at once.
#include <arpa/inet.h>

#include <cstdio>

#include <nlohmann/json.hpp>

#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kVip4 = "203.0.113.10", kVip6 = "2001:db8:ffff::10";
constexpr double kMoveBound = 2.0;  // seconds from the EndpointSlice change to the other pod
constexpr int kFlowTimeout = 3;     // --flow-timeout of the router (seconds)

struct Answer {
  long ms;          // since the stream started (the tool's clock)
  std::string pod;  // who answered
};

class FlowRelease : public E2E {
 protected:
  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    // This test's namespaces are named kft*: its own prefix, not the harness' default.
    usePrefix("kft");
    // pods p1a (198.19.1.2, 2001:db8:1::2), p1b (.3, ::3), p2a (198.19.2.2, 2001:db8:2::2), p2b
    topology(2, 1);
    serve("p1a");
    serve("p2a");
    serve("p1b");
  }

  bool v6() const { return vip_ == kVip6; }
  std::string podIp(const std::string& pod) const {
    const char node = pod[1];
    const std::string host = pod[2] == 'a' ? "2" : "3";
    return v6() ? std::string("2001:db8:") + node + "::" + host
                : std::string("198.19.") + node + "." + host;
  }
  std::string other(const std::string& pod) const { return pod == "p1a" ? "p2a" : "p1a"; }

  /** Service with endpoints p1a and p2a; `changed` is left out (gone) or draining; `extra`
   *  (if any) is one more endpoint, draining. */
  void writeEndpoints(const std::string& changed = "", bool draining = false,
                      const std::string& extra = "") {
    std::vector<Ep> eps;
    std::vector<std::string> pods{"p1a", "p2a"};
    if (!extra.empty()) pods.push_back(extra);
    for (const auto& pod : pods) {
      Ep e{podIp(pod), std::string("node") + pod[1]};
      if (pod == changed || pod == extra) {
        if (pod == changed && !draining) continue;
        e.ready = false;
        e.terminating = true;  // serving + terminating
      }
      eps.push_back(e);
    }
    writeManifest("svc.yaml", serviceYaml("svc", vip_) + "---\n" +
                                  sliceYaml("svc", v6() ? "IPv6" : "IPv4", eps));
  }

  void start(const std::string& vip) {
    vip_ = vip;
    writeEndpoints();
    startRouter("rt", {"--flow-timeout", std::to_string(kFlowTimeout)});
    startAgent(1);
    startAgent(2);
    ASSERT_TRUE(reachable(vip_, 20));
    stream_ = Process({"ip", "netns", "exec", ns("cl"), kTool, "udpstream", vip_, "8080", "40000",
                       "60", "5"},
                      dir + "/stream.log");
    ASSERT_TRUE(waitUntil([&] { return answers().size() >= 50; })) << stream_.log();
  }

  std::vector<Answer> answers() const {
    std::vector<Answer> out;
    for (auto& l : lines(stream_.log())) {
      std::istringstream in(l);
      Answer a;
      if (in >> a.ms >> a.pod) out.push_back(a);
    }
    return out;
  }

  /** The fwmark of the slot whose route for the VIP leads to the pod (0 when none does). */
  uint32_t markOf(const std::string& pod) {
    for (uint32_t t = 1000; t < 1008; ++t) {
      auto rt = out("rt", std::string(v6() ? "ip -6" : "ip") + " route show table " +
                              std::to_string(t) + " " + vip_);
      auto nh = rt.find("nhid ");
      if (nh == std::string::npos) continue;
      auto n = out("rt", "ip nexthop show id " + rt.substr(nh + 5, rt.find(' ', nh + 5) - nh - 5));
      if (n.find("dst " + podIp(pod) + " ") != std::string::npos) return t;
    }
    return 0;
  }

  /** The slot marks the VIP's buckets send new flows to, with their bucket counts. */
  std::map<uint32_t, size_t> bucketMarksOfVip() {
    std::map<uint32_t, size_t> n;
    auto all = bucketMarks("rt", v6());  // (a named map: the loop must not outlive it)
    for (auto& [bucket, mark] : all[vip_]) ++n[mark];
    return n;
  }
  /** Flow pins (flow4/flow6 elements, or the program's flow map entries) to the mark. */
  size_t pinnedTo(uint32_t mark) {
    auto n = flowPins("rt", v6());
    return n.contains(mark) ? n[mark] : 0;
  }

  /** bpf: the mark the stream's own flow (client port 40000 → VIP) is pinned to, 0 if none
   *  (other flows' pins, such as the probes', stay in the LRU map after they expire). */
  uint32_t streamPin() {
    for (auto& e : bpfDump("rt", "flows")) {
      auto& k = e["key"];
      if (bpfAddress(k["daddr"]) == vip_ && ntohs(k["sport"].get<uint16_t>()) == 40000)
        return e["value"]["mark"].get<uint32_t>();
    }
    return 0;
  }

  /** Answers after the first `from` all come from `pod`, and there are some. */
  ::testing::AssertionResult allFrom(const std::string& pod, size_t from) {
    auto a = answers();
    if (a.size() <= from) return ::testing::AssertionFailure() << "no answers after #" << from;
    for (size_t i = from; i < a.size(); ++i)
      if (a[i].pod != pod)
        return ::testing::AssertionFailure()
               << "answer #" << i << " at " << a[i].ms << " ms from " << a[i].pod;
    return ::testing::AssertionSuccess() << a.size() - from << " answers";
  }

  /** The endpoint of the pinned flow leaves: the flow reaches the other pod within the bound,
   *  its stale pin is left alone (not refreshed) and times out, and the flow is pinned to the
   *  other pod's slot after that. */
  void expectFlowMovesWhenItsPodLeaves() {
    const std::string first = answers().back().pod;
    const uint32_t mark = markOf(first);
    ASSERT_NE(mark, 0u) << out("rt", "ip route show table all proto 211");
    ASSERT_GE(pinnedTo(mark), 1u);
    const size_t before = answers().size();
    const auto t0 = std::chrono::steady_clock::now();
    writeEndpoints(first);
    bool moved = waitUntil([&] {
      auto a = answers();
      return a.size() > before && a.back().pod == other(first);
    }, 10);
    double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(moved) << "still black-holed after 10 s; answers after the change: "
                       << answers().size() - before << "\n"
                       << stream_.log().substr(stream_.log().size() > 2000 ? stream_.log().size() - 2000 : 0);
    EXPECT_LT(took, kMoveBound);
    // The gap the client saw (tool's clock): last answer before the change → first from the
    // other pod.
    auto a = answers();
    long lastOld = a[before - 1].ms, firstNew = -1;
    for (size_t i = before; i < a.size() && firstNew < 0; ++i)
      if (a[i].pod == other(first)) firstNew = a[i].ms;
    std::cout << vip_ << ": moved from " << first << " to " << other(first) << " " << took
              << " s after the change; client gap " << firstNew - lastOld << " ms\n";
    // The live-slot set no longer has (VIP, mark).
    EXPECT_FALSE(liveSlot("rt", vip_, mark));
    if (bpfDatapath()) {
      // The program rewrites a stale pin with the packet's new mark at once (nft leaves it to
      // time out): the flow is pinned to the other pod's slot already.
      EXPECT_EQ(streamPin(), markOf(other(first)));
      const size_t moved0 = answers().size();
      std::this_thread::sleep_for(std::chrono::seconds(kFlowTimeout + 1));
      EXPECT_EQ(streamPin(), markOf(other(first)));
      EXPECT_TRUE(allFrom(other(first), moved0));
      return;
    }
    // Lazy: the flow-table element is still there with the released mark (nothing walked or
    // purged the flow table).
    EXPECT_GE(pinnedTo(mark), 1u);
    // Not refreshed by the packets that keep coming: it times out, and the flow's next packet
    // pins it to the other pod's slot.
    const size_t moved0 = answers().size();
    std::this_thread::sleep_for(std::chrono::seconds(kFlowTimeout + 1));
    EXPECT_EQ(pinnedTo(mark), 0u);
    EXPECT_GE(pinnedTo(markOf(other(first))), 1u);
    EXPECT_TRUE(allFrom(other(first), moved0));
  }

  /** The pinned pod leaves and, in the same change, p1b joins, draining (so that no flow is
   *  hashed to it): it must not get the released slot while the flow table still pins the flow
   *  there, or the flow would follow the mark to p1b. */
  void expectReleasedSlotGoesToNoOtherPod() {
    const std::string first = answers().back().pod;
    const uint32_t mark = markOf(first);
    ASSERT_NE(mark, 0u);
    ASSERT_GE(pinnedTo(mark), 1u);
    const size_t before = answers().size();
    writeEndpoints(first, false, "p1b");
    ASSERT_TRUE(waitUntil([&] { return markOf("p1b") != 0; }, 10))
        << out("rt", "ip route show table all proto 211");
    EXPECT_NE(markOf("p1b"), mark) << "the released slot went to the joining pod";
    ASSERT_TRUE(waitUntil([&] {
      auto a = answers();
      return a.size() > before && a.back().pod == other(first);
    }, 10));
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    // Every answer since the change: the old pod (until the pass) or the live one, never p1b,
    // although the stale pin to `mark` is still in the flow table.
    auto a = answers();
    for (size_t i = before; i < a.size(); ++i)
      EXPECT_NE(a[i].pod, "p1b") << "answer #" << i << " at " << a[i].ms << " ms";
    // nft: the stale pin stays until it times out; the program rewrites it at the next packet.
    if (bpfDatapath()) EXPECT_EQ(streamPin(), markOf(other(first)));
    else EXPECT_GE(pinnedTo(mark), 1u);
  }

  std::string vip_;
  Process stream_;
};

TEST_F(FlowRelease, UdpFlowOfARemovedEndpointMovesToALiveOne) {
  start(kVip4);
  if (HasFatalFailure()) return;
  expectFlowMovesWhenItsPodLeaves();
}

TEST_F(FlowRelease, Ipv6UdpFlowOfARemovedEndpointMovesToALiveOne) {
  start(kVip6);
  if (HasFatalFailure()) return;
  expectFlowMovesWhenItsPodLeaves();
}

TEST_F(FlowRelease, ReleasedSlotGoesToNoOtherPodWhileFlowsArePinnedToIt) {
  start(kVip4);
  if (HasFatalFailure()) return;
  expectReleasedSlotGoesToNoOtherPod();
}

TEST_F(FlowRelease, Ipv6ReleasedSlotGoesToNoOtherPodWhileFlowsArePinnedToIt) {
  start(kVip6);
  if (HasFatalFailure()) return;
  expectReleasedSlotGoesToNoOtherPod();
}

TEST_F(FlowRelease, DrainingEndpointKeepsItsPinnedUdpFlowUntilItIsGone) {
  start(kVip4);
  if (HasFatalFailure()) return;
  const std::string first = answers().back().pod;
  const uint32_t mark = markOf(first);
  ASSERT_NE(mark, 0u);
  const size_t before = answers().size();
  writeEndpoints(first, /*draining=*/true);
  // Draining applied: no bucket sends new flows to its slot any more.
  ASSERT_TRUE(waitUntil([&] {
    auto m = bucketMarksOfVip();
    return !m.empty() && !m.contains(mark);
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_TRUE(allFrom(first, before)) << "the draining pod lost its pinned flow";
  EXPECT_GE(answers().size() - before, 100u);
  EXPECT_GE(pinnedTo(mark), 1u);
  EXPECT_EQ(markOf(first), mark);  // slot and route kept
  // Gone for good: now the flow moves.
  expectFlowMovesWhenItsPodLeaves();
}

}  // namespace
}  // namespace kst::e2e
