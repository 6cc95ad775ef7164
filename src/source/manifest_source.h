// A directory of Kubernetes-format manifests (*.yaml, *.yml, *.json; several documents per
// file; v1 Service, discovery.k8s.io/v1 EndpointSlice, bucket table ConfigMaps labelled
// app.kubernetes.io/managed-by=kube-service-tunnel, or Lists of them), followed with inotify.
// A file that fails to parse (YAML syntax, larger than kMaxManifestBytes) keeps its last good
// content (and is logged), so a half-written or broken file never withdraws services that were
// already programmed; an object in it that cannot be decoded is skipped (and logged), the
// file's other objects apply. YAML is parsed by libyaml (source/yaml.h), bounded.
// Only the files named by inotify events are read again, and only objects that differ from
// what was delivered become changes (an edit at 10k Services costs one file's parse).
#pragma once

#include <atomic>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "source/source.h"

namespace kst {

inline constexpr size_t kMaxManifestBytes = size_t(16) << 20;

/** Parses one file's text. Errors (YAML syntax, size) name the file and line; documents or List
 *  items that cannot be decoded are left out and described in `skipped`. Pure. */
Result<ClusterObjects> parseManifestText(const std::string& text, const std::string& fileName,
                                         std::vector<std::string>* skipped = nullptr);

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
  /** Reads the named files again (all of the directory when null) and returns what changed
   *  in the merged view. */
  ObjectChanges refresh(const std::set<std::string>* only);
  std::string dir_;
  Callback cb_;
  std::thread thread_;
  int inotify_ = -1;
  int stopFd_ = -1;
  std::atomic<bool> stopping_{false};
  std::map<std::string, ClusterObjects> lastGood_;  // per file
  std::map<ObjectKey, std::set<std::string>> svcFiles_, sliceFiles_, tableFiles_;  // files defining a key
};

}  // namespace kst
