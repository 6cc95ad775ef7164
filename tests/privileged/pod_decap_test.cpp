// The agent's pod-side decapsulation program (linux/pod_decap.h) in a private network
// namespace: PodDecapPrograms attaches it to a dummy interface holding the "pod" addresses,
// then crafted tunnel packets of every mode and family go through the attached program with
// BPF_PROG_TEST_RUN (no tunnel module needed: ipip and gre work here too). Checked: the output
// is exactly the inner packet behind the Ethernet header (type rewritten), or the input
// untouched for everything the program must leave to the device; its counter; the ownership
// side (zero changes when unchanged, by a second instance as after a restart; VIP removal; mode
// change; detach).
#include <gtest/gtest.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/pkt_cls.h>
#include <net/if.h>
#include <sched.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "desired/agent.h"
#include "linux/bpf_classifier.h"
#include "linux/pod_decap.h"

namespace kst {
namespace {

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

const IpAddress kPod4 = ip("198.19.1.2"), kPod6 = ip("2001:db8:1::2");
const IpAddress kVip4 = ip("203.0.113.10"), kVip6 = ip("2001:db8:ffff::10");
const IpAddress kClient4 = ip("198.18.0.2"), kClient6 = ip("2001:db8:100::2");
const IpAddress kRouter4 = ip("198.19.0.1"), kRouter6 = ip("2001:db8::1");

using Bytes = std::vector<uint8_t>;

void put16(Bytes& b, size_t at, uint16_t v) {
  b[at] = uint8_t(v >> 8);
  b[at + 1] = uint8_t(v);
}

/** An IP packet (no Ethernet) with a UDP datagram of `payload` bytes. */
Bytes ipPacket(const IpAddress& src, const IpAddress& dst, uint8_t proto, const Bytes& l4) {
  Bytes h;
  if (src.isV4()) {
    h.assign(20, 0);
    h[0] = 0x45;
    put16(h, 2, uint16_t(20 + l4.size()));
    h[8] = 64;
    h[9] = proto;
    std::memcpy(&h[12], src.data(), 4);
    std::memcpy(&h[16], dst.data(), 4);
  } else {
    h.assign(40, 0);
    h[0] = 0x60;
    put16(h, 4, uint16_t(l4.size()));
    h[6] = proto;
    h[7] = 64;
    std::memcpy(&h[8], src.data(), 16);
    std::memcpy(&h[24], dst.data(), 16);
  }
  h.insert(h.end(), l4.begin(), l4.end());
  return h;
}

Bytes udp(uint16_t sport, uint16_t dport, const Bytes& payload) {
  Bytes u(8, 0);
  put16(u, 0, sport);
  put16(u, 2, dport);
  put16(u, 4, uint16_t(8 + payload.size()));
  u.insert(u.end(), payload.begin(), payload.end());
  return u;
}

Bytes inner(const IpAddress& vip) {
  const IpAddress& client = vip.isV4() ? kClient4 : kClient6;
  return ipPacket(client, vip, 17, udp(40000, 53, Bytes(18, 0xab)));
}

Bytes ether(const Bytes& ipPkt) {
  Bytes f(14, 0);
  f[0] = 0x02;
  f[6] = 0x02;
  f[11] = 1;
  const bool v4 = (ipPkt[0] >> 4) == 4;
  put16(f, 12, v4 ? 0x0800 : 0x86dd);
  f.insert(f.end(), ipPkt.begin(), ipPkt.end());
  return f;
}

enum class Wire { Gpe, Ipip, Gre };

struct Encap {
  uint16_t port = 4790;
  uint8_t gpeFlags = 0x0c;
  uint32_t vni = 0;
  uint16_t greFlags = 0;
  bool ipOptions = false;
  bool fragment = false;
};

/** The router's encapsulation of `in` toward `pod` as it goes on the wire. */
Bytes encapsulate(Wire w, const IpAddress& pod, const Bytes& in, const Encap& e = {}) {
  const bool inner6 = (in[0] >> 4) == 6;
  const IpAddress& router = pod.isV4() ? kRouter4 : kRouter6;
  Bytes payload;
  uint8_t proto = 0;
  switch (w) {
    case Wire::Gpe: {
      Bytes gpe = {e.gpeFlags, 0, 0, uint8_t(inner6 ? 2 : 1), uint8_t(e.vni >> 16),
                   uint8_t(e.vni >> 8), uint8_t(e.vni), 0};
      gpe.insert(gpe.end(), in.begin(), in.end());
      payload = udp(49152, e.port, gpe);
      proto = 17;
      break;
    }
    case Wire::Ipip:
      payload = in;
      proto = inner6 ? 41 : 4;
      break;
    case Wire::Gre: {
      payload = {uint8_t(e.greFlags >> 8), uint8_t(e.greFlags), uint8_t(inner6 ? 0x86 : 0x08),
                 uint8_t(inner6 ? 0xdd : 0x00)};
      if (e.greFlags & 0x2000) payload.insert(payload.end(), {0, 0, 0, 7});  // key
      payload.insert(payload.end(), in.begin(), in.end());
      proto = 47;
      break;
    }
  }
  Bytes out = ipPacket(router, pod, proto, payload);
  if (pod.isV4() && e.ipOptions) {  // a 4-byte NOP option block
    out.insert(out.begin() + 20, {1, 1, 1, 0});
    out[0] = 0x46;
    put16(out, 2, uint16_t(out.size()));
  }
  if (pod.isV4() && e.fragment) out[6] = 0x20;  // more fragments
  return out;
}

class PodDecapTest : public ::testing::Test {
 protected:
  std::string dev;
  int nsFd = -1;

