// Problems found in the model (invalid tunnel annotation, VIP conflict, too many endpoints)
// become Kubernetes Events (events.k8s.io/v1, type Warning) on the Service, so
// `kubectl describe service` / `kubectl get events` show them. Posting happens on the sink's own
// thread (the reconcile loop never waits for the API server), deduplicated (the same problem on
// the same object is posted once per window) and rate-limited (token bucket); failed posts are
// retried a few times with backoff, then dropped (the daemon has logged the problem anyway).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "daemon/daemon.h"
#include "k8s/http.h"
#include "model/model.h"

namespace kst::k8s {

struct EventSinkOptions {
  std::string reportingController = "cmd.nu/kube-service-tunnel";
  std::string reportingInstance = "kube-service-tunnel";
  std::chrono::seconds dedupWindow{3600};
  int burst = 20;                                 // token bucket size
  std::chrono::milliseconds refill{6000};         // one token per interval (10/min)
  std::vector<std::chrono::milliseconds> retries{std::chrono::seconds(1), std::chrono::seconds(2),
                                                 std::chrono::seconds(4)};
  /** metadata.uid of a Service (nullopt: unknown, posted without uid). */
  std::function<std::optional<std::string>(const ObjectKey&)> uidOf;
  std::function<std::chrono::system_clock::time_point()> now = [] {
    return std::chrono::system_clock::now();
  };
};

class KubeEventSink : public ProblemSink {
 public:
  KubeEventSink(std::unique_ptr<HttpTransport> http, EventSinkOptions opts);
  ~KubeEventSink() override;
  /** Queues an Event for the problem (non-blocking). Problems that are not about a Service
   *  (orphan EndpointSlices) are only logged by the daemon. */
  void report(const Problem& p) override;
  /** Waits until everything queued was posted or dropped. */
  bool flush(std::chrono::milliseconds timeout);
  int posted() const;
  int dropped() const;

  /** The Event object for a problem (pure). */
  static nlohmann::json buildEvent(const Problem& p, const std::optional<std::string>& uid,
                                   const EventSinkOptions& o,
                                   std::chrono::system_clock::time_point t);
  static std::string eventPath(const Problem& p);

 private:
  void run();
  bool post(const Problem& p);
  std::unique_ptr<HttpTransport> http_;
  EventSinkOptions opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Problem> queue_;
  bool stopping_ = false;
  bool busy_ = false;
  std::map<std::tuple<int, std::string, std::string>, std::chrono::system_clock::time_point> sent_;
  double tokens_;
  std::chrono::steady_clock::time_point lastRefill_;
  int posted_ = 0, dropped_ = 0;
  std::thread thread_;
};

}  // namespace kst::k8s
