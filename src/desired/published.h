// Published bucket decisions: the bucket table of a tunnelled Service, written by one elected
// router into a ConfigMap in the daemon's own namespace (one per Service, named
// publishedConfigMapName()), so that `kubectl` shows which endpoint serves which bucket and a
// restarted or new router adopts exactly the same table, slots included (its kernel tables then
// equal the others'). Not in the Service: a tenant can write its own Service, and must not be
// able to steer or stall the routers; only the tunnel tier can write its namespace.
//
//   data:
//     namespace: web            name: front            uid: 5c2a…   (the Service)
//     table: {"v":1,"buckets":64,"seed":42,
//       "endpoints":[{"ip":"198.19.1.2","slot":0,"buckets":"0-3,17"},
//                    {"ip":"198.19.2.2","slot":1,"draining":true,"buckets":""}, ...]}
//
// The table is still decoded as untrusted input (decodePublished: types, bounds, size).
//
// "buckets" is the VIP's own bucket count (it grows with the endpoints, hashing/balance.h).
// Routers follow a published table as it is when it matches their seed, the current endpoint
// set exactly (same active endpoints, every draining endpoint listed), the bucket count they
// compute for it, and is balanced; otherwise they compute the table from it (balancedTable with
// the published table as the base: a pure function of the published table and the endpoint
// set, so routers that read the same table agree), and the elected writer republishes.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "desired/config.h"
#include "desired/router.h"

namespace kst {

/** The ConfigMap holding the table of Service `ns/name`: "kst-buckets-" and 16 hex digits of
 *  FNV-1a 64 over "ns/name" (stable across versions and routers). */
std::string publishedConfigMapName(const std::string& ns, const std::string& name);

/** JSON for one VIP's plan (compact, stable key order). */
std::string encodePublished(const VipPlan& plan, const DataplaneConfig& cfg);

struct PublishedTable {
  uint32_t buckets = 0;
  uint32_t seed = 0;
  struct Ep {
    IpAddress ip;
    uint32_t slot;
    bool draining;
  };
  std::vector<Ep> endpoints;
  std::vector<int32_t> table;  // bucket → index into endpoints
};
/** Limits of a table that decodePublished accepts: its text, its bucket count, and endpoints
 *  beyond one per bucket (draining ones hold no bucket). */
inline constexpr size_t kMaxPublishedBytes = size_t(1) << 20;
inline constexpr uint32_t kMaxPublishedBuckets = 1u << 20;  // as --buckets
inline constexpr uint32_t kMaxPublishedDraining = 4096;
/** Parses and validates (types, every bucket assigned at most once, ranges within the bucket
 *  count). Never throws; anything else is nullopt. Input is untrusted (see above). */
std::optional<PublishedTable> decodePublished(std::string_view json);

}  // namespace kst
