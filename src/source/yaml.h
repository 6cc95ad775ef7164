// YAML (and JSON, which is YAML too) → JSON values, with libyaml, the reference C parser, through
// its event API. The decoders (source/decode.h, k8s/kubeconfig.h) then read JSON only.
// Input may be hostile (manifests, kubeconfig files): nothing here throws, and the output is
// bounded — nesting depth and the number of values produced (aliases included, so a "billion
// laughs" document fails instead of expanding). Scalars are typed the way Kubernetes YAML is:
// plain true/false, null/~/empty, integers; everything quoted or tagged !!str stays a string.
#pragma once

#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace kst {

struct YamlLimits {
  size_t maxDepth = 100;          // nested sequences/mappings
  size_t maxValues = size_t(1) << 20;  // JSON values produced, over all documents
  size_t maxAliasValues = 100000;      // of those, produced by expanding aliases
};

/** One JSON value per document (an empty document is null). Errors: "YAML error at line N: …"
 *  or a limit that was reached. */
Result<std::vector<nlohmann::json>> yamlDocuments(std::string_view text,
                                                  const YamlLimits& limits = {});

}  // namespace kst
