#include "hashing/jhash.h"

#include <bit>
#include <cstring>

namespace kst {

namespace {

constexpr uint32_t kJhashInitval = 0xdeadbeef;

inline void mix(uint32_t& a, uint32_t& b, uint32_t& c) {
  a -= c; a ^= std::rotl(c, 4);  c += b;
  b -= a; b ^= std::rotl(a, 6);  a += c;
  c -= b; c ^= std::rotl(b, 8);  b += a;
  a -= c; a ^= std::rotl(c, 16); c += b;
  b -= a; b ^= std::rotl(a, 19); a += c;
  c -= b; c ^= std::rotl(b, 4);  b += a;
}

inline void finalMix(uint32_t& a, uint32_t& b, uint32_t& c) {
  c ^= b; c -= std::rotl(b, 14);
  a ^= c; a -= std::rotl(c, 11);
  b ^= a; b -= std::rotl(a, 25);
  c ^= b; c -= std::rotl(b, 16);
  a ^= c; a -= std::rotl(c, 4);
  b ^= a; b -= std::rotl(a, 14);
  c ^= b; c -= std::rotl(b, 24);
}

inline uint32_t cpuWord(const uint8_t* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

}  // namespace

uint32_t jhash(std::span<const uint8_t> key, uint32_t initval) {
  auto length = uint32_t(key.size());
  const uint8_t* k = key.data();
  uint32_t a, b, c;
  a = b = c = kJhashInitval + length + initval;
  // Whole 12-byte blocks in the CPU's word order, all but the last (which may be whole too).
  while (length > 12) {
    a += cpuWord(k);
    b += cpuWord(k + 4);
    c += cpuWord(k + 8);
    mix(a, b, c);
    length -= 12;
    k += 12;
  }
  if (length == 0) return c;  // nothing left: no final mix (only for an empty key)
  // The last 1 … 12 bytes, byte by byte, little-endian whatever the CPU (the kernel's switch
  // with fall-throughs).
  uint32_t* words[3] = {&a, &b, &c};
  for (uint32_t i = 0; i < length; ++i) *words[i / 4] += uint32_t(k[i]) << (8 * (i % 4));
  finalMix(a, b, c);
  return c;
}

NftRegisters& NftRegisters::add(std::span<const uint8_t> field) {
  bytes_.insert(bytes_.end(), field.begin(), field.end());
  bytes_.resize((bytes_.size() + 3) / 4 * 4, 0);
  return *this;
}

NftRegisters& NftRegisters::port(uint16_t p) {
  const uint8_t be[2] = {uint8_t(p >> 8), uint8_t(p)};
  return add(be);
}

NftRegisters& NftRegisters::word(uint32_t v) {
  uint8_t w[4];
  std::memcpy(w, &v, 4);
  return add(w);
}

NftRegisters flowHashInput(const IpAddress& src, const IpAddress& dst, bool ports, uint16_t sport,
                           uint16_t dport) {
  NftRegisters r;
  r.add(src).add(dst);
  if (ports) r.port(sport).port(dport);
  return r;
}

}  // namespace kst
