// libFuzzer target: one manifest file (source/manifest_source.h parseManifestText: libyaml,
// bounded, then the object decoders) and the model built from what it holds (model/model.h),
// published tables included.
#include <cstdint>
#include <string>

#include "model/model.h"
#include "source/manifest_source.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> skipped;
  auto objs = kst::parseManifestText(text, "fuzz.yaml", &skipped);
  if (!objs) return 0;
  (void)kst::buildModel(*objs, kst::ModelOptions{});
  return 0;
}