  static int sh(const std::string& cmd) { return std::system(cmd.c_str()); }

  void SetUp() override {
    if (getuid() != 0) GTEST_SKIP() << "needs root (CTest label privileged)";
    ASSERT_EQ(unshare(CLONE_NEWNET), 0);  // the whole test runs in its own namespace
    dev = "kpd" + std::to_string(getpid());
    ASSERT_EQ(sh("ip link set lo up && ip link add " + dev + " type veth peer name " + dev + "p && ip link set " + dev +
                 " up && ip addr add 198.19.1.2/32 dev " + dev + " && ip addr add 2001:db8:1::2/128 dev " +
                 dev + " nodad"),
              0);
    nsFd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(nsFd, 0);
  }
  void TearDown() override {
    if (nsFd >= 0) close(nsFd);
    // The namespace (and the filter, program and maps with it) goes with the process.
  }

  dp::PodDecap want(Mode m) const {
    dp::PodDecap d;
    d.mode = m;
    d.port = m == Mode::VxlanGpe ? 4790 : 0;
    d.podIps = {kPod4, kPod6};
    d.vips = {kVip4, kVip6};
    return d;
  }

  /** The attached program (fd), or -1. */
  int attachedProg() const {
    DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = int(if_nametoindex(dev.c_str())),
                        .attach_point = BPF_TC_INGRESS);
    DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = bpf::kTcHandle,
                        .priority = bpf::kPodDecapPriority);
    if (bpf_tc_query(&hook, &opts) != 0) return -1;
    return bpf_prog_get_fd_by_id(opts.prog_id);
  }

  /** Runs frame through the attached program: (tc verdict, output frame). */
  std::pair<int, Bytes> run(const Bytes& frame) {
    int fd = attachedProg();
    EXPECT_GE(fd, 0);
    Bytes out(frame.size() + 128);
    DECLARE_LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame.data(),
                        .data_out = out.data(), .data_size_in = uint32_t(frame.size()),
                        .data_size_out = uint32_t(out.size()), .repeat = 1);
    int r = bpf_prog_test_run_opts(fd, &o);
    close(fd);
    EXPECT_EQ(r, 0) << std::strerror(errno);
    out.resize(o.data_size_out);
    return {int(o.retval), out};
  }

  void expectDecap(Wire w, const IpAddress& pod, const IpAddress& vip, const char* what) {
    Bytes in = inner(vip);
    Bytes frame = ether(encapsulate(w, pod, in));
    auto [verdict, out] = run(frame);
    EXPECT_EQ(verdict, TC_ACT_OK) << what;
    EXPECT_EQ(out, ether(in)) << what << ": not exactly the inner packet";
  }
  void expectPassed(const Bytes& frame, const char* what) {
    auto [verdict, out] = run(frame);
    EXPECT_EQ(verdict, TC_ACT_OK) << what;
    EXPECT_EQ(out, frame) << what << ": changed";
  }
  /** The program's counter (the test thread is in the namespace). */
  static uint64_t decapped() {
    auto s = PodDecapPrograms::stats();
    EXPECT_TRUE(s) << s.error().message;
    return s ? s->packets : 0;
  }
};

