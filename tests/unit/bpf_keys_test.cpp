// The pure parts of the bpf classifier (linux/bpf_classifier.h): the maps' address encoding,
// source intervals cut into LPM prefixes, and the skeleton id kept in the config map.
#include <gtest/gtest.h>

#include <random>

#include "linux/bpf_classifier.h"

namespace kst {
namespace {

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

using U128 = unsigned __int128;
U128 value(const std::array<uint8_t, 16>& k) {
  U128 v = 0;
  for (uint8_t b : k) v = (v << 8) | b;
  return v;
}

TEST(BpfKeys, AddressesAreMappedAndReadBack) {
  auto k = bpf::mapKey(ip("203.0.113.10"));
  const std::array<uint8_t, 16> want{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 10};
  EXPECT_EQ(k, want);
  EXPECT_EQ(bpf::fromMapKey(k.data()), ip("203.0.113.10"));
  for (const char* s : {"2001:db8::1", "::", "fe80::ffff:1", "0.0.0.0", "255.255.255.255"})
    EXPECT_EQ(bpf::fromMapKey(bpf::mapKey(ip(s)).data()), ip(s)) << s;
}

TEST(BpfKeys, PrefixesCoverAnIntervalExactly) {
  // Known decompositions.
  auto p = bpf::coverPrefixes(ip("10.0.0.0"), ip("10.0.0.255"));
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].second, 96 + 24);
  EXPECT_EQ(bpf::fromMapKey(p[0].first.data()), ip("10.0.0.0"));
  EXPECT_EQ(bpf::coverPrefixes(ip("10.0.0.1"), ip("10.0.0.6")).size(), 4u);  // /32 /31 /31 /32
  EXPECT_EQ(bpf::coverPrefixes(ip("0.0.0.0"), ip("255.255.255.255")).size(), 1u);
  EXPECT_EQ(bpf::coverPrefixes(ip("0.0.0.0"), ip("255.255.255.255"))[0].second, 96);
  EXPECT_EQ(bpf::coverPrefixes(ip("::"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))[0].second, 0);
  EXPECT_TRUE(bpf::coverPrefixes(ip("10.0.0.2"), ip("10.0.0.1")).empty());
  EXPECT_TRUE(bpf::coverPrefixes(ip("10.0.0.1"), ip("2001:db8::1")).empty());
  // Random intervals: the prefixes are aligned, contiguous, in order, and span [first, last].
  std::mt19937_64 rng(3);
  for (int i = 0; i < 2000; ++i) {
    const bool v6 = i % 2;
    uint8_t a[16], b[16];
    for (int j = 0; j < 16; ++j) a[j] = b[j] = uint8_t(rng());
    // Share a random-length top part so that intervals of every size occur.
    const int keep = int(rng() % (v6 ? 16 : 4));
    for (int j = keep; j < (v6 ? 16 : 4); ++j) b[j] = uint8_t(rng());
    IpAddress x = IpAddress::fromBytes(v6 ? Family::V6 : Family::V4, a);
    IpAddress y = IpAddress::fromBytes(v6 ? Family::V6 : Family::V4, b);
    if (y < x) std::swap(x, y);
    auto ps = bpf::coverPrefixes(x, y);
    ASSERT_FALSE(ps.empty());
    ASSERT_LE(ps.size(), v6 ? 254u : 62u);
    U128 next = value(bpf::mapKey(x));
    for (auto& [addr, len] : ps) {
      const U128 start = value(addr);
      ASSERT_EQ(start, next);
      const int host = 128 - len;
      const U128 size = host == 128 ? 0 : (U128(1) << host);  // 0: all of the space
      if (host < 128) ASSERT_EQ(start & (size - 1), U128(0)) << "unaligned prefix";
      ASSERT_GE(len, v6 ? 0 : 96);
      next = start + size;
    }
    ASSERT_EQ(next - 1, value(bpf::mapKey(y)));
  }
}

TEST(BpfKeys, SkeletonIdAdoptsOnlyTheSameProgramAndMode) {
  DataplaneConfig a, b;
  b.mode = Mode::Ipip;
  const std::string pa = bpf::programId(a), pb = bpf::programId(b);
  EXPECT_NE(pa, pb);
  EXPECT_EQ(pa, bpf::programId(a));  // stable
  const std::string stored = bpf::storedId(pa, "0123456789abcdef");
  EXPECT_EQ(bpf::adoptedSkeletonId(stored, pa), "0123456789abcdef");
  EXPECT_EQ(bpf::adoptedSkeletonId(stored, pb), std::nullopt);
  EXPECT_EQ(bpf::adoptedSkeletonId("", pa), std::nullopt);
  EXPECT_EQ(bpf::adoptedSkeletonId(pa, pa), std::nullopt);
}

}  // namespace
}  // namespace kst
