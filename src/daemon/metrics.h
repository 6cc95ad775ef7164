// The daemon's Prometheus metrics (docs/metrics.md lists every series): one prometheus-cpp core
// registry for what the reconcile thread records as it goes (passes, durations, failures,
// kernel changes), plus what is read only when Prometheus scrapes (the router's nft traffic
// counters, the Kubernetes API client's watch and Event statistics, announcement state per
// VIP), rendered by prometheus-cpp's TextSerializer (the large per-VIP and per-endpoint
// families: written directly in the same format, see appendCounterText) and served as /metrics
// by the health server (daemon/health.h: one HTTP library for every path).
//
// Nothing here touches the kernel or the network: the traffic counters come from a
// CounterSource and the API statistics from an ApiStatsSource that main wires, so the whole
// exposition is testable without a server (tests/unit/metrics_test.cpp).
//
// NOTE Cardinality: per-VIP series exist only for VIPs of the model (the Service that claims
// the VIP gives the namespace and service labels), per-endpoint series only on routers and only
// while the snapshot holds the (VIP, endpoint) counter, so both vanish with their VIP or
// endpoint. Bound: 4 series per VIP plus 2 per (VIP, endpoint), plus a fixed set.
//
// NOTE Threading: the recording calls come from one thread (the daemon's reconcile thread),
// render() from the HTTP workers at the same time; scrapes are serialized (one at a time builds
// its text) and share a lock with the reconcile thread only while copying the VIP names, not
// while building the text.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include "common/ip.h"
#include "dataplane/counters.h"
#include "model/model.h"

namespace kst {

class HealthServer;

/** The router's traffic counters, read at each scrape; nullopt when they cannot be read (then
 *  no traffic series is exported for that scrape). */
using CounterSource = std::function<std::optional<dp::NftCounterSnapshot>()>;

/** One list+watch of the Kubernetes API client (k8s/watch.h ListWatch::Stats). */
struct WatchStats {
  std::string resource;  // "services", "endpointslices", "configmaps"
  uint64_t lists = 0;    // completed lists: the first one and every relist
  uint64_t gone = 0;     // 410 Gone / Expired answers (each forces a relist)
  uint64_t errors = 0;   // failed requests
  uint64_t events = 0;   // ADDED / MODIFIED / DELETED delivered
  uint64_t bookmarks = 0;
  bool synced = false;
};

/** What the Kubernetes API client knows about itself; empty parts are not exported. */
struct ApiStats {
  std::vector<WatchStats> watches;
  struct Events {
    uint64_t posted = 0, dropped = 0, queued = 0;
  };
  std::optional<Events> events;  // routers with the Kubernetes API source
  struct Publisher {
    bool leader = false;
    uint64_t publications = 0;
    /** Seconds since this router last wrote a bucket table; nullopt: never. */
    std::optional<double> lastPublicationAge;
  };
  std::optional<Publisher> publisher;
};
using ApiStatsSource = std::function<ApiStats()>;

/** VIP → the Service that claims it (namespace and service labels). */
using VipNames = std::map<IpAddress, ObjectKey>;

enum class Reconciler { Router, Agent, Announce };
const char* reconcilerName(Reconciler r);

/** Why a reconciler's pass did not apply everything (a fixed set: the label stays bounded). */
enum class FailureReason {
  Observe,    // reading the kernel failed (the pass could not start)
  Apply,      // some kernel changes failed (retried by the next pass)
  Publish,    // writing a bucket table into the API failed
  Exception,  // the pass ended with an unexpected exception
};
const char* failureReasonName(FailureReason r);

/** The traffic series of one counter snapshot (pure): VIPs not in `names` are left out. */
std::vector<prometheus::MetricFamily> counterFamilies(const dp::NftCounterSnapshot& snap,
                                                      const VipNames& names);
/** The Kubernetes API client's series (pure). */
std::vector<prometheus::MetricFamily> apiFamilies(const ApiStats& stats);
/** Announcement state per VIP of `names`: 1 announced, 0 not (pure). */
std::vector<prometheus::MetricFamily> announceFamilies(const std::set<IpAddress>& announced,
                                                       bool drained, const VipNames& names);
/** The Prometheus text format (version 0.0.4) of families. */
std::string serializeText(const std::vector<prometheus::MetricFamily>& families);
/** The text of counterFamilies(snap, names) appended to out, written directly (no MetricFamily
 *  per series): what a scrape uses. The same text as serializeText(counterFamilies(…)) except
 *  that values are printed as exact integers, also above 2^53 (tests/unit/metrics_test.cpp). */
void appendCounterText(std::string& out, const dp::NftCounterSnapshot& snap,
                       const VipNames& names);
/** The text of announceFamilies(announced, drained, names) appended to out, the same way. */
void appendAnnounceText(std::string& out, const std::set<IpAddress>& announced, bool drained,
                        const VipNames& names);

class Metrics {
 public:
  static constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // ---- recorded by the reconcile thread (daemon/daemon.h) ----
  /** Creates the reconciler's series at zero (so that rate() sees the first failure); pass()
   *  does it for a reconciler not enabled before. */
  void enable(Reconciler r);
  /** One pass of a reconciler: its duration and the kernel changes it applied. */
  void pass(Reconciler r, double seconds, size_t changes);
  void failure(Reconciler r, FailureReason why);
  /** (VIP, slot) pairs released from the live-slot sets (router): the flow table is not
   *  walked, so the number of pinned flows this moved is not known. */
  void releasedSlots(size_t n);
  /** A daemon pass in which every reconciler succeeded ended now. */
  void passSucceeded();
  /** The model changed for these VIPs: their names are taken from `model` (or dropped). */
  void vipsChanged(const Model& model, const std::set<IpAddress>& vips);
  /** The VIPs the announce table holds after the last announce pass (nullopt: unknown, e.g.
   *  the table could not be read); drained: the router is drained. */
  void announced(std::optional<std::set<IpAddress>> vips, bool drained);

  // ---- wiring, before serve() ----
  void setCounterSource(CounterSource source);
  void setApiStatsSource(ApiStatsSource source);

  // ---- scrape ----
  /** The whole exposition (registry + scrape-time series) in the text format. */
  std::string render() const;
  /** Registers GET /metrics on the health server (before its start()). */
  void serve(HealthServer& server) const;
  prometheus::Registry& registry() { return *registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& passes_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Family<prometheus::Counter>& failures_;
  prometheus::Family<prometheus::Counter>& changes_;
  prometheus::Counter& released_;
  prometheus::Gauge& lastSuccess_;
  prometheus::Family<prometheus::Counter>& scrapeErrors_;
  /** The series of each reconciler, created by enable() (reconcile thread only). */
  struct PerReconciler {
    prometheus::Counter* passes = nullptr;
    prometheus::Histogram* duration = nullptr;
    prometheus::Counter* changes = nullptr;
  };
  std::array<PerReconciler, 3> per_{};

  mutable std::mutex mu_;  // the members below
  VipNames names_;
  std::optional<std::set<IpAddress>> announced_;
  bool drained_ = false;
  CounterSource counters_;
  ApiStatsSource api_;

  mutable std::mutex scrapeMu_;  // one scrape at a time
};

}  // namespace kst
