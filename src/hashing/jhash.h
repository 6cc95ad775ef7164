// The hash of the router's classifier, in user space and bit-exact with the kernel: nftables'
// `jhash EXPR mod M seed S offset O` expression (net/netfilter/nft_hash.c, nft_jhash_eval) is
//
//     reciprocal_scale(jhash(registers, len, S), M) + O
//
// where jhash is Bob Jenkins' lookup3 as include/linux/jhash.h has it and `registers` are the
// bytes of the concatenated fields as the payload expressions left them: every field starts a
// 32-bit register of its own and is zero-padded to a multiple of 4 bytes (nft_payload_eval
// clears the register's last word before it copies a field shorter than it). So
// `ip saddr . ip daddr . th sport . th dport` hashes 16 bytes: the two addresses (network
// order), then each port (network order) followed by two zero bytes; the IPv6 form hashes 40.
//
// Used by `explain` (which bucket a 5-tuple takes, which flow-table key it pins); meant as well
// for any datapath that has to pick the same bucket as the nft classifier (e.g. tc-BPF).
// Byte order: jhash reads whole 32-bit words in the CPU's order (the kernel's
// __get_unaligned_cpu32), so the result is the one of a kernel on a CPU of this byte order.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/ip.h"

namespace kst {

/** The kernel's jhash(key, length, initval). */
uint32_t jhash(std::span<const uint8_t> key, uint32_t initval);

/** The kernel's reciprocal_scale(val, ep_ro): val scaled into [0, ep_ro) without a division. */
inline uint32_t reciprocalScale(uint32_t val, uint32_t epRo) {
  return uint32_t((uint64_t(val) * epRo) >> 32);
}

/** One nft `jhash … mod M seed S offset O` expression. */
struct NftJhash {
  uint32_t mod = 0;  // the kernel refuses mod ≤ 1
  uint32_t seed = 0;
  uint32_t offset = 0;
  /** The expression's value for the registers of its concatenated fields. */
  uint32_t eval(std::span<const uint8_t> registers) const {
    return reciprocalScale(jhash(registers, seed), mod) + offset;
  }
};

/** The register bytes of a concatenation (`a . b . c`), each field padded to 4 bytes. */
class NftRegisters {
 public:
  NftRegisters& add(std::span<const uint8_t> field);
  NftRegisters& add(const IpAddress& a) { return add(std::span<const uint8_t>(a.data(), a.size())); }
  /** A transport port (th sport / th dport), given in host order, stored in network order. */
  NftRegisters& port(uint16_t p);
  /** A 32-bit value in host order (meta mark, a jhash result). */
  NftRegisters& word(uint32_t v);
  std::span<const uint8_t> bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

/** The registers the classifier's bucket hash reads: saddr . daddr [. sport . dport]. */
NftRegisters flowHashInput(const IpAddress& src, const IpAddress& dst, bool ports, uint16_t sport,
                           uint16_t dport);

}  // namespace kst
