// libFuzzer target: a watch stream (k8s/watch.h WatchDecoder, fed in chunks split where the
// first byte says) and what the source does with each event: decode the object as a Service,
// an EndpointSlice and a bucket table ConfigMap (k8s/kube_source.h), read its resourceVersion,
// and for ERROR events the Status message (as ListWatch::watch does).
#include <cstdint>
#include <string_view>

#include "k8s/http.h"
#include "k8s/kube_source.h"
#include "k8s/watch.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = 1 + data[0] % 64;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  kst::k8s::KubeSourceOptions router, agent;
  agent.router = false;
  agent.nodeName = "n1";
  kst::k8s::WatchDecoder dec(4096);
  auto sink = [&](kst::Result<kst::k8s::WatchEvent> r) {
    if (!r) return;
    (void)r->resourceVersion();
    if (r->type == kst::k8s::WatchEventType::Error) {
      (void)kst::k8s::statusMessage(
          r->object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      return;
    }
    (void)kst::k8s::cacheService(r->object, router);
    (void)kst::k8s::cacheSlice(r->object, router);
    (void)kst::k8s::cacheSlice(r->object, agent);
    (void)kst::k8s::cacheTable(r->object);
  };
  while (!in.empty()) {
    size_t n = std::min(chunk, in.size());
    dec.feed(in.substr(0, n), sink);
    in.remove_prefix(n);
  }
  return 0;
}
