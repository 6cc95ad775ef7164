// Kernel features the VM harness must provide; built and run by
// tools/vm/selftest.sh.
//
// Each test runs in a fresh network namespace (unshare(CLONE_NEWNET) in
// SetUp; the shell commands it starts inherit it), so nothing is left behind
// on any machine.  On the dev/CI host kernel (6.18, no GRE, IPIP or MPLS) the
// GRE, IPIP and MPLS tests FAIL by design; in the VM (Debian's kernel) all
// pass.  The commands go through ip(8) and nft(8) to keep this file small;
// the project's own tests talk netlink directly, which is much cheaper under
// TCG than one process per command.
#include <gtest/gtest.h>

#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace {

// Runs `cmd` with /bin/sh; returns its exit status, or -1 if it was killed.
int Sh(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Runs `cmd` with /bin/sh and returns what it printed on stdout and stderr.
std::string Capture(const std::string& cmd) {
  std::string out;
  FILE* pipe = ::popen((cmd + " 2>&1").c_str(), "r");
  if (pipe == nullptr) {
    return out;
  }
  std::array<char, 4096> buf{};
  size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) {
    out.append(buf.data(), n);
  }
  ::pclose(pipe);
  return out;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class KernelFeatures : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) {
      GTEST_SKIP() << "needs root; run it in the VM with tools/vm/selftest.sh";
    }
    ASSERT_EQ(::unshare(CLONE_NEWNET), 0) << "unshare(CLONE_NEWNET): " << std::strerror(errno);
    ASSERT_EQ(Sh("ip link set lo up"), 0);
  }
};

TEST_F(KernelFeatures, GreDevice) {
  ASSERT_EQ(Sh("ip link add kst_gre type gre local 127.0.0.1 remote 127.0.0.2 ttl 64"), 0)
      << "no ip_gre in this kernel?";
  const std::string link = Capture("ip -d link show kst_gre");
  EXPECT_TRUE(Contains(link, "gre remote 127.0.0.2 local 127.0.0.1")) << link;
}

TEST_F(KernelFeatures, IpipExternalDevice) {
  ASSERT_EQ(Sh("ip link add kst_ipip type ipip external"), 0) << "no ipip in this kernel?";
  const std::string link = Capture("ip -d link show kst_ipip");
  EXPECT_TRUE(Contains(link, "ipip external")) << link;
}

TEST_F(KernelFeatures, GreExternalDevice) {
  ASSERT_EQ(Sh("ip link add kst_grex type gre external"), 0) << "no ip_gre in this kernel?";
  const std::string link = Capture("ip -d link show kst_grex");
  EXPECT_TRUE(Contains(link, "gre external")) << link;
}

TEST_F(KernelFeatures, MplsPlatformLabels) {
  // In the VM `modprobe` is busybox's, reading the guest kernel's modules.
  ASSERT_EQ(Sh("modprobe mpls_router"), 0) << "cannot load mpls_router";
  const char* path = "/proc/sys/net/mpls/platform_labels";
  {
    std::ofstream out(path);
    ASSERT_TRUE(out.good()) << path << " is missing: no MPLS routing";
    out << 1024 << '\n';
  }
  std::ifstream in(path);
  int labels = 0;
  in >> labels;
  EXPECT_EQ(labels, 1024);
}

TEST_F(KernelFeatures, MplsEncapRouteOnDummy) {
  ASSERT_EQ(Sh("ip link add kst_dummy type dummy && ip link set kst_dummy up && "
                "ip addr add 198.18.0.1/24 dev kst_dummy"),
            0);
  ASSERT_EQ(Sh("ip route add 203.0.113.10/32 encap mpls 100 via 198.18.0.2 dev kst_dummy"), 0)
      << "no mpls_iptunnel in this kernel?";
  const std::string route = Capture("ip route show 203.0.113.10/32");
  EXPECT_TRUE(Contains(route, "encap mpls  100") || Contains(route, "encap mpls 100")) << route;
}

TEST_F(KernelFeatures, NftJhashRule) {
  ASSERT_EQ(Sh("nft add table ip kst_selftest && "
                "nft add chain ip kst_selftest pre '{ type filter hook prerouting priority 0; }' && "
                "nft add rule ip kst_selftest pre meta mark set jhash ip saddr mod 4 seed 0x2a"),
            0)
      << "nf_tables or nft_hash missing?";
  const std::string table = Capture("nft list table ip kst_selftest");
  EXPECT_TRUE(Contains(table, "jhash ip saddr mod 4 seed 0x2a")) << table;
}

}  // namespace
