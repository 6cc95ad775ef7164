// IP addresses as small value types (no allocation, ordered, hashable) so that desired and
// observed kernel state can be compared as plain sets.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace kst {

enum class Family : uint8_t { V4 = 4, V6 = 6 };

/** An IPv4 or IPv6 address in network byte order. */
class IpAddress {
 public:
  IpAddress() = default;
  static std::optional<IpAddress> parse(std::string_view text);
  static IpAddress fromV4(uint32_t networkOrder);
  static IpAddress fromBytes(Family family, const void* bytes);

  Family family() const { return family_; }
  bool isV4() const { return family_ == Family::V4; }
  bool isV6() const { return family_ == Family::V6; }
  /** AF_INET or AF_INET6. */
  int af() const;
  /** 4 or 16. */
  size_t size() const { return isV4() ? 4 : 16; }
  const uint8_t* data() const { return bytes_.data(); }
  /** Host prefix length: 32 or 128. */
  uint8_t hostPrefixLen() const { return isV4() ? 32 : 128; }
  std::string str() const;
  /** Lower-case hex of the address bytes, e.g. "c6336405" for 198.51.100.5. */
  std::string hex() const;

  auto operator<=>(const IpAddress&) const = default;
  bool operator==(const IpAddress&) const = default;

 private:
  Family family_ = Family::V4;
  std::array<uint8_t, 16> bytes_{};
};

}  // namespace kst

template <>
struct std::hash<kst::IpAddress> {
  size_t operator()(const kst::IpAddress& a) const noexcept;
};
