#include "daemon/metrics.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <iterator>
#include <sstream>
#include <string_view>

#include <fmt/format.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>

#include "daemon/health.h"

namespace kst {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

constexpr const char* kPrefix = "kube_service_tunnel_";

MetricFamily family(const std::string& name, const std::string& help, MetricType type) {
  return MetricFamily{kPrefix + name, help, type, {}};
}

/** Name (after the prefix) and help of the per-VIP families: counterFamilies() and
 *  appendCounterText() write the same, and so do announceFamilies() and appendAnnounceText(). */
struct Named {
  const char* name;
  const char* help;
};
constexpr Named kVipPackets{"vip_packets_total",
                            "Packets to the VIP that entered the tunnel path (router)"};
constexpr Named kVipBytes{"vip_bytes_total",
                          "Bytes (IP packet length) to the VIP that entered the tunnel path (router)"};
constexpr Named kEpPackets{"endpoint_packets_total",
                           "Packets to the VIP encapsulated toward the endpoint (router)"};
constexpr Named kEpBytes{"endpoint_bytes_total",
                         "Bytes (IP packet length before encapsulation) to the VIP encapsulated "
                         "toward the endpoint (router)"};
constexpr Named kVipRefused{"vip_refused_packets_total",
                            "Packets to the VIP the router refused (every reason)"};
constexpr Named kRefused{"refused_packets_total", "Packets to VIPs the router refused, by reason"};
constexpr Named kFlows{"flows", "Flows pinned in the router's flow tables, by address family"};
constexpr Named kFlowLimit{"flow_limit", "Size limit of each of the router's flow tables"};
constexpr Named kNewFlows{"new_flows_total",
                          "Flows added to the router's flow tables (a flow's first packet)"};

constexpr Named kAnnounced{"vip_announced",
                           "1 while the router announces the VIP (a route in the announce table), "
                           "else 0"};
constexpr Named kDrained{"announce_drained", "1 while the router is drained (announces nothing)"};

MetricFamily family(const Named& n, MetricType type) { return family(n.name, n.help, type); }

ClientMetric sample(MetricType type, double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  switch (type) {
    case MetricType::Counter: m.counter.value = value; break;
    case MetricType::Gauge: m.gauge.value = value; break;
    case MetricType::Untyped: m.untyped.value = value; break;
    case MetricType::Summary:
    case MetricType::Histogram:
      break;  // never built by hand here
  }
  return m;
}

void add(MetricFamily& f, double value, std::vector<ClientMetric::Label> labels = {}) {
  f.metric.push_back(sample(f.type, value, std::move(labels)));
}

/** The namespace, service and vip labels of a VIP. */
std::vector<ClientMetric::Label> vipLabels(const ObjectKey& svc, std::string vip) {
  return {{"namespace", svc.ns}, {"service", svc.name}, {"vip", std::move(vip)}};
}

}  // namespace

const char* reconcilerName(Reconciler r) {
  switch (r) {
    case Reconciler::Router: return "router";
    case Reconciler::Agent: return "agent";
    case Reconciler::Announce: return "announce";
  }
  return "unknown";
}

const char* failureReasonName(FailureReason r) {
  switch (r) {
    case FailureReason::Observe: return "observe";
    case FailureReason::Apply: return "apply";
    case FailureReason::Publish: return "publish";
    case FailureReason::Exception: return "exception";
  }
  return "unknown";
}

