// dp::NftInspector in memory (tests/unit/inspect_test.cpp): the classifier's hash expressions
// as given, flow-map elements by key bytes.
#pragma once

#include <map>
#include <vector>

#include "dataplane/inspect.h"

namespace kst::fake {

class FakeInspector : public dp::NftInspector {
 public:
  std::map<Family, dp::ClassifierHashes> chains;
  std::map<std::pair<Family, std::vector<uint8_t>>, uint32_t> flows;
  int lookups = 0;

  Result<dp::ClassifierHashes> classifier(Family family) override {
    auto it = chains.find(family);
    if (it == chains.end()) return fail(ENOENT, "no classifier chain");
    return it->second;
  }
  Result<std::optional<uint32_t>> flowMark(Family family, std::span<const uint8_t> key) override {
    ++lookups;
    auto it = flows.find({family, std::vector<uint8_t>(key.begin(), key.end())});
    if (it == flows.end()) return std::optional<uint32_t>();
    return std::optional<uint32_t>(it->second);
  }
};

}  // namespace kst::fake
