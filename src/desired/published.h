// Published bucket decisions: the bucket table of a tunnelled Service written into the Service
// itself (annotation kPublishedAnnotation), by one elected router, so that `kubectl` shows which
// endpoint serves which bucket and a restarted or new router adopts exactly the same table,
// slots included (its kernel tables then equal the others').
//
//   kube-service-tunnel.cmd.nu/buckets: {"v":1,"buckets":64,"seed":42,
//     "endpoints":[{"ip":"198.19.1.2","slot":0,"buckets":"0-3,17"},
//                  {"ip":"198.19.2.2","slot":1,"draining":true,"buckets":""}, ...]}
//
// Routers use a published table only when it matches their configuration (B, seed) and the
// current endpoint set exactly (same active endpoints, every draining endpoint listed);
// otherwise they compute the table themselves — the computation is a pure function of the
// endpoint set, so they still agree, and the elected writer republishes.
#pragma once

#include <optional>
#include <string>

#include "desired/config.h"
#include "desired/router.h"

namespace kst {

inline constexpr const char* kPublishedAnnotation = "kube-service-tunnel.cmd.nu/buckets";

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
/** Parses and validates (every bucket assigned at most once, indexes in range). */
std::optional<PublishedTable> decodePublished(const std::string& json);

}  // namespace kst