std::vector<MetricFamily> counterFamilies(const dp::NftCounterSnapshot& snap,
                                          const VipNames& names) {
  auto vipPackets = family(kVipPackets, MetricType::Counter);
  auto vipBytes = family(kVipBytes, MetricType::Counter);
  auto epPackets = family(kEpPackets, MetricType::Counter);
  auto epBytes = family(kEpBytes, MetricType::Counter);
  auto vipRefused = family(kVipRefused, MetricType::Counter);
  auto refused = family(kRefused, MetricType::Counter);
  auto flows = family(kFlows, MetricType::Gauge);
  auto flowLimit = family(kFlowLimit, MetricType::Gauge);
  auto newFlows = family(kNewFlows, MetricType::Counter);
  vipPackets.metric.reserve(snap.vip.size());
  vipBytes.metric.reserve(snap.vip.size());
  for (auto& [vip, c] : snap.vip) {
    auto it = names.find(vip);
    if (it == names.end()) continue;
    std::string v = vip.str();
    add(vipPackets, double(c.packets), vipLabels(it->second, v));
    add(vipBytes, double(c.bytes), vipLabels(it->second, std::move(v)));
  }
  epPackets.metric.reserve(snap.endpoint.size());
  epBytes.metric.reserve(snap.endpoint.size());
  // Sorted by VIP: its name and text are looked up once for its endpoints.
  const IpAddress* lastVip = nullptr;
  const ObjectKey* svc = nullptr;
  std::string vipText;
  for (auto& [key, c] : snap.endpoint) {
    if (!lastVip || !(*lastVip == key.first)) {
      lastVip = &key.first;
      auto it = names.find(key.first);
      svc = it == names.end() ? nullptr : &it->second;
      if (svc) vipText = key.first.str();
    }
    if (!svc) continue;
    std::string ep = key.second.str();
    auto labels = vipLabels(*svc, vipText);
    labels.push_back({"endpoint", ep});
    add(epPackets, double(c.packets), labels);
    add(epBytes, double(c.bytes), std::move(labels));
  }
  for (auto& [vip, c] : snap.refusedByVip) {
    auto it = names.find(vip);
    if (it != names.end()) add(vipRefused, double(c.packets), vipLabels(it->second, vip.str()));
  }
  for (auto& [reason, c] : snap.refused) add(refused, double(c.packets), {{"reason", reason}});
  add(flows, double(snap.flows4), {{"family", "ipv4"}});
  add(flows, double(snap.flows6), {{"family", "ipv6"}});
  add(flowLimit, double(snap.flowLimit));
  add(newFlows, double(snap.newFlows));
  std::vector<MetricFamily> out;
  for (auto* f : {&vipPackets, &vipBytes, &epPackets, &epBytes, &vipRefused, &refused, &flows,
                  &flowLimit, &newFlows})
    out.push_back(std::move(*f));
  return out;
}

namespace {

// The text format written straight into a string (the scrape's big families), as
// prometheus-cpp's TextSerializer writes it: HELP and TYPE lines, then `name{labels} value`.
void writeHeader(std::string& to, const Named& n, std::string_view type) {
  fmt::format_to(std::back_inserter(to), "# HELP {}{} {}\n# TYPE {}{} {}\n", kPrefix, n.name,
                 n.help, kPrefix, n.name, type);
}
/** One series: labels is "" or the whole `{…}`. */
void writeSample(std::string& to, std::string_view name, std::string_view labels,
                 uint64_t value) {
  to += kPrefix;
  to += name;
  to += labels;
  fmt::format_to(std::back_inserter(to), " {}\n", value);
}
/** A label value escaped for the text format (backslash, double quote, line feed). */
void writeEscaped(std::string& to, std::string_view v) {
  for (char c : v) {
    if (c == '\\') to += "\\\\";
    else if (c == '"') to += "\\\"";
    else if (c == '\n') to += "\\n";
    else to += c;
  }
}

/** `{namespace="…",service="…",vip="…"` (not closed): the labels every per-VIP series starts
 *  with, per VIP of names, sorted by VIP. */
std::vector<std::pair<IpAddress, std::string>> vipLabelPrefixes(const VipNames& names) {
  std::vector<std::pair<IpAddress, std::string>> out;
  out.reserve(names.size());
  for (auto& [vip, svc] : names) {
    std::string l = "{namespace=\"";
    writeEscaped(l, svc.ns);
    l += "\",service=\"";
    writeEscaped(l, svc.name);
    l += "\",vip=\"";
    l += vip.str();
    l += '"';
    out.emplace_back(vip, std::move(l));
  }
  return out;
}

}  // namespace

