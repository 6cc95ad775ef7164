// Problems found in the model (invalid tunnel annotation, VIP conflict, too many endpoints)
// become Kubernetes Events (events.k8s.io/v1, type Warning) on the Service, so
// `kubectl describe service` / `kubectl get events` show them. Posting happens on the sink's own
// thread (the reconcile loop never waits for the API server), deduplicated (the same problem on
// the same object is posted once per window) and rate-limited (token bucket). A post that fails
// because the API server is unreachable or overloaded (transport error, 5xx, 429) keeps its
// Event in the queue: the sink retries the oldest one with backoff, and once the API server
// accepts it, sends the rest. The queue is bounded (the oldest Event is dropped, logged), a
// problem already queued is not queued twice, and a problem the daemon no longer sees
// (resolved()) is not posted at all.
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

#include "k8s/http.h"
#include "model/model.h"
#include "reconcile/sinks.h"

namespace kst::k8s {

struct EventSinkOptions {
  std::string reportingController = "cmd.nu/kube-service-tunnel";
  std::string reportingInstance = "kube-service-tunnel";
  std::chrono::seconds dedupWindow{3600};
  int burst = 20;                                 // token bucket size
  std::chrono::milliseconds refill{6000};         // one token per interval (10/min)
  /** After a failed post the next attempt waits retryInitial, doubling up to retryMax while
   *  the API server does not answer; any answer resets it. */
  std::chrono::milliseconds retryInitial{std::chrono::seconds(1)};
  std::chrono::milliseconds retryMax{std::chrono::seconds(60)};
  /** Events waiting to be posted (including those kept through an API outage). */
  size_t maxQueued = 100;
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
  /** The problem is gone: an Event for it that is still queued is not posted. */
  void resolved(const Problem& p) override;
  /** Waits until everything queued was posted or dropped. */
  bool flush(std::chrono::milliseconds timeout);
  int posted() const;
  int dropped() const;
  /** Events queued, not yet posted (waiting for the thread or for the API server). */
  size_t queued() const;

  /** The Event object for a problem (pure). */
  static nlohmann::json buildEvent(const Problem& p, const std::optional<std::string>& uid,
                                   const EventSinkOptions& o,
                                   std::chrono::system_clock::time_point t);
  static std::string eventPath(const Problem& p);

 private:
  /** The deduplication key: the same problem on the same object. */
  using Key = std::tuple<int, std::string, std::string>;
  static Key keyOf(const Problem& p);
  struct Item {
    Problem problem;
    /** When the problem was reported: the Event's eventTime and name, the same in every
     *  attempt, so that a post which reached the server but whose answer was lost is
     *  answered 409 AlreadyExists when sent again instead of creating a second Event. */
    std::chrono::system_clock::time_point at;
    int attempts = 0;
  };
  enum class Outcome { Posted, Retry, Failed };
  void run();
  Outcome post(const Item& item);
  void dropLocked(const Item& item, const char* why);
  std::unique_ptr<HttpTransport> http_;
  EventSinkOptions opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stopping_ = false;
  bool busy_ = false;               // the thread is posting inFlight_ (not in queue_)
  std::optional<Key> inFlight_;
  bool inFlightResolved_ = false;   // resolved() while it was being posted
  std::chrono::milliseconds backoff_{0};  // 0: the API server answered the last post
  std::chrono::steady_clock::time_point retryAt_{};
  std::chrono::system_clock::time_point lastStamp_{};
  std::map<Key, std::chrono::system_clock::time_point> sent_;  // posted or queued
  double tokens_;
  std::chrono::steady_clock::time_point lastRefill_;
  int posted_ = 0, dropped_ = 0;
  std::thread thread_;
};

}  // namespace kst::k8s
