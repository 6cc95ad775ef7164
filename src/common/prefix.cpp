#include "common/prefix.h"

#include <array>
#include <charconv>
#include <cstring>

namespace kst {

namespace {

std::array<uint8_t, 16> bytesOf(const IpAddress& a) {
  std::array<uint8_t, 16> b{};
  std::memcpy(b.data(), a.data(), a.size());
  return b;
}

// Clears every bit past len; returns whether any was set.
bool clearHostBits(std::array<uint8_t, 16>& b, size_t width, uint8_t len) {
  bool any = false;
  for (size_t bit = len; bit < width * 8; ++bit) {
    uint8_t& byte = b[bit / 8];
    uint8_t mask = uint8_t(0x80 >> (bit % 8));
    if (byte & mask) any = true;
    byte &= uint8_t(~mask);
  }
  return any;
}

}  // namespace

std::optional<IpPrefix> IpPrefix::parse(std::string_view text) {
  auto slash = text.find('/');
  auto a = IpAddress::parse(text.substr(0, slash));
  if (!a) return std::nullopt;
  unsigned len = a->hostPrefixLen();
  if (slash != std::string_view::npos) {
    auto digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3) return std::nullopt;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), len);
    if (ec != std::errc() || p != digits.data() + digits.size()) return std::nullopt;
    if (len > a->hostPrefixLen()) return std::nullopt;
  }
  auto b = bytesOf(*a);
  if (clearHostBits(b, a->size(), uint8_t(len))) return std::nullopt;
  IpPrefix out;
  out.addr_ = *a;
  out.len_ = uint8_t(len);
  return out;
}

IpPrefix IpPrefix::of(const IpAddress& a, uint8_t len) {
  if (len > a.hostPrefixLen()) len = a.hostPrefixLen();
  auto b = bytesOf(a);
  clearHostBits(b, a.size(), len);
  IpPrefix out;
  out.addr_ = IpAddress::fromBytes(a.family(), b.data());
  out.len_ = len;
  return out;
}

bool IpPrefix::contains(const IpAddress& a) const {
  if (a.family() != family()) return false;
  return of(a, len_).addr_ == addr_;
}

bool IpPrefix::overlaps(const IpPrefix& other) const {
  if (other.family() != family()) return false;
  return len_ <= other.len_ ? contains(other.addr_) : other.contains(addr_);
}

std::string IpPrefix::str() const { return addr_.str() + "/" + std::to_string(len_); }

uint64_t IpPrefix::size() const {
  unsigned hostBits = addr_.hostPrefixLen() - len_;
  if (hostBits >= 64) return UINT64_MAX;
  return uint64_t(1) << hostBits;
}

IpAddress IpPrefix::at(uint64_t i) const {
  auto b = bytesOf(addr_);
  // Add i to the address as a big-endian integer (carry stays inside the prefix: i < size()).
  for (int k = int(addr_.size()) - 1; k >= 0 && i; --k) {
    uint64_t sum = uint64_t(b[size_t(k)]) + (i & 0xff);
    b[size_t(k)] = uint8_t(sum);
    i = (i >> 8) + (sum >> 8);
  }
  return IpAddress::fromBytes(addr_.family(), b.data());
}

}  // namespace kst