void appendCounterText(std::string& out, const dp::NftCounterSnapshot& snap,
                       const VipNames& names) {
  const auto prefixes = vipLabelPrefixes(names);
  // The label prefix of a VIP of names, nullptr for another; the snapshot's maps are sorted by
  // VIP, so a walk over one of them only moves forward (at = 0 before each).
  size_t at = 0;
  auto prefixOf = [&](const IpAddress& vip) -> const std::string* {
    while (at < prefixes.size() && prefixes[at].first < vip) ++at;
    return at < prefixes.size() && prefixes[at].first == vip ? &prefixes[at].second : nullptr;
  };
  // ≈ 130 bytes a series; the second family of a pair goes to `more` while the first is written.
  out.reserve(out.size() + 130 * (2 * snap.vip.size() + 2 * snap.endpoint.size() +
                                  snap.refusedByVip.size() + 16));
  std::string more, labels;
  auto pair = [&](const Named& first, const Named& second, auto&& each) {
    more.clear();
    writeHeader(out, first, "counter");
    each();
    writeHeader(out, second, "counter");
    out += more;
  };
  at = 0;
  pair(kVipPackets, kVipBytes, [&] {
    for (auto& [vip, c] : snap.vip) {
      const std::string* p = prefixOf(vip);
      if (!p) continue;
      labels.assign(*p).push_back('}');
      writeSample(out, kVipPackets.name, labels, c.packets);
      writeSample(more, kVipBytes.name, labels, c.bytes);
    }
  });
  at = 0;
  pair(kEpPackets, kEpBytes, [&] {
    for (auto& [key, c] : snap.endpoint) {
      const std::string* p = prefixOf(key.first);
      if (!p) continue;
      labels.assign(*p).append(",endpoint=\"").append(key.second.str()).append("\"}");
      writeSample(out, kEpPackets.name, labels, c.packets);
      writeSample(more, kEpBytes.name, labels, c.bytes);
    }
  });
  writeHeader(out, kVipRefused, "counter");
  at = 0;
  for (auto& [vip, c] : snap.refusedByVip) {
    const std::string* p = prefixOf(vip);
    if (!p) continue;
    labels.assign(*p).push_back('}');
    writeSample(out, kVipRefused.name, labels, c.packets);
  }
  writeHeader(out, kRefused, "counter");
  for (auto& [reason, c] : snap.refused) {
    labels.assign("{reason=\"");
    writeEscaped(labels, reason);
    labels += "\"}";
    writeSample(out, kRefused.name, labels, c.packets);
  }
  writeHeader(out, kFlows, "gauge");
  writeSample(out, kFlows.name, "{family=\"ipv4\"}", snap.flows4);
  writeSample(out, kFlows.name, "{family=\"ipv6\"}", snap.flows6);
  writeHeader(out, kFlowLimit, "gauge");
  writeSample(out, kFlowLimit.name, "", snap.flowLimit);
  writeHeader(out, kNewFlows, "counter");
  writeSample(out, kNewFlows.name, "", snap.newFlows);
}

std::vector<MetricFamily> apiFamilies(const ApiStats& stats) {
  std::vector<MetricFamily> out;
  if (!stats.watches.empty()) {
    auto lists = family("watch_lists_total",
                        "Completed lists of a watched resource (the first one and every relist)",
                        MetricType::Counter);
    auto gone = family("watch_gone_total",
                       "410 Gone / Expired answers to a watch or list (each forces a relist)",
                       MetricType::Counter);
    auto errors = family("watch_errors_total", "Failed list or watch requests, retried with backoff",
                         MetricType::Counter);
    auto events = family("watch_events_total",
                         "ADDED, MODIFIED and DELETED watch events received", MetricType::Counter);
    auto bookmarks = family("watch_bookmarks_total", "BOOKMARK watch events received",
                            MetricType::Counter);
    auto synced = family("watch_synced", "1 once a list of the resource has completed",
                         MetricType::Gauge);
    for (auto& w : stats.watches) {
      std::vector<ClientMetric::Label> l{{"resource", w.resource}};
      add(lists, double(w.lists), l);
      add(gone, double(w.gone), l);
      add(errors, double(w.errors), l);
      add(events, double(w.events), l);
      add(bookmarks, double(w.bookmarks), l);
      add(synced, w.synced ? 1 : 0, l);
    }
    for (auto* f : {&lists, &gone, &errors, &events, &bookmarks, &synced})
      out.push_back(std::move(*f));
  }
  if (stats.events) {
    auto posted = family("events_posted_total", "Kubernetes Events posted about problems",
                         MetricType::Counter);
    auto dropped = family("events_dropped_total",
                          "Kubernetes Events dropped (queue full or rejected by the API server)",
                          MetricType::Counter);
    auto queued = family("events_queued", "Kubernetes Events waiting to be posted",
                         MetricType::Gauge);
    add(posted, double(stats.events->posted));
    add(dropped, double(stats.events->dropped));
    add(queued, double(stats.events->queued));
    for (auto* f : {&posted, &dropped, &queued}) out.push_back(std::move(*f));
  }
  if (stats.publisher) {
    auto leader = family("publisher_leader",
                         "1 while this router holds the Lease of the bucket table writer",
                         MetricType::Gauge);
    auto pubs = family("publications_total", "Bucket tables this router wrote into the API",
                       MetricType::Counter);
    add(leader, stats.publisher->leader ? 1 : 0);
    add(pubs, double(stats.publisher->publications));
    out.push_back(std::move(leader));
    out.push_back(std::move(pubs));
    if (stats.publisher->lastPublicationAge) {
      auto age = family("publication_age_seconds",
                        "Seconds since this router last wrote a bucket table into the API",
                        MetricType::Gauge);
      add(age, *stats.publisher->lastPublicationAge);
      out.push_back(std::move(age));
    }
  }
  return out;
}

