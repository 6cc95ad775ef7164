// libFuzzer target: bodies the API server (or anything answering in its place) returns: error
// bodies (k8s/http.h statusMessage) and list pages, whose items go through the same decoders as
// the source's cache and the manifest directory (source/decode.h).
#include <cstdint>
#include <string>

#include "k8s/http.h"
#include "k8s/kube_source.h"
#include "source/decode.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string body(reinterpret_cast<const char*>(data), size);
  (void)kst::k8s::statusMessage(body);
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) return 0;
  kst::ClusterObjects objs;
  std::vector<std::string> skipped;
  (void)kst::addObject(j, objs, &skipped);
  if (j.is_object() && j.contains("items") && j["items"].is_array()) {
    kst::k8s::KubeSourceOptions o;
    for (const auto& item : j["items"]) {
      (void)kst::k8s::cacheService(item, o);
      (void)kst::k8s::cacheSlice(item, o);
      (void)kst::k8s::cacheTable(item);
    }
  }
  for (auto& [k, s] : objs.services)
    for (auto& [a, v] : s.annotations) (void)nlohmann::json(v).dump(-1, ' ', false,
                                                                   nlohmann::json::error_handler_t::replace);
  return 0;
}
