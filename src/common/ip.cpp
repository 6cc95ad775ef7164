#include "common/ip.h"

#include <arpa/inet.h>

#include <cstring>

namespace kst {

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  std::string s(text);
  IpAddress a;
  if (s.find(':') == std::string::npos) {
    if (inet_pton(AF_INET, s.c_str(), a.bytes_.data()) != 1) return std::nullopt;
    a.family_ = Family::V4;
  } else {
    if (inet_pton(AF_INET6, s.c_str(), a.bytes_.data()) != 1) return std::nullopt;
    a.family_ = Family::V6;
  }
  return a;
}

IpAddress IpAddress::fromV4(uint32_t networkOrder) {
  IpAddress a;
  std::memcpy(a.bytes_.data(), &networkOrder, 4);
  return a;
}

IpAddress IpAddress::fromBytes(Family family, const void* bytes) {
  IpAddress a;
  a.family_ = family;
  std::memcpy(a.bytes_.data(), bytes, family == Family::V4 ? 4 : 16);
  return a;
}

int IpAddress::af() const { return isV4() ? AF_INET : AF_INET6; }

std::string IpAddress::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(af(), bytes_.data(), buf, sizeof buf);
  return buf;
}

std::string IpAddress::hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < size(); ++i) {
    out.push_back(kDigits[bytes_[i] >> 4]);
    out.push_back(kDigits[bytes_[i] & 15]);
  }
  return out;
}

}  // namespace kst

size_t std::hash<kst::IpAddress>::operator()(const kst::IpAddress& a) const noexcept {
  size_t h = static_cast<size_t>(a.family());
  for (size_t i = 0; i < a.size(); ++i) h = h * 1099511628211ULL ^ a.data()[i];
  return h;
}