std::vector<MetricFamily> announceFamilies(const std::set<IpAddress>& announced, bool drained,
                                           const VipNames& names) {
  auto state = family(kAnnounced, MetricType::Gauge);
  auto drainedF = family(kDrained, MetricType::Gauge);
  state.metric.reserve(names.size());
  for (auto& [vip, svc] : names)
    add(state, announced.contains(vip) ? 1 : 0, vipLabels(svc, vip.str()));
  add(drainedF, drained ? 1 : 0);
  std::vector<MetricFamily> out;
  out.push_back(std::move(state));
  out.push_back(std::move(drainedF));
  return out;
}

void appendAnnounceText(std::string& out, const std::set<IpAddress>& announced, bool drained,
                        const VipNames& names) {
  out.reserve(out.size() + 130 * (names.size() + 4));
  writeHeader(out, kAnnounced, "gauge");
  std::string labels;
  for (auto& [vip, l] : vipLabelPrefixes(names)) {
    labels.assign(l).push_back('}');
    writeSample(out, kAnnounced.name, labels, announced.contains(vip) ? 1 : 0);
  }
  writeHeader(out, kDrained, "gauge");
  writeSample(out, kDrained.name, "", drained ? 1 : 0);
}

std::string serializeText(const std::vector<MetricFamily>& families) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return std::move(out).str();
}

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      passes_(prometheus::BuildCounter()
                  .Name(std::string(kPrefix) + "reconcile_passes_total")
                  .Help("Reconcile passes run, by reconciler")
                  .Register(*registry_)),
      duration_(prometheus::BuildHistogram()
                    .Name(std::string(kPrefix) + "reconcile_duration_seconds")
                    .Help("Wall time of one reconciler's pass (observe, plan, apply)")
                    .Register(*registry_)),
      failures_(prometheus::BuildCounter()
                    .Name(std::string(kPrefix) + "reconcile_failures_total")
                    .Help("Reconciler passes that did not apply everything, by reason")
                    .Register(*registry_)),
      changes_(prometheus::BuildCounter()
                   .Name(std::string(kPrefix) + "kernel_changes_total")
                   .Help("Kernel changes applied (netlink objects, nft elements, routes)")
                   .Register(*registry_)),
      released_(prometheus::BuildCounter()
                  .Name(std::string(kPrefix) + "released_slots_total")
                  .Help("Endpoint slots released (live-slot elements deleted): the flows "
                        "pinned to them are hashed again on their next packet")
                  .Register(*registry_)
                  .Add({})),
      lastSuccess_(prometheus::BuildGauge()
                       .Name(std::string(kPrefix) + "last_successful_pass_timestamp_seconds")
                       .Help("Unix time of the end of the last pass in which every reconciler "
                             "succeeded (0: none yet)")
                       .Register(*registry_)
                       .Add({})),
      scrapeErrors_(prometheus::BuildCounter()
                        .Name(std::string(kPrefix) + "scrape_errors_total")
                        .Help("Scrapes in which a source of series could not be read, by source")
                        .Register(*registry_)) {
  scrapeErrors_.Add({{"source", "counters"}});
  scrapeErrors_.Add({{"source", "api"}});
}

namespace {
const prometheus::Histogram::BucketBoundaries& durationBuckets() {
  static const prometheus::Histogram::BucketBoundaries b{0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                         0.025,  0.05,  0.1,    0.25,  0.5,
                                                         1,      2.5,   5,      10,    30};
  return b;
}
}  // namespace

