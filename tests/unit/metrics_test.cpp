// daemon/metrics.h: the exposition of the router's traffic counters (a fake snapshot → the
// exact text), the Kubernetes API client's statistics and the announcement state; series of a
// VIP or endpoint that is gone vanish; a source that fails costs its series, not the scrape;
// the daemon records its passes; /metrics through the health server; `promtool check metrics`
// (Debian package prometheus) accepts the whole output.
#include "daemon/metrics.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "daemon/daemon.h"
#include "daemon/health.h"
#include "fakes/fake_kernel.h"
#include "fakes/snapshot_source.h"
#include "reconcile/announce_reconciler.h"
#include "source/manifest_source.h"

namespace kst {
namespace {

IpAddress ip(const std::string& s) { return *IpAddress::parse(s); }

/** Two VIPs of the model (one IPv6), one VIP the model does not know (left out). */
dp::NftCounterSnapshot snapshot() {
  dp::NftCounterSnapshot s;
  s.vip[ip("203.0.113.10")] = {10, 1500};
  s.vip[ip("2001:db8::10")] = {3, 360};
  s.vip[ip("203.0.113.99")] = {7, 700};
  s.endpoint[{ip("203.0.113.10"), ip("10.0.0.1")}] = {6, 900};
  s.endpoint[{ip("203.0.113.10"), ip("10.0.0.2")}] = {4, 600};
  s.endpoint[{ip("2001:db8::10"), ip("fd00::1")}] = {3, 360};
  s.endpoint[{ip("203.0.113.99"), ip("10.0.0.9")}] = {7, 700};
  s.refused["no_bucket"] = {2, 120};
  s.refused["source_range"] = {5, 300};
  s.refusedByVip[ip("203.0.113.10")] = {7, 420};
  s.flows4 = 12;
  s.flows6 = 1;
  s.flowLimit = 65536;
  s.newFlows = 40;
  return s;
}

VipNames names() {
  return {{ip("203.0.113.10"), {"web", "front"}}, {ip("2001:db8::10"), {"web", "six"}}};
}

TEST(Metrics, CounterSnapshotGivesExactlyTheseSeries) {
  EXPECT_EQ(serializeText(counterFamilies(snapshot(), names())),
            R"(# HELP kube_service_tunnel_vip_packets_total Packets to the VIP that entered the tunnel path (router)
# TYPE kube_service_tunnel_vip_packets_total counter
kube_service_tunnel_vip_packets_total{namespace="web",service="front",vip="203.0.113.10"} 10
kube_service_tunnel_vip_packets_total{namespace="web",service="six",vip="2001:db8::10"} 3
# HELP kube_service_tunnel_vip_bytes_total Bytes (IP packet length) to the VIP that entered the tunnel path (router)
# TYPE kube_service_tunnel_vip_bytes_total counter
kube_service_tunnel_vip_bytes_total{namespace="web",service="front",vip="203.0.113.10"} 1500
kube_service_tunnel_vip_bytes_total{namespace="web",service="six",vip="2001:db8::10"} 360
# HELP kube_service_tunnel_endpoint_packets_total Packets to the VIP encapsulated toward the endpoint (router)
# TYPE kube_service_tunnel_endpoint_packets_total counter
kube_service_tunnel_endpoint_packets_total{namespace="web",service="front",vip="203.0.113.10",endpoint="10.0.0.1"} 6
kube_service_tunnel_endpoint_packets_total{namespace="web",service="front",vip="203.0.113.10",endpoint="10.0.0.2"} 4
kube_service_tunnel_endpoint_packets_total{namespace="web",service="six",vip="2001:db8::10",endpoint="fd00::1"} 3
# HELP kube_service_tunnel_endpoint_bytes_total Bytes (IP packet length before encapsulation) to the VIP encapsulated toward the endpoint (router)
# TYPE kube_service_tunnel_endpoint_bytes_total counter
kube_service_tunnel_endpoint_bytes_total{namespace="web",service="front",vip="203.0.113.10",endpoint="10.0.0.1"} 900
kube_service_tunnel_endpoint_bytes_total{namespace="web",service="front",vip="203.0.113.10",endpoint="10.0.0.2"} 600
kube_service_tunnel_endpoint_bytes_total{namespace="web",service="six",vip="2001:db8::10",endpoint="fd00::1"} 360
# HELP kube_service_tunnel_vip_refused_packets_total Packets to the VIP the router refused (every reason)
# TYPE kube_service_tunnel_vip_refused_packets_total counter
kube_service_tunnel_vip_refused_packets_total{namespace="web",service="front",vip="203.0.113.10"} 7
# HELP kube_service_tunnel_refused_packets_total Packets to VIPs the router refused, by reason
# TYPE kube_service_tunnel_refused_packets_total counter
kube_service_tunnel_refused_packets_total{reason="no_bucket"} 2
kube_service_tunnel_refused_packets_total{reason="source_range"} 5
# HELP kube_service_tunnel_flows Flows pinned in the router's flow tables, by address family
# TYPE kube_service_tunnel_flows gauge
kube_service_tunnel_flows{family="ipv4"} 12
kube_service_tunnel_flows{family="ipv6"} 1
# HELP kube_service_tunnel_flow_limit Size limit of each of the router's flow tables
# TYPE kube_service_tunnel_flow_limit gauge
kube_service_tunnel_flow_limit 65536
# HELP kube_service_tunnel_new_flows_total Flows added to the router's flow tables (a flow's first packet)
# TYPE kube_service_tunnel_new_flows_total counter
kube_service_tunnel_new_flows_total 40
)");
}

TEST(Metrics, LargeCountersAreExactUpTo2To53) {
  dp::NftCounterSnapshot s;
  s.vip[ip("203.0.113.10")] = {(uint64_t(1) << 53) - 1, 123456789012345};
  auto text = serializeText(counterFamilies(s, names()));
  EXPECT_NE(text.find("vip=\"203.0.113.10\"} 9007199254740991\n"), std::string::npos) << text;
  EXPECT_NE(text.find("vip=\"203.0.113.10\"} 123456789012345\n"), std::string::npos) << text;
}

/** The series lines (no comments) of a text that mention `needle`. */
std::vector<std::string> series(const std::string& text, const std::string& needle) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty() && l[0] != '#' && l.find(needle) != std::string::npos) out.push_back(l);
  return out;
}

