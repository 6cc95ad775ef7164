// The elected writer of published bucket tables (desired/published.h, docs/load-balancing.md):
// one ConfigMap per Service in the daemon's own namespace, written by server-side apply (creates
// or updates in one request), and deleted once its Service is gone (KubeSource::staleTables()).
//
// Election: a coordination.k8s.io/v1 Lease, renewed by a background thread every
// leaseDuration/3. Like client-go's leader election, expiry is judged by *local* observation
// time (when this process last saw the lease record change), not by comparing clocks across
// nodes; updates carry the resourceVersion, so two candidates cannot both win (409 Conflict).
// A holder that cannot renew stops considering itself leader renewDeadline after its last
// successful renewal, before the lease can expire for others: at most one writer at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "k8s/http.h"
#include "k8s/kube_source.h"
#include "reconcile/sinks.h"

namespace kst::k8s {

struct PublisherOptions {
  /** The daemon's own namespace: the Lease and the bucket table ConfigMaps. */
  std::string ns = "kube-service-tunnel";
  std::string leaseName = "kube-service-tunnel-publisher";
  std::string identity;  // this router (node name)
  std::chrono::seconds leaseDuration{15};
  /** metadata.uid of a Service (written with its table, so a Service created again under the
   *  same name does not take the old table); nullopt when unknown. */
  std::function<std::optional<std::string>(const ObjectKey&)> uidOf;
  /** ConfigMaps to delete (KubeSource::staleTables()); asked each election round while this
   *  router leads. */
  std::function<std::vector<StaleTable>()> staleTables;
};

class KubePublisher : public DecisionPublisher {
 public:
  KubePublisher(TransportFactory makeTransport, PublisherOptions opts);
  ~KubePublisher() override;
  void start();
  void stop();
  bool isLeader() override;
  /** Called (from the election thread) each time this router becomes the writer. */
  void setOnAcquired(std::function<void()> fn);
  /** Writes the Service's table ConfigMap (server-side apply). */
  Status publish(const ObjectKey& service, const std::string& table) override;
  /** Bucket tables written so far, and the time since the last one (nullopt: none yet), for
   *  metrics; thread-safe. */
  uint64_t publications() const { return publications_; }
  std::optional<std::chrono::steady_clock::duration> sinceLastPublication() const;
  /** Deletes the stale table ConfigMaps (see PublisherOptions::staleTables). @return deleted. */
  int deleteStale();

  /** One election round (used by the thread; public for tests). @return leader now. */
  bool tryAcquireOrRenew();

 private:
  void run();
  TransportFactory make_;
  PublisherOptions opts_;
  std::unique_ptr<HttpTransport> electionHttp_;
  std::unique_ptr<HttpTransport> patchHttp_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
  std::function<void()> onAcquired_;  // guarded by mu_
  std::atomic<int64_t> leaderUntil_{0};  // steady_clock ns; leader while now < this
  std::atomic<uint64_t> publications_{0};
  std::atomic<int64_t> lastPublication_{0};  // steady_clock ticks of the last write; 0: none
  // Last observed lease record and when we saw it change (local time).
  std::string observedHolder_, observedRenew_;
  std::chrono::steady_clock::time_point observedAt_{};
};

}  // namespace kst::k8s