void Metrics::enable(Reconciler r) {
  prometheus::Labels l{{"reconciler", reconcilerName(r)}};
  auto& p = per_[size_t(r)];
  p.passes = &passes_.Add(l);
  p.duration = &duration_.Add(l, durationBuckets());
  p.changes = &changes_.Add(l);
  for (auto why : {FailureReason::Observe, FailureReason::Apply, FailureReason::Exception})
    failures_.Add({{"reconciler", reconcilerName(r)}, {"reason", failureReasonName(why)}});
  if (r == Reconciler::Router)
    failures_.Add({{"reconciler", reconcilerName(r)},
                   {"reason", failureReasonName(FailureReason::Publish)}});
}

void Metrics::pass(Reconciler r, double seconds, size_t changes) {
  auto& p = per_[size_t(r)];
  if (!p.passes) enable(r);
  p.passes->Increment();
  p.duration->Observe(std::max(0.0, seconds));
  p.changes->Increment(double(changes));
}

void Metrics::failure(Reconciler r, FailureReason why) {
  failures_.Add({{"reconciler", reconcilerName(r)}, {"reason", failureReasonName(why)}})
      .Increment();
}

void Metrics::releasedSlots(size_t n) { released_.Increment(double(n)); }

void Metrics::passSucceeded() { lastSuccess_.SetToCurrentTime(); }

void Metrics::vipsChanged(const Model& model, const std::set<IpAddress>& vips) {
  std::lock_guard lk(mu_);
  for (auto& vip : vips) {
    auto it = std::lower_bound(model.services.begin(), model.services.end(), vip,
                               [](const TunnelService& s, const IpAddress& v) { return s.vip < v; });
    if (it != model.services.end() && it->vip == vip) names_[vip] = it->key;
    else names_.erase(vip);
  }
}

void Metrics::announced(std::optional<std::set<IpAddress>> vips, bool drained) {
  std::lock_guard lk(mu_);
  announced_ = std::move(vips);
  drained_ = drained;
}

void Metrics::setCounterSource(CounterSource source) {
  std::lock_guard lk(mu_);
  counters_ = std::move(source);
}

void Metrics::setApiStatsSource(ApiStatsSource source) {
  std::lock_guard lk(mu_);
  api_ = std::move(source);
}

std::string Metrics::render() const {
  std::lock_guard scrape(scrapeMu_);
  VipNames names;
  std::optional<std::set<IpAddress>> announced;
  bool drained = false;
  CounterSource counters;
  ApiStatsSource api;
  {
    // Copied, so the reconcile thread never waits for a scrape to build its text.
    std::lock_guard lk(mu_);
    names = names_;
    announced = announced_;
    drained = drained_;
    counters = counters_;
    api = api_;
  }
  // The sources first: a failure to read one is counted in this scrape's scrape_errors_total.
  // A source that fails costs its series for this scrape, never the scrape.
  std::optional<dp::NftCounterSnapshot> snap;
  if (counters) {
    try {
      snap = counters();
    } catch (const std::exception& e) {
      spdlog::warn("metrics: reading the traffic counters: {}", e.what());
    }
    if (!snap) scrapeErrors_.Add({{"source", "counters"}}).Increment();
  }
  std::vector<MetricFamily> apiRead;
  if (api) {
    try {
      apiRead = apiFamilies(api());
    } catch (const std::exception& e) {
      spdlog::warn("metrics: reading the API client's statistics: {}", e.what());
      scrapeErrors_.Add({{"source", "api"}}).Increment();
    }
  }
  // NOTE Performance: the per-VIP and per-endpoint families (≈ 120 000 series at 10k VIPs × 4
  // endpoints) are written straight into the text; prometheus-cpp's serializer needs a
  // MetricFamily object per series first and writes through an ostream (bench/metrics_bench.cpp
  // measures both; docs/performance.md). The registry's and the API client's few series go
  // through it.
  std::string text = serializeText(registry_->Collect());
  if (snap) appendCounterText(text, *snap, names);
  if (!apiRead.empty()) text += serializeText(apiRead);
  if (announced) appendAnnounceText(text, *announced, drained, names);
  return text;
}

void Metrics::serve(HealthServer& server) const {
  server.handle("/metrics", [this] {
    try {
      return HealthServer::Reply{200, render(), kContentType};
    } catch (const std::exception& e) {  // e.g. out of memory: the daemon goes on
      return HealthServer::Reply{500, std::string("metrics: ") + e.what() + "\n"};
    }
  });
}

}  // namespace kst