Model model(std::vector<TunnelService> s) {
  std::sort(s.begin(), s.end(), [](auto& a, auto& b) { return a.vip < b.vip; });
  return Model{std::move(s), {}};
}

TEST(Metrics, SeriesOfARemovedVipOrEndpointVanish) {
  Metrics m;
  auto snap = std::make_shared<dp::NftCounterSnapshot>(snapshot());
  m.setCounterSource([snap] { return std::optional(*snap); });
  Model both = model({{{"web", "front"}, ip("203.0.113.10"), {}}, {{"web", "six"}, ip("2001:db8::10"), {}}});
  m.vipsChanged(both, {ip("203.0.113.10"), ip("2001:db8::10")});
  auto text = m.render();
  // packets, bytes, refused; packets and bytes of each of its 2 endpoints
  EXPECT_EQ(series(text, "203.0.113.10").size(), 7u) << text;
  EXPECT_EQ(series(text, "2001:db8::10").size(), 4u) << text;
  EXPECT_TRUE(series(text, "203.0.113.99").empty()) << text;  // not a VIP of the model

  // The Service of 2001:db8::10 is gone from the model: its series go, even while the kernel
  // still counts it.
  Model one = model({{{"web", "front"}, ip("203.0.113.10"), {}}});
  m.vipsChanged(one, {ip("2001:db8::10")});
  text = m.render();
  EXPECT_TRUE(series(text, "2001:db8::10").empty()) << text;
  EXPECT_TRUE(series(text, "fd00::1").empty()) << text;
  EXPECT_EQ(series(text, "203.0.113.10").size(), 7u) << text;

  // An endpoint leaves the VIP (its counter leaves the snapshot): its series go.
  snap->endpoint.erase({ip("203.0.113.10"), ip("10.0.0.2")});
  text = m.render();
  EXPECT_TRUE(series(text, "10.0.0.2\"").empty()) << text;
  EXPECT_EQ(series(text, "endpoint=\"10.0.0.1\"").size(), 2u) << text;
  EXPECT_EQ(series(text, "203.0.113.10").size(), 5u) << text;

  // The VIP leaves the kernel too.
  snap->vip.erase(ip("203.0.113.10"));
  snap->refusedByVip.erase(ip("203.0.113.10"));
  snap->endpoint.erase({ip("203.0.113.10"), ip("10.0.0.1")});
  text = m.render();
  EXPECT_TRUE(series(text, "203.0.113.10").empty()) << text;
}