TEST_F(PodDecapTest, EveryModeAndFamilyIsStrippedToTheInnerPacket) {
  PodDecapPrograms progs;
  struct Case {
    Mode mode;
    Wire wire;
  };
  uint64_t expected = 0;
  for (auto [mode, wire] : {Case{Mode::VxlanGpe, Wire::Gpe}, Case{Mode::Ipip, Wire::Ipip},
                            Case{Mode::GreFlow, Wire::Gre}, Case{Mode::Gre, Wire::Gre}}) {
    SCOPED_TRACE(modeTraits(mode).name);
    auto w = want(mode);
    auto r = progs.apply("ns", nsFd, &w);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_GT(*r, 0u);  // a new mode is a new program
    expected = 0;       // fresh maps, fresh counter
    for (const auto& pod : {kPod4, kPod6})
      for (const auto& vip : {kVip4, kVip6}) {
        std::string what = fmt::format("{} in {}", vip.str(), pod.str());
        if (wire == Wire::Ipip && pod.isV4() && vip.isV6()) {  // 6in4 (sit) is no ipip
          expectPassed(ether(encapsulate(wire, pod, inner(vip))), what.c_str());
          continue;
        }
        expectDecap(wire, pod, vip, what.c_str());
        ++expected;
      }
    EXPECT_EQ(decapped(), expected);
  }
}

TEST_F(PodDecapTest, EverythingElseIsLeftToTheDevice) {
  PodDecapPrograms progs;
  auto w = want(Mode::VxlanGpe);
  ASSERT_TRUE(progs.apply("ns", nsFd, &w));
  const IpAddress other = ip("203.0.113.99"), otherPod = ip("198.19.1.3");
  expectPassed(ether(encapsulate(Wire::Gpe, kPod4, inner(other))), "VIP not in the pod");
  expectPassed(ether(encapsulate(Wire::Gpe, otherPod, inner(kVip4))), "not the pod's address");
  expectPassed(ether(encapsulate(Wire::Gpe, kPod4, inner(kVip4), {.port = 4789})), "other port");
  expectPassed(ether(encapsulate(Wire::Gpe, kPod4, inner(kVip4), {.vni = 7})), "VNI 7");
  expectPassed(ether(encapsulate(Wire::Gpe, kPod4, inner(kVip4), {.gpeFlags = 0x0d})), "OAM");
  expectPassed(ether(encapsulate(Wire::Gpe, kPod4, inner(kVip4), {.ipOptions = true})),
               "IP options");
  expectPassed(ether(encapsulate(Wire::Gpe, kPod4, inner(kVip4), {.fragment = true})),
               "a fragment");
  expectPassed(ether(encapsulate(Wire::Gre, kPod4, inner(kVip4))), "GRE in vxlan-gpe mode");
  expectPassed(ether(inner(kVip4)), "a plain packet to the VIP");
  EXPECT_EQ(decapped(), 0u);

  auto g = want(Mode::GreFlow);
  ASSERT_TRUE(progs.apply("ns", nsFd, &g));
  expectPassed(ether(encapsulate(Wire::Gre, kPod4, inner(kVip4), {.greFlags = 0x2000})),
               "GRE with a key");
  expectPassed(ether(encapsulate(Wire::Gre, kPod6, inner(kVip6), {.greFlags = 0x8000})),
               "GRE with a checksum");
  expectPassed(ether(encapsulate(Wire::Gpe, kPod4, inner(kVip4))), "vxlan-gpe in gre mode");
  expectDecap(Wire::Gre, kPod4, kVip4, "plain GRE");
}

