// A directory of Kubernetes-format manifests (*.yaml, *.yml, *.json; several documents per
// file; v1 Service, discovery.k8s.io/v1 EndpointSlice, or Lists of them), followed with
// inotify. A file that fails to parse keeps its last good content (and is logged), so a
// half-written or broken file never withdraws services that were already programmed.
#pragma once

#include <atomic>
#include <map>
#include <string>
#include <thread>

#include "source/source.h"

namespace kst {

/** Parses one file's text. Errors name the document. Pure. */
Result<ClusterObjects> parseManifestText(const std::string& text, const std::string& fileName);

class ManifestSource : public Source {
 public:
  explicit ManifestSource(std::string dir);
  ~ManifestSource() override;
  Status start(Callback cb) override;
  void stop() override;
  std::string name() const override { return "manifests:" + dir_; }
  /** Reads the directory once (no thread); for `kube-service-tunnel check` and tests. */
  ClusterObjects loadOnce();

 private:
  void run();
  ClusterObjects reload();
  std::string dir_;
  Callback cb_;
  std::thread thread_;
  int inotify_ = -1;
  int stopFd_ = -1;
  std::map<std::string, ClusterObjects> lastGood_;  // per file
};

}  // namespace kst
