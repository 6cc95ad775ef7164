// IP prefixes (CIDR blocks) as value types: parsing, containment and address arithmetic inside a
// prefix, for the VIP ownership policy and address pools.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/ip.h"

namespace kst {

class IpPrefix {
 public:
  IpPrefix() = default;
  /** "203.0.113.0/24", "2001:db8::/64"; a bare address is a host prefix. Host bits must be
   *  zero ("10.0.0.1/8" is refused: a typo in a policy must not widen it silently). */
  static std::optional<IpPrefix> parse(std::string_view text);
  /** The prefix of length len that holds a (host bits cleared). len ≤ the family's width. */
  static IpPrefix of(const IpAddress& a, uint8_t len);

  const IpAddress& address() const { return addr_; }
  uint8_t length() const { return len_; }
  Family family() const { return addr_.family(); }
  bool contains(const IpAddress& a) const;
  /** True when the two prefixes share at least one address. */
  bool overlaps(const IpPrefix& other) const;
  std::string str() const;
  /** The number of addresses, saturated at 2^64 - 1 (IPv6 prefixes shorter than /64). */
  uint64_t size() const;
  /** The address at offset i from the start (i < size()). */
  IpAddress at(uint64_t i) const;

  auto operator<=>(const IpPrefix&) const = default;

 private:
  IpAddress addr_;
  uint8_t len_ = 0;
};

}  // namespace kst