TEST_F(PodDecapTest, OwnedAdoptedWithZeroChangesAndRemoved) {
  PodDecapPrograms progs;
  auto w = want(Mode::VxlanGpe);
  auto r = progs.apply("ns", nsFd, &w);
  ASSERT_TRUE(r) << r.error().message;
  // load + attach on the one interface + 4 addresses.
  EXPECT_EQ(*r, 1u + 1u + 4u);
  int first = attachedProg();
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  ASSERT_EQ(bpf_obj_get_info_by_fd(first, &info, &len), 0);
  close(first);
  EXPECT_STREQ(info.name, bpf::kPodDecapProgName);
  const uint32_t progId = info.id;

  auto again = progs.apply("ns", nsFd, &w);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, 0u);
  PodDecapPrograms restarted;  // a restarted agent: no memory, reads it back
  auto adopted = restarted.apply("ns", nsFd, &w);
  ASSERT_TRUE(adopted) << adopted.error().message;
  EXPECT_EQ(*adopted, 0u);
  expectDecap(Wire::Gpe, kPod4, kVip6, "after the restart");

  // One VIP leaves: one map entry, the same program.
  auto fewer = w;
  fewer.vips.erase(kVip6);
  auto rm = restarted.apply("ns", nsFd, &fewer);
  ASSERT_TRUE(rm);
  EXPECT_EQ(*rm, 1u);
  auto seen = PodDecapPrograms::observe();
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen->attached, std::set<std::string>{dev});
  EXPECT_EQ(seen->addrs, podDecapAddrs(fewer));
  EXPECT_EQ(seen->program, bpf::podDecapProgramId(fewer));
  expectPassed(ether(encapsulate(Wire::Gpe, kPod4, inner(kVip6))), "a removed VIP");
  expectDecap(Wire::Gpe, kPod4, kVip4, "the remaining VIP");
  int now = attachedProg();
  info = {};
  len = sizeof(info);
  ASSERT_EQ(bpf_obj_get_info_by_fd(now, &info, &len), 0);
  close(now);
  EXPECT_EQ(info.id, progId) << "a VIP change must not reload the program";

  // A filter at another priority on the same hook is not ours and stays (even running a
  // program of the same name).
  DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = int(if_nametoindex(dev.c_str())),
                      .attach_point = BPF_TC_INGRESS);
  int ours = attachedProg();
  DECLARE_LIBBPF_OPTS(bpf_tc_opts, foreign, .prog_fd = ours, .handle = 1, .priority = 7);
  ASSERT_EQ(bpf_tc_attach(&hook, &foreign), 0);
  close(ours);
  auto gone = restarted.apply("ns", nsFd, nullptr);
  ASSERT_TRUE(gone);
  EXPECT_EQ(*gone, 1u);
  seen = PodDecapPrograms::observe();
  ASSERT_TRUE(seen);
  EXPECT_TRUE(seen->attached.empty());
  EXPECT_EQ(attachedProg(), -1);
  DECLARE_LIBBPF_OPTS(bpf_tc_opts, still, .handle = 1, .priority = 7);
  EXPECT_EQ(bpf_tc_query(&hook, &still), 0) << "the foreign filter was removed";
  auto none = restarted.apply("ns", nsFd, nullptr);
  ASSERT_TRUE(none);
  EXPECT_EQ(*none, 0u);
}

TEST_F(PodDecapTest, NoInterfaceHoldingThePodAddressIsAnError) {
  PodDecapPrograms progs;
  auto w = want(Mode::VxlanGpe);
  w.podIps = {ip("198.19.9.9")};
  auto r = progs.apply("ns", nsFd, &w);
  EXPECT_FALSE(r);
  EXPECT_EQ(attachedProg(), -1);
}

}  // namespace
}  // namespace kst
