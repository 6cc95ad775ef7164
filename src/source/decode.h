// Kubernetes object decoding (JSON as served by the API; YAML manifests are converted to the
// same JSON first, source/yaml.h). Never throws: a malformed object yields an Error naming the
// field; every field is type-checked before it is read (objects are written by tenants).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/objects.h"

namespace kst {

Result<ServiceObject> decodeService(const nlohmann::json& j);
Result<EndpointSliceObject> decodeEndpointSlice(const nlohmann::json& j);

/** A bucket table ConfigMap (desired/published.h): labelled
 *  app.kubernetes.io/managed-by=kube-service-tunnel, naming its Service in data. Not a
 *  validation of the table itself (the planner decodes that as untrusted). */
Result<PublishedTableObject> decodeTableConfigMap(const nlohmann::json& j);

/** Adds a decoded object (Service, EndpointSlice, a bucket table ConfigMap, or a List of them)
 *  to objs. Other kinds are ignored. An item of a List that cannot be decoded is skipped (its
 *  error appended to `skipped` when given) and the others are added. */
Status addObject(const nlohmann::json& j, ClusterObjects& objs,
                 std::vector<std::string>* skipped = nullptr);

/** JSON text of a value whose strings may hold invalid UTF-8 (replaced by U+FFFD; dump()'s
 *  default would throw). */
std::string safeDump(const nlohmann::json& j);

}  // namespace kst
