// Kubernetes object decoding (JSON as served by the API; YAML manifests are converted to the
// same JSON first). Never throws: a malformed object yields an Error naming the field.
#pragma once

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "common/error.h"
#include "model/objects.h"

namespace kst {

Result<ServiceObject> decodeService(const nlohmann::json& j);
Result<EndpointSliceObject> decodeEndpointSlice(const nlohmann::json& j);

/** Adds a decoded object (Service, EndpointSlice, or a List of them) to objs.
 *  Other kinds are ignored. */
Status addObject(const nlohmann::json& j, ClusterObjects& objs);

/** yaml-cpp node → JSON (scalars typed the way Kubernetes YAML is: bool, int, string). */
nlohmann::json yamlToJson(const YAML::Node& n);

}  // namespace kst