TEST(Metrics, AFailingSourceCostsItsSeriesNotTheScrape) {
  Metrics m;
  m.vipsChanged(model({{{"web", "front"}, ip("203.0.113.10"), {}}}), {ip("203.0.113.10")});
  m.setCounterSource([] { return std::optional<dp::NftCounterSnapshot>(); });
  m.setApiStatsSource([]() -> ApiStats { throw std::runtime_error("boom"); });
  auto text = m.render();
  EXPECT_TRUE(series(text, "vip_packets_total").empty()) << text;
  EXPECT_EQ(series(text, "scrape_errors_total{source=\"counters\"} 1").size(), 1u) << text;
  EXPECT_EQ(series(text, "scrape_errors_total{source=\"api\"} 1").size(), 1u) << text;
  m.setCounterSource([]() -> std::optional<dp::NftCounterSnapshot> {
    throw std::runtime_error("nft");
  });
  text = m.render();
  EXPECT_EQ(series(text, "scrape_errors_total{source=\"counters\"} 2").size(), 1u) << text;
  EXPECT_EQ(series(text, "reconcile_passes_total").size(), 0u) << "no reconciler enabled";
}

TEST(Metrics, ApiStatisticsGiveExactlyTheseSeries) {
  ApiStats a;
  a.watches.push_back({"services", 3, 2, 1, 40, 5, true});
  a.events = ApiStats::Events{7, 1, 2};
  a.publisher = ApiStats::Publisher{true, 9, 1.5};
  EXPECT_EQ(serializeText(apiFamilies(a)),
            R"(# HELP kube_service_tunnel_watch_lists_total Completed lists of a watched resource (the first one and every relist)
# TYPE kube_service_tunnel_watch_lists_total counter
kube_service_tunnel_watch_lists_total{resource="services"} 3
# HELP kube_service_tunnel_watch_gone_total 410 Gone / Expired answers to a watch or list (each forces a relist)
# TYPE kube_service_tunnel_watch_gone_total counter
kube_service_tunnel_watch_gone_total{resource="services"} 2
# HELP kube_service_tunnel_watch_errors_total Failed list or watch requests, retried with backoff
# TYPE kube_service_tunnel_watch_errors_total counter
kube_service_tunnel_watch_errors_total{resource="services"} 1
# HELP kube_service_tunnel_watch_events_total ADDED, MODIFIED and DELETED watch events received
# TYPE kube_service_tunnel_watch_events_total counter
kube_service_tunnel_watch_events_total{resource="services"} 40
# HELP kube_service_tunnel_watch_bookmarks_total BOOKMARK watch events received
# TYPE kube_service_tunnel_watch_bookmarks_total counter
kube_service_tunnel_watch_bookmarks_total{resource="services"} 5
# HELP kube_service_tunnel_watch_synced 1 once a list of the resource has completed
# TYPE kube_service_tunnel_watch_synced gauge
kube_service_tunnel_watch_synced{resource="services"} 1
# HELP kube_service_tunnel_events_posted_total Kubernetes Events posted about problems
# TYPE kube_service_tunnel_events_posted_total counter
kube_service_tunnel_events_posted_total 7
# HELP kube_service_tunnel_events_dropped_total Kubernetes Events dropped (queue full or rejected by the API server)
# TYPE kube_service_tunnel_events_dropped_total counter
kube_service_tunnel_events_dropped_total 1
# HELP kube_service_tunnel_events_queued Kubernetes Events waiting to be posted
# TYPE kube_service_tunnel_events_queued gauge
kube_service_tunnel_events_queued 2
# HELP kube_service_tunnel_publisher_leader 1 while this router holds the Lease of the bucket table writer
# TYPE kube_service_tunnel_publisher_leader gauge
kube_service_tunnel_publisher_leader 1
# HELP kube_service_tunnel_publications_total Bucket tables this router wrote into the API
# TYPE kube_service_tunnel_publications_total counter
kube_service_tunnel_publications_total 9
# HELP kube_service_tunnel_publication_age_seconds Seconds since this router last wrote a bucket table into the API
# TYPE kube_service_tunnel_publication_age_seconds gauge
kube_service_tunnel_publication_age_seconds 1.5
)");
  // An agent: no Events, no publisher; never published: no age.
  ApiStats agent;
  agent.watches.push_back({"endpointslices", 1, 0, 0, 0, 0, false});
  agent.publisher = ApiStats::Publisher{false, 0, std::nullopt};
  auto text = serializeText(apiFamilies(agent));
  EXPECT_EQ(text.find("kube_service_tunnel_events_"), std::string::npos) << text;
  EXPECT_EQ(text.find("publication_age"), std::string::npos) << text;
  EXPECT_NE(text.find("kube_service_tunnel_watch_synced{resource=\"endpointslices\"} 0\n"),
            std::string::npos) << text;
}

