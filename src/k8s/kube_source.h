// The Kubernetes API source: list+watch of Services (all namespaces), discovery.k8s.io/v1
// EndpointSlices and (routers) the bucket table ConfigMaps in the daemon's own namespace
// (desired/published.h), a cache of the decoded objects, and deliveries of what changed: the
// complete set once all lists are done, then each object whose decoded form changed (a watch
// event that changes nothing we keep, or a relist after 410 Gone that finds nothing new,
// delivers nothing and costs the reconciler nothing). Objects that cannot be decoded are logged
// and their last good version is kept; one bad object never stops the others.
// Memory: Services keep only the tunnel annotation; in the agent-only role EndpointSlices keep
// only this node's endpoints (slices without any are not stored), FQDN slices are dropped.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "k8s/http.h"
#include "k8s/watch.h"
#include "source/source.h"

namespace kst::k8s {

using TransportFactory = std::function<Result<std::unique_ptr<HttpTransport>>()>;

/** A bucket table ConfigMap to delete, at the version that was judged stale. */
struct StaleTable {
  std::string name;
  std::string resourceVersion;
  bool operator==(const StaleTable&) const = default;
};

struct KubeSourceOptions {
  bool router = true;
  bool agent = true;
  std::string nodeName;
  /** Service annotations kept in the cache (others, e.g. last-applied-configuration, are
   *  dropped): the tunnel VIP. */
  std::set<std::string> keepAnnotations{"cmd.nu/tunnel"};
  /** Namespace whose bucket table ConfigMaps (label app.kubernetes.io/managed-by=
   *  kube-service-tunnel) are watched: the daemon's own. Empty: none (agents need none). */
  std::string tablesNamespace;
  /** Changes arriving within this window after the first one go into one delivery. 0: none
   *  (the daemon folds changes that arrive during a pass into the next one). */
  std::chrono::milliseconds coalesce{0};
  ListWatchOptions listWatch;
  ListWatch::Sleeper sleeper;  // tests: backoff without sleeping
  /** Check once that the Node named nodeName exists (agent role; needs `get nodes`). */
  bool checkNode = true;
};

/** Decoding as the cache does it (pure; exposed for tests). nullopt = not stored. */
Result<ServiceObject> cacheService(const nlohmann::json& j, const KubeSourceOptions& o);
Result<std::optional<EndpointSliceObject>> cacheSlice(const nlohmann::json& j,
                                                      const KubeSourceOptions& o);
/** A bucket table ConfigMap as the cache keeps it: only one named publishedConfigMapName() of
 *  the Service its data names counts (any other is stale, see staleTables()). */
Result<PublishedTableObject> cacheTable(const nlohmann::json& j);

class KubeSource : public Source {
 public:
  KubeSource(TransportFactory makeTransport, KubeSourceOptions opts);
  ~KubeSource() override;
  Status start(Callback cb) override;
  void stop() override;
  std::string name() const override { return name_; }

  /** Both initial lists done and the first snapshot delivered. */
  bool synced() const { return synced_; }
  /** metadata.uid of a cached Service (for Events). */
  std::optional<std::string> serviceUid(const ObjectKey& key) const;
  /** Deliveries made so far. */
  int published() const { return published_; }
  ClusterObjects current() const;
  ListWatch::Stats stats(const std::string& resource) const;
  /** Bucket table ConfigMaps to delete: whose Service is gone (or was created again: another
   *  uid), that cannot be decoded, or that are not named for their Service. Empty until
   *  synced (a Service not listed yet is not gone). */
  std::vector<StaleTable> staleTables() const;

 private:
  class Handler;
  friend class Handler;
  class TableHandler;
  friend class TableHandler;
  void publisher();
  void markDirty();
  void checkNode();

  TransportFactory make_;
  KubeSourceOptions opts_;
  std::string name_;
  Callback cb_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<ObjectKey, ServiceObject> services_;
  std::map<ObjectKey, EndpointSliceObject> slices_;
  std::map<ObjectKey, PublishedTableObject> tables_;  // by Service
  // Every bucket table ConfigMap by name: its resourceVersion and the Service it names (nullopt
  // when it cannot be used).
  struct TableConfigMap {
    std::string resourceVersion;
    std::optional<PublishedTableObject> table;
  };
  std::map<std::string, TableConfigMap> tableConfigMaps_;
  ObjectChanges pending_;  // since the last delivery
  ObjectChanges base_;     // the delivered versions of the objects in pending_
  bool dirty_ = false;
  bool stopping_ = false;
  std::atomic<bool> synced_{false};
  std::atomic<int> published_{0};
  std::unique_ptr<Handler> svcHandler_, sliceHandler_;
  std::unique_ptr<TableHandler> tableHandler_;
  std::vector<std::unique_ptr<HttpTransport>> transports_;
  std::unique_ptr<ListWatch> svcWatch_, sliceWatch_, tableWatch_;
  std::vector<std::thread> threads_;
};

}  // namespace kst::k8s
