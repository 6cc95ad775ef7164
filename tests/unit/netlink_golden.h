// Shared by the netlink golden-byte tests (netlink_codec_test.cpp, netlink_modes_golden_test.cpp,
// nft_codec_test.cpp):
// reading a captured message (hex bytes, '#' comments; tests/data/netlink/strace_to_hex.py) and
// flattening its attributes into path → payload hex, so ours and iproute2's can be compared
// attribute by attribute.
#pragma once

#include <gtest/gtest.h>
#include <libmnl/libmnl.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "linux/netlink_codec.h"

namespace kst::nl::golden_bytes {

inline const nlmsghdr* hdr(const Message& m) { return reinterpret_cast<const nlmsghdr*>(m.data()); }

inline std::string hex(const void* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) {
    s.push_back(d[b[i] >> 4]);
    s.push_back(d[b[i] & 15]);
  }
  return s;
}

/** The bytes of a capture file (hex, whitespace ignored, '#' lines are comments). */
inline std::vector<uint8_t> readHexBytes(const std::string& path, const std::string& name) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << "missing golden " << name;
  std::vector<uint8_t> m;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("#")) continue;
    std::istringstream ls(line);
    for (std::string b; ls >> b;) m.push_back(static_cast<uint8_t>(std::stoul(b, nullptr, 16)));
  }
  return m;
}

/** One captured message; it must be at least a header and its nlmsg_len must match. */
inline Message readHexFile(const std::string& path, const std::string& name) {
  Message m = readHexBytes(path, name);
  if (m.size() >= sizeof(nlmsghdr)) {
    EXPECT_EQ(hdr(m)->nlmsg_len, m.size()) << name;
  } else {
    ADD_FAILURE() << name << ": shorter than a netlink header";
  }
  return m;
}

using Attrs = std::map<std::string, std::string>;  // "18/2/7" → payload hex, "{}" for nests

/** Walks attributes; `nested` paths (and, with flaggedNests, NLA_F_NESTED ones) are descended. */
inline void walk(const void* start, size_t len, const std::string& prefix,
                 const std::set<std::string>& nested, bool flaggedNests, Attrs& out) {
  auto* a = static_cast<const nlattr*>(start);
  int rem = static_cast<int>(len);
  while (mnl_attr_ok(a, rem)) {
    std::string path = (prefix.empty() ? "" : prefix + "/") + std::to_string(mnl_attr_get_type(a));
    EXPECT_FALSE(out.contains(path)) << "duplicate attribute " << path;
    if (nested.contains(path) || (flaggedNests && (a->nla_type & NLA_F_NESTED))) {
      out[path] = "{}";
      walk(mnl_attr_get_payload(a), mnl_attr_get_payload_len(a), path, nested, flaggedNests, out);
    } else {
      out[path] = hex(mnl_attr_get_payload(a), mnl_attr_get_payload_len(a));
    }
    rem -= static_cast<int>(MNL_ALIGN(a->nla_len));
    a = mnl_attr_next(a);
  }
  EXPECT_EQ(rem, 0) << "trailing bytes after attributes at " << prefix;
}

/** The attributes after the family header of message m. */
inline Attrs attrs(const Message& m, size_t familyHeader, const std::set<std::string>& nested,
                   bool flaggedNests) {
  Attrs out;
  auto* h = hdr(m);
  auto* first = mnl_nlmsg_get_payload_offset(h, familyHeader);
  auto* tail = static_cast<const char*>(mnl_nlmsg_get_payload_tail(h));
  walk(first, static_cast<size_t>(tail - static_cast<const char*>(first)), "", nested,
       flaggedNests, out);
  return out;
}

}  // namespace kst::nl::golden_bytes