TEST(Metrics, LabelValuesAreEscaped) {
  VipNames n{{ip("203.0.113.10"), {"we\"b", "fr\\ont\nx"}}};
  dp::NftCounterSnapshot s;
  s.vip[ip("203.0.113.10")] = {1, 2};
  auto text = serializeText(counterFamilies(s, n));
  EXPECT_NE(text.find(R"({namespace="we\"b",service="fr\\ont\nx",vip="203.0.113.10"} 1)"),
            std::string::npos) << text;
}

// The scrape writes the per-VIP families directly: the same text as prometheus-cpp's serializer
// gives for the same families (which the tests above check), in every case these tests use.
TEST(Metrics, WrittenTextIsTheSerializersText) {
  auto written = [](const dp::NftCounterSnapshot& s, const VipNames& n) {
    std::string out = "# before\n";
    appendCounterText(out, s, n);
    return out;
  };
  auto lib = [](const dp::NftCounterSnapshot& s, const VipNames& n) {
    return "# before\n" + serializeText(counterFamilies(s, n));
  };
  EXPECT_EQ(written(snapshot(), names()), lib(snapshot(), names()));
  EXPECT_EQ(written({}, {}), lib({}, {}));
  EXPECT_EQ(written(snapshot(), {}), lib(snapshot(), {}));
  // Only the middle VIP named; a named VIP the snapshot lacks; escaped names.
  VipNames odd{{ip("203.0.113.10"), {"we\"b", "fr\\ont\nx"}}, {ip("203.0.113.50"), {"a", "b"}}};
  dp::NftCounterSnapshot s = snapshot();
  s.vip[ip("198.51.100.1")] = {1, 1};
  s.refused["we\"ird"] = {3, 3};
  EXPECT_EQ(written(s, odd), lib(s, odd));
  // Announcement state.
  for (bool drained : {false, true}) {
    std::string out;
    appendAnnounceText(out, {ip("2001:db8::10")}, drained, names());
    EXPECT_EQ(out, serializeText(announceFamilies({ip("2001:db8::10")}, drained, names())));
  }
  // The scrape's whole text has them (render()).
  Metrics m;
  m.setCounterSource([] { return std::optional(snapshot()); });
  m.vipsChanged(model({{{"web", "front"}, ip("203.0.113.10"), {}}, {{"web", "six"}, ip("2001:db8::10"), {}}}),
                {ip("203.0.113.10"), ip("2001:db8::10")});
  m.announced(std::set<IpAddress>{ip("203.0.113.10")}, false);
  auto text = m.render();
  EXPECT_NE(text.find(serializeText(counterFamilies(snapshot(), names()))), std::string::npos)
      << text;
  EXPECT_NE(text.find(serializeText(announceFamilies({ip("203.0.113.10")}, false, names()))),
            std::string::npos)
      << text;
}

