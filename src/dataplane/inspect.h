// Read-only views of the router's nft table that only the `status` and `explain` commands need
// (the reconcilers never do): the hash expressions of the classifier as the kernel holds them,
// and single flow-table lookups. Real implementation: linux/nft_inspect.h; fake: tests/fakes.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/ip.h"

namespace kst::dp {

/** One `jhash FIELD . FIELD … mod M seed S offset O` expression of a classifier rule. */
struct JhashExpr {
  std::vector<std::string> fields;  // "ip saddr", "ip6 daddr", "th sport", …
  uint32_t mod = 0;
  uint32_t seed = 0;
  uint32_t offset = 0;
  bool operator==(const JhashExpr&) const = default;
};

/** A rule that sets the packet mark to a bucket hash. */
struct BucketHashRule {
  /** Which packets reach it: `meta l4proto { tcp, udp, sctp }`, `meta l4proto != { … }`, or
   *  no protocol match. */
  enum class Protocols : uint8_t { WithPorts, WithoutPorts, Any };
  Protocols protocols = Protocols::Any;
  JhashExpr hash;
  bool operator==(const BucketHashRule&) const = default;
};

/** The hash expressions of one family's classifier chain (classify4 / classify6). */
struct ClassifierHashes {
  std::vector<BucketHashRule> buckets;  // in rule order
  /** One part of the flow map's key: a packet field ("ip saddr", "th sport", …) or a hash. */
  struct KeyPart {
    std::string field;                // when hash is empty
    std::optional<JhashExpr> hash;
    bool operator==(const KeyPart&) const = default;
  };
  /** The key under which the flow map pins a flow (`meta mark set KEY map @flowN`), in key
   *  order: IPv4 the plain 4-tuple, IPv6 two jhashes of it; empty when no rule reads the map. */
  std::vector<KeyPart> flowKey;
  bool operator==(const ClassifierHashes&) const = default;
};

class NftInspector {
 public:
  virtual ~NftInspector() = default;
  /** The hash expressions of the family's classifier chain; an error when the table or chain
   *  is missing. */
  virtual Result<ClassifierHashes> classifier(Family family) = 0;
  /** The data (slot mark) of the flow map's element with this key (flow4: 16 bytes, flow6: 8),
   *  nullopt when there is none. */
  virtual Result<std::optional<uint32_t>> flowMark(Family family, std::span<const uint8_t> key) = 0;
};

}  // namespace kst::dp
