// libFuzzer target: a kubeconfig file (k8s/kubeconfig.h parseKubeconfig; libyaml, bounded).
// Files it names are "missing" (the reader fails), so only the parsing is exercised.
#include <cstdint>
#include <string>

#include "k8s/kubeconfig.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  kst::k8s::FileReader none = [](const std::string& p) -> kst::Result<std::string> {
    return kst::fail(ENOENT, "no file " + p);
  };
  (void)kst::k8s::parseKubeconfig({{"/fuzz/config", text}}, "", none);
  (void)kst::k8s::parseKubeconfig({{"/fuzz/config", text}}, "ctx", none);
  return 0;
}