// Written directly, a counter is exact beyond 2^53 too (the serializer prints doubles).
TEST(Metrics, WrittenCountersAreExactIntegers) {
  dp::NftCounterSnapshot s;
  s.vip[ip("203.0.113.10")] = {(uint64_t(1) << 60) + 1, UINT64_MAX};
  std::string text;
  appendCounterText(text, s, names());
  EXPECT_NE(text.find("vip=\"203.0.113.10\"} 1152921504606846977\n"), std::string::npos) << text;
  EXPECT_NE(text.find("vip=\"203.0.113.10\"} 18446744073709551615\n"), std::string::npos) << text;
}

// The daemon records its passes: one router pass (with the announcer) on the in-memory kernel.
class DaemonMetrics : public ::testing::Test {
 protected:
  /** Runs the daemon once over the Services of kManifests; @return its exit code. */
  int runOnce(bool withAnnouncer) {
    auto objs = parseManifestText(kManifests, "x.yaml");
    EXPECT_TRUE(objs) << objs.error().message;
    if (!objs) return -1;
    fake::FakeNft nft(cfg.nftTable);
    RouterReconciler router(cfg, k, nft);
    AnnounceReconciler announce(4242, k, "");
    fake::SnapshotSource src(*objs);
    DaemonOptions o;
    o.once = true;
    o.agent = false;
    Daemon d(o, src, &router, nullptr);
    if (withAnnouncer) d.setAnnouncer(&announce);
    d.setMetrics(&m);
    int rc = d.run();
    routerChanges = d.lastRouterPassForTest().changes;
    text = m.render();
    return rc;
  }
  /** The value of the one series `s` (its name and labels), -1 when not exactly one. */
  double value(const std::string& s) const {
    auto l = series(text, s + " ");
    if (l.size() != 1) return -1.0;
    return std::stod(l[0].substr(l[0].rfind(' ') + 1));
  }
  static constexpr const char* kManifests = R"(apiVersion: v1
kind: Service
metadata: {name: front, namespace: web, annotations: {cmd.nu/tunnel: 203.0.113.10}}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: web, annotations: {cmd.nu/tunnel: 203.0.113.11}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: front-1, namespace: web, labels: {kubernetes.io/service-name: front}}
addressType: IPv4
endpoints:
- {addresses: ["10.0.0.1"], nodeName: n1}
)";
  DataplaneConfig cfg;
  fake::FakeKernel k;
  Metrics m;
  size_t routerChanges = 0;
  std::string text;
};

TEST_F(DaemonMetrics, PassesChangesAndAnnouncementStateAreRecorded) {
  double before = double(std::time(nullptr));
  ASSERT_EQ(runOnce(true), 0);
  EXPECT_EQ(value("kube_service_tunnel_reconcile_passes_total{reconciler=\"router\"}"), 1) << text;
  EXPECT_EQ(value("kube_service_tunnel_reconcile_passes_total{reconciler=\"announce\"}"), 1);
  EXPECT_EQ(value("kube_service_tunnel_reconcile_duration_seconds_count{reconciler=\"router\"}"),
            1);
  EXPECT_GT(routerChanges, 0u);
  EXPECT_EQ(value("kube_service_tunnel_kernel_changes_total{reconciler=\"router\"}"),
            double(routerChanges));
  EXPECT_EQ(value("kube_service_tunnel_kernel_changes_total{reconciler=\"announce\"}"), 1);
  EXPECT_EQ(value("kube_service_tunnel_reconcile_failures_total{reason=\"apply\","
                  "reconciler=\"router\"}"), 0);
  EXPECT_GE(value("kube_service_tunnel_last_successful_pass_timestamp_seconds"), before);
  EXPECT_EQ(value("kube_service_tunnel_vip_announced{namespace=\"web\",service=\"front\","
                  "vip=\"203.0.113.10\"}"), 1) << text;
  EXPECT_EQ(value("kube_service_tunnel_vip_announced{namespace=\"web\",service=\"empty\","
                  "vip=\"203.0.113.11\"}"), 0) << text;
  EXPECT_EQ(value("kube_service_tunnel_announce_drained"), 0);
  EXPECT_TRUE(series(text, "reconciler=\"agent\"").empty()) << "the agent role is off";
}

