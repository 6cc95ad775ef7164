// /metrics scraped by a real Prometheus (Debian package prometheus): a router daemon runs in
// the topology's router namespace with --health-port; Prometheus runs in the same namespace
// (its own config, storage under the test's /tmp directory, listening on the namespace's
// loopback only, stopped in TearDown), scrapes it every second, and the test asks its HTTP API
// (/api/v1/query) for the daemon's series: reconcile passes > 0 and the announcement state of
// the Service's VIP (a per-VIP series named from the model). `promtool check metrics` checks
// the daemon's live output. Prefix kmx.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "privileged/harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10";
const std::string kMetricsPort = "9464";
const std::string kPromAddr = "127.0.0.1:9090";

class PromScrape : public E2E {
 protected:
  void SetUp() override {
    E2E::SetUp();
    if (IsSkipped()) return;
    usePrefix("kmx");
    if (!std::filesystem::exists("/usr/bin/prometheus") ||
        !std::filesystem::exists("/usr/bin/promtool"))
      FAIL() << "needs the Debian package prometheus (scripts/lib/deps.sh)";
    topology(1, 1);
    serve("p1a");
    writeManifest("web.yaml", serviceYaml("web", kVip) + "---\n" +
                                  sliceYaml("web", "IPv4", {{"198.19.1.2", "node1"}}));
    startRouter("rt", {"--health-port", kMetricsPort, "--health-address", "127.0.0.1",
                       "--announce-table", "4242", "--state-dir", dir + "/state"});
  }

  void startPrometheus() {
    std::string cfg = dir + "/prometheus.yml";
    std::ofstream(cfg) << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          "scrape_configs:\n- job_name: kst\n  static_configs:\n"
                          "  - targets: ['127.0.0.1:" + kMetricsPort + "']\n";
    procs["prometheus"] =
        Process({"ip", "netns", "exec", ns("rt"), "/usr/bin/prometheus", "--config.file=" + cfg,
                 "--storage.tsdb.path=" + dir + "/prom", "--web.listen-address=" + kPromAddr,
                 "--log.level=warn"},
                dir + "/prometheus.log");
  }

  /** The vector result of an instant query through Prometheus' HTTP API (empty: none). */
  nlohmann::json query(const std::string& promql) {
    auto body = out("rt", "curl -sS -G --max-time 5 http://" + kPromAddr +
                              "/api/v1/query --data-urlencode 'query=" + promql + "'");
    auto j = nlohmann::json::parse(body, nullptr, false);
    if (j.is_discarded() || j.value("status", "") != "success") return nlohmann::json::array();
    return j["data"]["result"];
  }
  /** The value of the single series a query returns; nullopt when it returns none. */
  std::optional<double> scalar(const std::string& promql) {
    auto r = query(promql);
    if (!r.is_array() || r.size() != 1) return std::nullopt;
    return std::stod(r[0]["value"][1].get<std::string>());
  }
};

TEST_F(PromScrape, PrometheusScrapesTheRouterAndAnswersForItsSeries) {
  startPrometheus();
  // The daemon's own output (once the VIP is announced) passes promtool's parser and linter.
  std::string text;
  ASSERT_TRUE(waitUntil([&] {
    text = out("rt", "curl -sS --max-time 5 http://127.0.0.1:" + kMetricsPort + "/metrics");
    return text.find("vip=\"" + kVip + "\"} 1\n") != std::string::npos;
  }, 20)) << text << procs["rt"].log();
  std::ofstream(dir + "/metrics.txt") << text;
  auto lint = sh("promtool check metrics < " + dir + "/metrics.txt");
  EXPECT_EQ(lint.rc, 0) << lint.out;
  EXPECT_EQ(lint.out, "") << lint.out;

  // Through Prometheus: the target is up and the series are stored and answered.
  ASSERT_TRUE(waitUntil([&] { return scalar("up{job=\"kst\"}") == 1.0; }, 60))
      << procs["prometheus"].log();
  std::optional<double> passes;
  ASSERT_TRUE(waitUntil([&] {
    passes = scalar("kube_service_tunnel_reconcile_passes_total{reconciler=\"router\"}");
    return passes.has_value();
  }, 30)) << procs["prometheus"].log();
  EXPECT_GT(*passes, 0);
  EXPECT_EQ(scalar("kube_service_tunnel_reconcile_failures_total{reason=\"apply\","
                   "reconciler=\"router\"}"), 0.0);
  EXPECT_GT(scalar("kube_service_tunnel_kernel_changes_total{reconciler=\"router\"}").value_or(0),
            0);
  EXPECT_GT(scalar("kube_service_tunnel_last_successful_pass_timestamp_seconds").value_or(0),
            1.7e9);
  EXPECT_EQ(scalar("kube_service_tunnel_reconcile_duration_seconds_count{reconciler=\"router\"}"),
            passes) << "one duration observation per pass";
  // A per-VIP series, labelled from the model.
  EXPECT_EQ(scalar("kube_service_tunnel_vip_announced{namespace=\"default\",service=\"web\","
                   "vip=\"" + kVip + "\"}"), 1.0);

  // Traffic: the router's nft counters, read at scrape time through their own client. Every
  // datagram the client sends to the VIP passes the router once (answers go directly, DSR), and
  // the per-endpoint series of the VIP add up to the VIP's.
  auto answers = udp(kVip, 25);
  ASSERT_EQ(answers.size(), 25u);
  const std::string sel =
      "{namespace=\"default\",service=\"web\",vip=\"" + kVip + "\"}";
  std::optional<double> vipPackets, endpointPackets;
  EXPECT_TRUE(waitUntil([&] {
    vipPackets = scalar("kube_service_tunnel_vip_packets_total" + sel);
    endpointPackets = scalar("sum(kube_service_tunnel_endpoint_packets_total" + sel + ")");
    return vipPackets.value_or(0) >= 25 && endpointPackets == vipPackets;
  }, 30)) << "vip " << vipPackets.value_or(-1) << " endpoints " << endpointPackets.value_or(-1);
  EXPECT_GT(scalar("kube_service_tunnel_vip_bytes_total" + sel).value_or(0), 25 * 28);

  // The Service goes: its per-VIP series leave the next scrape.
  removeManifest("web.yaml");
  EXPECT_TRUE(waitUntil([&] {
    return query("kube_service_tunnel_vip_announced{vip=\"" + kVip + "\"}").empty();
  }, 30));
  auto after = out("rt", "curl -sS --max-time 5 http://127.0.0.1:" + kMetricsPort + "/metrics");
  EXPECT_EQ(after.find(kVip), std::string::npos) << after;
}

}  // namespace
}  // namespace kst::e2e
