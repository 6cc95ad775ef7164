// hashing/jhash.h against values the kernel computed: nft rules `meta mark set jhash …` in a
// namespace's prerouting hook stored their result in a dynamic map for datagrams, TCP SYNs and
// an ICMP echo sent over lo (Debian 12 kernel, nft 1.0.6, x86-64). The privileged test
// tests/privileged/explain_test.cpp checks the same through the router's own table.
#include "hashing/jhash.h"

#include <gtest/gtest.h>

namespace kst {
namespace {

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

struct Vector {
  uint16_t sport;
  uint32_t want;
};

/** Each source port's 5-tuple hashes to what the kernel stored for it. */
void expectKernelValues(const NftJhash& h, const char* src, const char* dst, uint16_t dport,
                        size_t registerBytes, std::initializer_list<Vector> vectors) {
  for (auto [sport, want] : vectors) {
    auto r = flowHashInput(ip(src), ip(dst), true, sport, dport);
    EXPECT_EQ(r.bytes().size(), registerBytes);
    EXPECT_EQ(h.eval(r.bytes()), want) << "sport " << sport;
  }
}

TEST(Jhash, Ipv4FiveTupleFullRangeMatchesTheKernel) {
  // jhash ip saddr . ip daddr . th sport . th dport mod 4294967295 seed 0x2a
  expectKernelValues({0xffffffffu, 0x2a, 0}, "10.9.0.1", "10.9.0.2", 8080, 16,
                     {{1, 0x711de897}, {12345, 0xaac5ebf3}, {40000, 0x48606888}, {40001, 0x8a5fb22f}});
}

TEST(Jhash, Ipv4BucketWithModAndOffsetMatchesTheKernel) {
  // The router's bucket hash: … mod 64 seed 0x2a offset 0x40000000 (TCP SYNs to port 80).
  expectKernelValues({64, 0x2a, 0x40000000}, "10.9.0.1", "10.9.0.2", 80, 16,
                     {{1, 0x4000000d}, {12345, 0x40000013}, {40000, 0x40000016}, {40001, 0x40000023}});
}

TEST(Jhash, Ipv6FiveTupleMatchesTheKernel) {
  // jhash ip6 saddr . ip6 daddr . th sport . th dport mod 4294967295 seed 0x6b737431 (the first
  // half of the router's IPv6 flow key), 40 bytes: three whole blocks and a 4-byte tail.
  expectKernelValues({0xffffffffu, 0x6b737431, 0}, "fd00::1", "fd00::2", 53, 40,
                     {{1, 0x14a87889}, {12345, 0x9ba5e140}, {40000, 0x45963cba}, {40001, 0x45ae8ccf}});
}

TEST(Jhash, AddressPairWithoutPortsMatchesTheKernel) {
  // ICMP and other protocols: jhash ip saddr . ip daddr (8 bytes, tail only).
  const NftJhash h{0xffffffffu, 0x2a, 0};
  auto r = flowHashInput(ip("10.9.0.1"), ip("10.9.0.2"), false, 0, 0);
  EXPECT_EQ(r.bytes().size(), 8u);
  EXPECT_EQ(h.eval(r.bytes()), 0xfd04428eu);
}

TEST(Jhash, RegistersPadEveryFieldToFourBytes) {
  NftRegisters r;
  r.port(0x1f90).add(ip("10.9.0.2")).port(1);
  const std::vector<uint8_t> want{0x1f, 0x90, 0, 0, 10, 9, 0, 2, 0, 1, 0, 0};
  EXPECT_EQ(std::vector<uint8_t>(r.bytes().begin(), r.bytes().end()), want);
}

TEST(Jhash, ReciprocalScaleStaysInRange) {
  EXPECT_EQ(reciprocalScale(0xffffffffu, 64), 63u);
  EXPECT_EQ(reciprocalScale(0, 64), 0u);
  EXPECT_EQ(reciprocalScale(0x80000000u, 64), 32u);
  EXPECT_EQ(reciprocalScale(5, 0xffffffffu), 4u);
}

TEST(Jhash, EmptyKeyIsTheInitialValue) {
  EXPECT_EQ(jhash({}, 0), 0xdeadbeefu);
  EXPECT_EQ(jhash({}, 1), 0xdeadbef0u);
}

}  // namespace
}  // namespace kst