TEST_F(DaemonMetrics, AFailedApplyIsCountedByReason) {
  k.failWhen([](const dp::Change&) { return true; });
  EXPECT_EQ(runOnce(false), 1);
  EXPECT_EQ(value("kube_service_tunnel_reconcile_failures_total{reason=\"apply\","
                  "reconciler=\"router\"}"), 1) << text;
  EXPECT_EQ(value("kube_service_tunnel_last_successful_pass_timestamp_seconds"), 0) << text;
  EXPECT_TRUE(series(text, "vip_announced").empty()) << "no announcer";
}

TEST_F(DaemonMetrics, AKernelThatCannotBeReadIsCountedAsObserve) {
  k.failDumps = true;
  EXPECT_EQ(runOnce(false), 1);
  EXPECT_EQ(value("kube_service_tunnel_reconcile_failures_total{reason=\"observe\","
                  "reconciler=\"router\"}"), 1) << text;
  EXPECT_EQ(value("kube_service_tunnel_reconcile_passes_total{reconciler=\"router\"}"), 1);
}

TEST(Metrics, ServedAsMetricsByTheHealthServer) {
  Metrics m;
  m.enable(Reconciler::Agent);
  m.pass(Reconciler::Agent, 0.002, 3);
  HealthServer h([] { return std::string(); });
  m.serve(h);
  ASSERT_TRUE(h.start("127.0.0.1", 0));
  httplib::Client cli("127.0.0.1", h.port());
  auto res = cli.Get("/metrics");
  h.stop();
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(res->body.find("\nkube_service_tunnel_reconcile_passes_total{reconciler=\"agent\"} 1\n"),
            std::string::npos) << res->body;
  EXPECT_NE(res->body.find("\nkube_service_tunnel_kernel_changes_total{reconciler=\"agent\"} 3\n"),
            std::string::npos) << res->body;
}

// Every family the daemon can export, through promtool's parser and linter.
TEST(Metrics, PromtoolAcceptsTheWholeExposition) {
  ASSERT_TRUE(std::filesystem::exists("/usr/bin/promtool"))
      << "promtool missing: apt-get install prometheus (scripts/lib/deps.sh)";
  Metrics m;
  for (auto r : {Reconciler::Router, Reconciler::Announce, Reconciler::Agent}) m.enable(r);
  m.pass(Reconciler::Router, 0.01, 4);
  m.failure(Reconciler::Router, FailureReason::Publish);
  m.releasedSlots(2);
  m.passSucceeded();
  Model both = model({{{"web", "front"}, ip("203.0.113.10"), {}}, {{"web", "six"}, ip("2001:db8::10"), {}}});
  m.vipsChanged(both, {ip("203.0.113.10"), ip("2001:db8::10")});
  m.announced(std::set<IpAddress>{ip("203.0.113.10")}, false);
  m.setCounterSource([] { return std::optional(snapshot()); });
  m.setApiStatsSource([] {
    ApiStats a;
    a.watches.push_back({"services", 3, 2, 1, 40, 5, true});
    a.watches.push_back({"endpointslices", 1, 0, 0, 4, 0, true});
    a.events = ApiStats::Events{7, 1, 2};
    a.publisher = ApiStats::Publisher{true, 9, 1.5};
    return a;
  });
  auto text = m.render();
  std::string file = testing::TempDir() + "kmx-metrics-" + std::to_string(getpid()) + ".txt";
  std::ofstream(file) << text;
  FILE* p = popen(("promtool check metrics < " + file + " 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  int st = pclose(p);
  std::filesystem::remove(file);
  EXPECT_EQ(st, 0) << out << "\n" << text;
  EXPECT_EQ(out, "") << text;
}

}  // namespace
}  // namespace kst
