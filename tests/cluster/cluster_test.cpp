// kube-service-tunnel against a real Kubernetes control plane (kube-apiserver +
// kube-controller-manager v1.36.3, no kubelet): the install from deploy/, traffic to a VIP
// through real EndpointSlices, scaling and annotation changes, an apiserver outage, a forced
// 410 Gone, and Events for bad input. See cluster_harness.h for how it is wired.
#include <algorithm>
#include <csignal>
#include <regex>

#include "cluster/cluster_harness.h"

namespace kst::e2e {
namespace {

const std::string kVip = "203.0.113.10";
const std::string kVip2 = "203.0.113.20";
const std::string kVip3 = "203.0.113.40";

/** The bearer token of a kubeconfig written by tools/k8s/sa-kubeconfig.sh. */
std::string tokenOf(const std::string& kubeconfig) {
  std::ifstream f(kubeconfig);
  for (std::string l; std::getline(f, l);)
    if (auto p = l.find("token: "); p != std::string::npos) return l.substr(p + 7);
  return {};
}

TEST_F(Cluster, DeployManifestsInstallWithLeastPrivilegeRbac) {
  const auto& out = cp().deployOutput;
  for (auto want : {"namespace/kube-service-tunnel created",
                    "serviceaccount/kube-service-tunnel-router created",
                    "serviceaccount/kube-service-tunnel-agent created",
                    "configmap/kube-service-tunnel-vip-pools created",
                    "clusterrole.rbac.authorization.k8s.io/kube-service-tunnel-router created",
                    "clusterrolebinding.rbac.authorization.k8s.io/kube-service-tunnel-router created",
                    "role.rbac.authorization.k8s.io/kube-service-tunnel-router created",
                    "rolebinding.rbac.authorization.k8s.io/kube-service-tunnel-router created",
                    "clusterrole.rbac.authorization.k8s.io/kube-service-tunnel-agent created",
                    "clusterrolebinding.rbac.authorization.k8s.io/kube-service-tunnel-agent created",
                    "daemonset.apps/kube-service-tunnel-router created",
                    "daemonset.apps/kube-service-tunnel-agent created"})
    EXPECT_NE(out.find(want), std::string::npos) << want << "\n" << out;
  // Each DaemonSet runs as its own ServiceAccount; only the agent shares the host's PIDs.
  auto ds = [&](const std::string& name) {
    return nlohmann::json::parse(
        kubectl("-n kube-service-tunnel get daemonset " + name + " -o json").out, nullptr, false);
  };
  auto router = ds("kube-service-tunnel-router"), agent = ds("kube-service-tunnel-agent");
  ASSERT_FALSE(router.is_discarded() || agent.is_discarded());
  EXPECT_EQ(router["spec"]["template"]["spec"].value("serviceAccountName", ""), kSaRouter);
  EXPECT_EQ(agent["spec"]["template"]["spec"].value("serviceAccountName", ""), kSaAgent);
  EXPECT_FALSE(router["spec"]["template"]["spec"].value("hostPID", false));
  EXPECT_TRUE(agent["spec"]["template"]["spec"].value("hostPID", false));

  // Real requests with each ServiceAccount's token: what the role does succeeds (or fails for
  // a reason other than authorization: 404/409 on an object that is absent/changed), the rest
  // is 403 Forbidden.
  ASSERT_EQ(kubectl("-n " + kns + " create service clusterip rbac-probe --tcp=80").rc, 0);
  ASSERT_EQ(kubectl("-n " + kns + " create configmap tenant-cm --from-literal=a=b").rc, 0);
  const std::string ns = kSaNamespace, probe = "rbac-probe-" + std::to_string(getpid());
  const std::string svcPatch = R"({"metadata":{"annotations":{"rbac-probe":"x"}}})";
  const std::string statusPatch = R"({"status":{"loadBalancer":{}}})";
  auto cm = [](const std::string& name) {
    return R"({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":")" + name + R"("}})";
  };
  // An update names resourceVersion "1": a Lease that exists answers 409 Conflict instead of
  // being overwritten (a later test's publisher election must find it intact); one that does
  // not exist is created (Leases allow create on update) and deleted again below.
  auto lease = [](const std::string& name, bool update = true) {
    return R"({"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":")" + name +
           (update ? R"(","resourceVersion":"1")" : R"(")") + R"(},"spec":{}})";
  };
  const std::string event =
      R"({"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"rbac-probe.1"},)"
      R"("eventTime":"2026-01-01T00:00:00.000000Z","reportingController":"cmd.nu/kube-service-tunnel",)"
      R"("reportingInstance":"rbac-probe","action":"Tunnel","reason":"RbacProbe","type":"Normal",)"
      R"("regarding":{"kind":"Service","namespace":")" + kns + R"(","name":"rbac-probe"}})";
  const std::string pod =
      R"({"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"},"spec":{"containers":[{"name":"x","image":"x"}]}})";
  const std::string merge = "application/merge-patch+json", json = "application/json";
  // The agent's VIP readiness gate (k8s/pod_gate.h): patch of pods/status and nothing else of
  // pods (a pod that does not exist: 404 when authorized).
  const std::string podStatus = "/api/v1/namespaces/" + kns + "/pods/rbac-probe/status";
  const std::string podGate =
      R"({"status":{"conditions":[{"type":"cmd.nu/vip-ready","status":"True"}]}})";
  const std::string strategic = "application/strategic-merge-patch+json";
  struct Call {
    std::string what, method, path, body, type;
    bool allowed;
  };
  const std::string svc = "/api/v1/namespaces/" + kns + "/services/rbac-probe";
  const std::string leases = "/apis/coordination.k8s.io/v1/namespaces/" + ns + "/leases";
  const std::string ownCms = "/api/v1/namespaces/" + ns + "/configmaps";
  const std::vector<Call> common{
      {"list services (all namespaces)", "GET", "/api/v1/services?limit=1", "", "", true},
      {"watch services (all namespaces)", "GET", "/api/v1/services?watch=1&timeoutSeconds=1", "", "", true},
      {"list endpointslices (all namespaces)", "GET", "/apis/discovery.k8s.io/v1/endpointslices?limit=1", "", "", true},
      {"watch endpointslices (all namespaces)", "GET", "/apis/discovery.k8s.io/v1/endpointslices?watch=1&timeoutSeconds=1", "", "", true},
      {"get service", "GET", svc, "", "", false},
      {"patch service in a tenant namespace", "PATCH", svc, svcPatch, merge, false},
      {"delete service", "DELETE", svc, "", "", false},
      {"list secrets (all namespaces)", "GET", "/api/v1/secrets", "", "", false},
      {"get secrets in own namespace", "GET", "/api/v1/namespaces/" + ns + "/secrets", "", "", false},
      {"list pods", "GET", "/api/v1/pods", "", "", false},
      {"get pod", "GET", "/api/v1/namespaces/" + kns + "/pods/rbac-probe", "", "", false},
      {"get pod status", "GET", podStatus, "", "", false},
      {"patch pod (spec)", "PATCH", "/api/v1/namespaces/" + kns + "/pods/rbac-probe", podGate, strategic, false},
      {"create pod", "POST", "/api/v1/namespaces/" + kns + "/pods", pod, json, false},
      {"list nodes", "GET", "/api/v1/nodes", "", "", false},
      {"create configmap in a tenant namespace", "POST", "/api/v1/namespaces/" + kns + "/configmaps", cm(probe), json, false},
      {"get configmap in a tenant namespace", "GET", "/api/v1/namespaces/" + kns + "/configmaps/tenant-cm", "", "", false},
      {"create lease in another namespace", "POST", "/apis/coordination.k8s.io/v1/namespaces/" + kns + "/leases", lease(probe, false), json, false},
      {"update another lease in own namespace", "PUT", leases + "/other", lease("other"), json, false},
      {"delete the publisher lease", "DELETE", leases + "/kube-service-tunnel-publisher", "", "", false},
  };
  auto withRole = [&](std::vector<Call> extra) {
    auto all = common;
    all.insert(all.end(), extra.begin(), extra.end());
    return all;
  };
  const std::map<std::string, std::vector<Call>> table{
      {kSaRouter,
       withRole({
           {"create event (tenant namespace)", "POST", "/apis/events.k8s.io/v1/namespaces/" + kns + "/events", event, json, true},
           {"get the publisher lease", "GET", leases + "/kube-service-tunnel-publisher", "", "", true},
           {"update the publisher lease", "PUT", leases + "/kube-service-tunnel-publisher", lease("kube-service-tunnel-publisher"), json, true},
           {"create lease in own namespace", "POST", leases, lease(probe, false), json, true},
           {"create configmap in own namespace", "POST", ownCms, cm(probe), json, true},
           {"list configmaps in own namespace", "GET", ownCms, "", "", true},
           {"watch configmaps in own namespace", "GET", ownCms + "?watch=1&timeoutSeconds=1", "", "", true},
           {"patch configmap in own namespace", "PATCH", ownCms + "/" + probe, R"({"data":{"a":"b"}})", merge, true},
           {"delete configmap in own namespace", "DELETE", ownCms + "/" + probe, "", "", true},
           {"get node", "GET", "/api/v1/nodes/node1", "", "", false},
           // The elected router writes the address of our LoadBalancer Services.
           {"patch service status", "PATCH", svc + "/status", statusPatch, merge, true},
           {"patch pod status", "PATCH", podStatus, podGate, strategic, false},
       })},
      {kSaAgent,
       withRole({
           {"get node", "GET", "/api/v1/nodes/node1", "", "", true},
           {"patch pod status", "PATCH", podStatus, podGate, strategic, true},
           {"create event (tenant namespace)", "POST", "/apis/events.k8s.io/v1/namespaces/" + kns + "/events", event, json, false},
           {"get the publisher lease", "GET", leases + "/kube-service-tunnel-publisher", "", "", false},
           {"update the publisher lease", "PUT", leases + "/kube-service-tunnel-publisher", lease("kube-service-tunnel-publisher"), json, false},
           {"create lease in own namespace", "POST", leases, lease(probe, false), json, false},
           {"create configmap in own namespace", "POST", ownCms, cm(probe), json, false},
           {"list configmaps in own namespace", "GET", ownCms, "", "", false},
           {"patch service status", "PATCH", svc + "/status", statusPatch, merge, false},
       })},
  };
  const std::string url = cp().env["APISERVER_URL"], ca = cp().dir + "/pki/ca.crt";
  std::string report = "role    request                                       expected  HTTP\n";
  bool publisherLeaseCreated = false;
  for (const auto& [sa, calls] : table) {
    std::string token = tokenOf(sa == kSaRouter ? cp().routerKubeconfig : cp().agentKubeconfig);
    ASSERT_FALSE(token.empty()) << sa;
    for (const auto& c : calls) {
      std::string bodyFile = dir + "/rbac-body.json";
      std::ofstream(bodyFile) << c.body;
      std::string cmd = "curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert " + ca +
                        " -H 'Authorization: Bearer " + token + "' -X " + c.method + " '" + url +
                        c.path + "'";
      if (!c.body.empty()) cmd += " -H 'Content-Type: " + c.type + "' --data-binary @" + bodyFile;
      int code = std::atoi(sh(cmd, false).out.c_str());
      // Allowed: authorized (2xx, or 404/409 for an absent/changed object); denied: 403.
      bool ok = c.allowed ? (code >= 200 && code < 300) || code == 404 || code == 409 : code == 403;
      auto pad = [](std::string v, size_t w) { return v.size() < w ? v.append(w - v.size(), ' ') : v + ' '; };
      report += pad(sa == kSaRouter ? "router" : "agent", 8) + pad(c.method + " " + c.what, 46) +
                pad(c.allowed ? "allowed" : "403", 10) + std::to_string(code) +
                (ok ? "" : "  <-- WRONG") + "\n";
      EXPECT_TRUE(ok) << sa << ": " << c.method << " " << c.path << " -> " << code;
      if (c.method == "PUT" && c.path.ends_with("/kube-service-tunnel-publisher") && code == 201)
        publisherLeaseCreated = true;
    }
  }
  std::cerr << "[rbac]\n" << report;
  kubectl("-n " + ns + " delete lease " + probe + " --ignore-not-found");
  if (publisherLeaseCreated) kubectl("-n " + ns + " delete lease kube-service-tunnel-publisher");
  kubectl("-n " + ns + " delete configmap " + probe + " --ignore-not-found");
  kubectl("delete events.events.k8s.io -n " + kns + " rbac-probe.1 --ignore-not-found");
  // The DaemonSet controller places router pods only on node=tunnel nodes, agents everywhere
  // (they stay Pending: there is no kubelet; DaemonSet pods are pinned by node affinity).
  std::multiset<std::string> placed;
  ASSERT_TRUE(waitUntil([&] {
    auto j = nlohmann::json::parse(
        sh(cp().kubectl("-n kube-service-tunnel get pods -o json"), false).out, nullptr, false);
    placed.clear();
    if (!j.is_object()) return false;
    for (auto& p : j["items"]) {
      std::string comp = p["metadata"]["labels"].value("app.kubernetes.io/component", "?");
      std::string node = p["spec"]["affinity"]["nodeAffinity"]
                          ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
                          ["matchFields"][0]["values"][0];
      placed.insert(comp + "@" + node);
    }
    return placed.size() == 4;
  }, 30)) << placed.size();
  EXPECT_EQ(placed, (std::multiset<std::string>{"agent@node1", "agent@node2", "agent@tunnel1",
                                                "router@tunnel1"}));
}

TEST_F(Cluster, TrafficToTheVipReachesPodsWithTheClientSourceAddress) {
  clusterTopology();
  for (auto p : {"p1a", "p1b", "p2a"}) serve(p);
  ASSERT_EQ(createService("web", kVip).rc, 0);
  for (auto p : {"p1a", "p1b", "p2a"}) createPod(p);
  startDaemons();
  ASSERT_TRUE(reachable(kVip, 30)) << logOf("rt");
  auto answers = tcp(kVip, 30);
  ASSERT_EQ(answers.size(), 30u);
  std::set<std::string> pods;
  for (auto& a : answers) {
    ASSERT_NE(a, "FAIL");
    auto sp = a.find(' ');
    pods.insert(a.substr(0, sp));
    EXPECT_EQ(a.substr(sp + 1), "198.18.0.10") << "the pod must see the client's own address";
  }
  EXPECT_EQ(pods, (std::set<std::string>{"p1a", "p1b", "p2a"}));
  for (auto& a : udp(kVip, 6)) EXPECT_TRUE(a.ends_with(" 198.18.0.10")) << a;
  // The agents learned only their own node's endpoints; the readiness probes pass.
  EXPECT_TRUE(waitUntil([&] { return in("rt", "curl -sf http://127.0.0.1:10265/readyz").out == "ok\n"; }));
  EXPECT_EQ(in("n1", "curl -sf http://127.0.0.1:10266/readyz").out, "ok\n");
  EXPECT_EQ(in("n1", "curl -sf http://127.0.0.1:10266/healthz").out, "ok\n");
  // /metrics with the Kubernetes API source (docs/metrics.md): the API client's series.
  auto rtMetrics = in("rt", "curl -sf http://127.0.0.1:10265/metrics").out;
  for (auto s : {"kube_service_tunnel_watch_synced{resource=\"services\"} 1\n",
                 "kube_service_tunnel_watch_synced{resource=\"endpointslices\"} 1\n",
                 "kube_service_tunnel_watch_synced{resource=\"configmaps\"} 1\n",
                 "\nkube_service_tunnel_events_dropped_total 0\n",
                 "\nkube_service_tunnel_publisher_leader "})
    EXPECT_NE(rtMetrics.find(s), std::string::npos) << s << "\n" << rtMetrics;
  auto agentMetrics = in("n1", "curl -sf http://127.0.0.1:10266/metrics").out;
  EXPECT_NE(agentMetrics.find("kube_service_tunnel_reconcile_passes_total{reconciler=\"agent\"}"),
            std::string::npos) << agentMetrics;
  EXPECT_EQ(agentMetrics.find("kube_service_tunnel_events_"), std::string::npos) << agentMetrics;
  EXPECT_TRUE(logHas("n1", "Node node1 found")) << logOf("n1");
  EXPECT_TRUE(logHas("rt", "kubernetes: synced")) << logOf("rt");
}

TEST_F(Cluster, ScaleThreeFiveOneChangeVipRemoveAnnotationDeleteService) {
  clusterTopology();
  for (auto& [p, _] : kPods) serve(p);
  ASSERT_EQ(createService("web", kVip).rc, 0);
  for (auto p : {"p1a", "p1b", "p2a"}) createPod(p);
  startDaemons();
  ASSERT_TRUE(waitUntil([&] { return podsAre(kVip, {"p1a", "p1b", "p2a"}); }, 30)) << logOf("rt");
  EXPECT_EQ(routerNexthopDsts(), (std::set<std::string>{"198.19.1.2", "198.19.1.3", "198.19.2.2"}));

  // 3 → 5
  createPod("p1c");
  createPod("p2b");
  ASSERT_TRUE(waitUntil([&] { return podsAre(kVip, {"p1a", "p1b", "p1c", "p2a", "p2b"}, 100); }, 30));
  EXPECT_TRUE(waitUntil([&] { return routerNexthopDsts().size() == 5; }));
  for (auto p : {"p1a", "p1b", "p1c", "p2a", "p2b"}) EXPECT_TRUE(podHasVip(p, kVip)) << p;
  EXPECT_FALSE(podHasVip("p2c", kVip));

  // 5 → 1
  for (auto p : {"p1b", "p1c", "p2a", "p2b"}) deletePod(p);
  ASSERT_TRUE(waitUntil([&] { return podsAre(kVip, {"p1a"}, 20); }, 30));
  EXPECT_TRUE(waitUntil([&] {
    return routerNexthopDsts() == std::set<std::string>{"198.19.1.2"} && !podHasVip("p1b", kVip) &&
           !podHasVip("p1c", kVip) && !podHasVip("p2a", kVip) && !podHasVip("p2b", kVip) &&
           owned("p2a").empty();
  })) << routerNexthopDsts().size() << owned("p2a");

  // Another VIP: the old one disappears everywhere, the new one works.
  ASSERT_EQ(kubectl("-n " + kns + " annotate service web cmd.nu/tunnel=" + kVip2 + " --overwrite").rc, 0);
  ASSERT_TRUE(reachable(kVip2, 30));
  EXPECT_TRUE(waitUntil([&] {
    // (The flow map may still pin old connections to the old VIP until they time out.)
    return !podHasVip("p1a", kVip) && podHasVip("p1a", kVip2) &&
           in("rt", "nft list set inet kube_service_tunnel vip4").out.find(kVip) == std::string::npos &&
           in("rt", "nft list map inet kube_service_tunnel b2s4").out.find(kVip) == std::string::npos;
  }));
  EXPECT_EQ(answering(kVip, 3), std::set<std::string>{}) << "the old VIP must be gone";

  // No annotation: nothing of ours is left on the router, the nodes or in the pods.
  ASSERT_EQ(kubectl("-n " + kns + " annotate service web cmd.nu/tunnel-").rc, 0);
  EXPECT_TRUE(waitUntil([&] {
    return owned("rt").empty() && owned("p1a").empty() && owned("n1").empty();
  }, 20)) << owned("rt") << owned("p1a");

  // Back, then delete the Service: clean again.
  ASSERT_EQ(kubectl("-n " + kns + " annotate service web cmd.nu/tunnel=" + kVip).rc, 0);
  ASSERT_TRUE(reachable(kVip, 30));
  ASSERT_EQ(kubectl("-n " + kns + " delete service web").rc, 0);
  EXPECT_TRUE(waitUntil([&] {
    bool clean = true;
    for (auto n : {"rt", "n1", "n2", "p1a", "p1b", "p1c", "p2a", "p2b", "p2c"})
      clean = clean && owned(n).empty();
    return clean;
  }, 20)) << owned("rt") << owned("p1a");
  for (auto n : {"rt", "n1", "n2"}) EXPECT_TRUE(procs[n].running()) << n;
}

TEST_F(Cluster, InvalidAnnotationAndVipConflictRaiseEventsAndTheRestWorks) {
  clusterTopology(2);
  for (auto p : {"p1a", "p2a", "p2b"}) serve(p);
  ASSERT_EQ(createService("web", kVip).rc, 0);
  for (auto p : {"p1a", "p2a"}) createPod(p);
  startDaemons();
  ASSERT_TRUE(waitUntil([&] { return podsAre(kVip, {"p1a", "p2a"}); }, 30)) << logOf("rt");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // creationTimestamp resolution: 1 s
  ASSERT_EQ(createService("notanip", "not-an-ip").rc, 0);
  ASSERT_EQ(createService("thief", kVip, "thief").rc, 0);  // newer: web keeps the VIP
  createPod("p2b", "thief");
  // The Events, as a user sees them.
  std::string table;
  EXPECT_TRUE(waitUntil([&] {
    table = kubectl("-n " + kns + " get events").out;
    return table.find("InvalidTunnelAnnotation") != std::string::npos &&
           table.find("TunnelVIPConflict") != std::string::npos;
  }, 20)) << table << logOf("rt");
  auto ev = nlohmann::json::parse(
      sh(cp().kubectl("-n " + kns + " get events -o json"), false).out, nullptr, false);
  std::map<std::string, std::string> reasonOf;  // object → reason
  ASSERT_TRUE(ev.is_object() && ev.contains("items")) << ev.dump();
  // Ours only: the control plane reports on Services too (once in CI, kube-apiserver's
  // ipallocator-repair-controller reported on the Service "web"), and those are not the
  // daemon's; they are printed, not counted.
  auto ours = [](const nlohmann::json& e) {
    return e.value("reportingComponent", "") == "cmd.nu/kube-service-tunnel";
  };
  for (auto& e : ev["items"]) {
    if (!ours(e)) {
      std::cerr << "not the daemon's event: " << e.value("reportingComponent", "") << " "
                << e.value("reason", "") << " " << e["involvedObject"].value("name", "") << "\n";
      continue;
    }
    EXPECT_EQ(e["involvedObject"]["kind"], "Service");
    EXPECT_EQ(e["type"], "Warning");
    EXPECT_FALSE(e["involvedObject"].value("uid", "").empty());
    reasonOf[e["involvedObject"]["name"]] = e["reason"];
  }
  EXPECT_EQ(reasonOf["notanip"], "InvalidTunnelAnnotation");
  EXPECT_EQ(reasonOf["thief"], "TunnelVIPConflict");
  EXPECT_FALSE(reasonOf.contains("web"));
  // The log lines.
  EXPECT_TRUE(logHas("rt", "InvalidTunnelAnnotation " + kns + "/notanip")) << logOf("rt");
  EXPECT_TRUE(logHas("rt", "TunnelVIPConflict " + kns + "/thief"));
  // The rest keeps working: the older Service keeps the VIP, thief's pod never gets traffic.
  EXPECT_TRUE(podsAre(kVip, {"p1a", "p2a"}));
  EXPECT_FALSE(podHasVip("p2b", kVip));
  // Once each: the same problem is not reported again at every resync.
  std::this_thread::sleep_for(std::chrono::seconds(6));
  auto again = nlohmann::json::parse(
      sh(cp().kubectl("-n " + kns + " get events -o json"), false).out, nullptr, false);
  ASSERT_TRUE(again.is_object() && again.contains("items"));
  size_t oursAgain = 0;
  for (auto& e : again["items"]) oursAgain += ours(e);
  EXPECT_EQ(oursAgain, 2u);
  for (auto n : {"rt", "n1", "n2"}) EXPECT_TRUE(procs[n].running()) << n;
}

/** The bucket table the elected router published for Service kns/name: the data of its
 *  ConfigMap in the daemon's namespace (label selected), or null. */
nlohmann::json publishedTable(const std::string& kns, const std::string& name,
                              std::string* cmName = nullptr) {
  auto list = nlohmann::json::parse(
      sh(cp().kubectl("-n kube-service-tunnel get configmaps -l app.kubernetes.io/managed-by=kube-service-tunnel -o json"), false).out,
      nullptr, false);
  if (!list.is_object() || !list.contains("items")) return nullptr;
  for (auto& cm : list["items"]) {
    auto d = cm.value("data", nlohmann::json::object());
    if (d.value("namespace", "") != kns || d.value("name", "") != name) continue;
    auto t = nlohmann::json::parse(d.value("table", ""), nullptr, false);
    if (t.is_discarded()) return nullptr;
    if (cmName) *cmName = cm["metadata"]["name"].get<std::string>();
    t["uid"] = d.value("uid", "");
    return t;
  }
  return nullptr;
}

// The elected router publishes each Service's bucket table in a ConfigMap of its own namespace
// (kubectl shows which endpoint serves which bucket); a router restarted from empty kernel state
// resumes exactly: its kernel tables (slots included) equal the ones it had.
TEST_F(Cluster, PublishedBucketTableIsVisibleAndAFreshRouterResumesExactly) {
  clusterTopology();
  for (auto p : {"p1a", "p1b", "p2a"}) serve(p);
  ASSERT_EQ(createService("web", "203.0.113.50").rc, 0);
  for (auto p : {"p1a", "p1b", "p2a"}) createPod(p);
  startDaemons();
  ASSERT_TRUE(reachable("203.0.113.50", 30)) << logOf("rt");
  nlohmann::json table;
  ASSERT_TRUE(waitUntil([&] {
    table = publishedTable(kns, "web");
    return table.is_object();
  }, 30)) << logOf("rt");
  // Written for this very Service, not into it.
  auto svc = nlohmann::json::parse(kubectl("-n " + kns + " get svc web -o json").out, nullptr, false);
  ASSERT_FALSE(svc.is_discarded());
  EXPECT_EQ(table["uid"], svc["metadata"]["uid"]);
  EXPECT_FALSE(svc["metadata"].value("annotations", nlohmann::json::object())
                   .contains("kube-service-tunnel.cmd.nu/buckets"));
  ASSERT_EQ(table["buckets"], 64);
  std::set<std::string> ips;
  for (auto& e : table["endpoints"]) ips.insert(e["ip"].get<std::string>());
  EXPECT_EQ(ips, (std::set<std::string>{"198.19.1.2", "198.19.1.3", "198.19.2.2"}));
  auto lease = nlohmann::json::parse(
      kubectl("-n kube-service-tunnel get lease kube-service-tunnel-publisher -o json").out, nullptr, false);
  ASSERT_FALSE(lease.is_discarded());
  EXPECT_FALSE(lease["spec"].value("holderIdentity", "").empty());
  // Every slot table routes the VIP to the endpoint the published table gives that slot.
  for (auto& e : table["endpoints"]) {
    auto rt = out("rt", "ip route show table " + std::to_string(1000 + e["slot"].get<int>()) + " 203.0.113.50");
    auto nh = rt.find("nhid ");
    ASSERT_NE(nh, std::string::npos) << rt;
    auto n = out("rt", "ip nexthop show id " + rt.substr(nh + 5, rt.find(' ', nh + 5) - nh - 5));
    EXPECT_NE(n.find("dst " + e["ip"].get<std::string>() + " "), std::string::npos) << n;
  }
  auto before = out("rt", "ip route show table all proto 211") + out("rt", "ip rule show");
  procs["rt"].stop();
  ASSERT_EQ(in("rt", kBin + " cleanup --role router").rc, 0);
  ASSERT_EQ(out("rt", "ip route show table all proto 211"), "");
  startRouterK();
  ASSERT_TRUE(reachable("203.0.113.50", 30)) << logOf("rt");
  // Routes and rules equal (nexthop ids may be allocated anew: compare through them).
  auto normalize = [](std::string s) {
    std::string o;
    for (auto& l : lines(s)) {
      auto p = l.find("nhid ");
      o += (p == std::string::npos ? l : l.substr(0, p)) + "\n";
    }
    return o;
  };
  EXPECT_EQ(normalize(out("rt", "ip route show table all proto 211") + out("rt", "ip rule show")),
            normalize(before));
  for (auto& e : table["endpoints"]) {
    auto rt = out("rt", "ip route show table " + std::to_string(1000 + e["slot"].get<int>()) + " 203.0.113.50");
    auto nh = rt.find("nhid ");
    ASSERT_NE(nh, std::string::npos) << rt;
    auto n = out("rt", "ip nexthop show id " + rt.substr(nh + 5, rt.find(' ', nh + 5) - nh - 5));
    EXPECT_NE(n.find("dst " + e["ip"].get<std::string>() + " "), std::string::npos) << n;
  }
}


// Tenants can write their own Services, so the old table annotation is not read at all: a
// tenant writing garbage or a hostile table there (wrong types, a range blow-up, a plausible
// table that would move every bucket) changes nothing and crashes nothing. The published table
// stays the router's own; deleting the Service deletes its table.
TEST_F(Cluster, TenantWritingTheOldTableAnnotationChangesNothing) {
  clusterTopology();
  for (auto p : {"p1a", "p1b", "p2a"}) serve(p);
  ASSERT_EQ(createService("web", "203.0.113.51").rc, 0);
  for (auto p : {"p1a", "p1b", "p2a"}) createPod(p);
  startDaemons();
  ASSERT_TRUE(reachable("203.0.113.51", 30)) << logOf("rt");
  nlohmann::json table;
  std::string cmName;
  ASSERT_TRUE(waitUntil([&] {
    table = publishedTable(kns, "web", &cmName);
    return table.is_object();
  }, 30)) << logOf("rt");
  auto kernel = [&] { return out("rt", "ip route show table all proto 211") + out("rt", "ip rule show"); };
  const std::string before = kernel();
  std::string blowup;
  while (blowup.size() < 1900) blowup += "0-4194304,";
  blowup.pop_back();
  // Every endpoint's buckets reversed: what a tenant steering the routers would write.
  nlohmann::json steer = table;
  steer.erase("uid");
  for (auto& e : steer["endpoints"]) e["slot"] = 250 - e["slot"].get<int>();
  for (const std::string& evil :
       {std::string(R"({"v":"1"})"),
        R"({"v":1,"buckets":64,"seed":42,"endpoints":[{"ip":"198.19.1.2","slot":0,"buckets":")" + blowup + R"("}]})",
        std::string("\x01not json{{{"), steer.dump()}) {
    auto f = dir + "/evil.json";
    {
      std::ofstream o(f);
      o << nlohmann::json{{"metadata", {{"annotations", {{"kube-service-tunnel.cmd.nu/buckets", evil}}}}}}.dump();
    }
    ASSERT_EQ(kubectl("-n " + kns + " patch svc web --type=merge --patch-file " + f).rc, 0);
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));
  for (auto n : {"rt", "n1", "n2"}) EXPECT_TRUE(procs[n].running()) << n << "\n" << logOf(n);
  EXPECT_EQ(kernel(), before) << "the annotation steered the router";
  auto after = publishedTable(kns, "web");
  EXPECT_EQ(after, table) << "the published table changed";
  EXPECT_TRUE(reachable("203.0.113.51", 10));
  // The Service gone, the elected router deletes its table.
  ASSERT_EQ(kubectl("-n " + kns + " delete svc web").rc, 0);
  EXPECT_TRUE(waitUntil([&] {
    return kubectl("-n kube-service-tunnel get configmap " + cmName).rc != 0;
  }, 30)) << logOf("rt");
}

/** Kernel-change monitors in the router and a pod, as dataplane_test.cpp does. */
struct Monitors {
  Process ipRt, nftRt, ipPod;
  Monitors(Cluster* c, const std::string& rt, const std::string& pod, const std::string& dir) {
    ipRt = Process({"ip", "netns", "exec", rt, "ip", "-o", "monitor", "link", "address", "route",
                    "rule", "nexthop"}, dir + "/mon-rt.log");
    nftRt = Process({"ip", "netns", "exec", rt, "nft", "monitor"}, dir + "/nft-rt.log");
    ipPod = Process({"ip", "netns", "exec", pod, "ip", "-o", "monitor", "link", "address", "route"},
                    dir + "/mon-pod.log");
    (void)c;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  void stop() {
    ipRt.stop();
    nftRt.stop();
    ipPod.stop();
  }
};

TEST_F(Cluster, GoneAfterEtcdCompactionRelistsAndChangesNoKernelObject) {
  clusterTopology(2);
  for (auto p : {"p1a", "p1b", "p2a"}) serve(p);
  ASSERT_EQ(createService("web", kVip).rc, 0);
  for (auto p : {"p1a", "p1b", "p2a"}) createPod(p);
  startDaemons();
  ASSERT_TRUE(waitUntil([&] { return podsAre(kVip, {"p1a", "p1b", "p2a"}); }, 30)) << logOf("rt");
  for (auto n : {"rt", "n1", "n2"})
    ASSERT_TRUE(waitUntil([&] { return logHas(n, "reconciled"); })) << n;
  // The router publishes the bucket table into the Service once it holds the Lease (a real
  // change every daemon sees): it must have landed and been seen before the relist below, or
  // the relist would rightly find it.
  ASSERT_TRUE(waitUntil([&] { return logHas("rt", "published bucket table of " + kns + "/web"); }, 30))
      << logOf("rt");
  std::this_thread::sleep_for(std::chrono::seconds(1));
  Monitors mon(this, ns("rt"), ns("p1a"), dir);
  // Writes the daemons do not watch move etcd past their resourceVersion; compaction drops the
  // history; a restarted apiserver's watch cache starts at the current revision. Resuming the
  // watches from the daemons' (older) resourceVersions must answer 410 Gone.
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(kubectl("-n " + kns + " create configmap filler" + std::to_string(i)).rc, 0);
  auto c = sh(kK8sTools + "/compact.sh " + cp().dir);
  ASSERT_EQ(c.rc, 0) << c.out;
  auto r = sh(kK8sTools + "/apiserver.sh " + cp().dir + " restart");
  ASSERT_EQ(r.rc, 0) << r.out;
  for (auto n : {"rt", "n1", "n2"}) {
    EXPECT_TRUE(waitUntil([&] {
      auto l = logOf(n);
      return l.find("services: watch from resourceVersion") != std::string::npos &&
             l.find("endpointslices: watch from resourceVersion") != std::string::npos &&
             l.find("Service: relist at resourceVersion") != std::string::npos &&
             l.find("EndpointSlice: relist at resourceVersion") != std::string::npos;
    }, 45)) << n << "\n" << logOf(n);
    auto l = logOf(n);
    EXPECT_NE(l.find("expired (410 Gone"), std::string::npos) << n;
    EXPECT_EQ(l.find("changes found"), std::string::npos) << n << ": the relist found changes";
  }
  std::this_thread::sleep_for(std::chrono::seconds(6));  // one more periodic resync
  mon.stop();
  EXPECT_EQ(mon.ipRt.log(), "") << "router kernel objects changed after the relist";
  EXPECT_EQ(mon.nftRt.log(), "") << "nftables changed after the relist";
  EXPECT_EQ(mon.ipPod.log(), "") << "pod kernel objects changed after the relist";
  // The watches after the relist work: a change is followed.
  deletePod("p2a");
  EXPECT_TRUE(waitUntil([&] { return podsAre(kVip, {"p1a", "p1b"}); }, 30));
  EXPECT_TRUE(waitUntil([&] { return !podHasVip("p2a", kVip); }));
}

TEST_F(Cluster, ApiserverDown30sTrafficFlowsThenTheDaemonReconverges) {
  clusterTopology(2);
  for (auto p : {"p1a", "p1b", "p2a"}) serve(p);
  ASSERT_EQ(createService("web", kVip).rc, 0);
  for (auto p : {"p1a", "p1b", "p2a"}) createPod(p);
  startDaemons();
  ASSERT_TRUE(waitUntil([&] { return podsAre(kVip, {"p1a", "p1b", "p2a"}); }, 30)) << logOf("rt");
  auto before = tcp(kVip, 30, 24000);
  Process hold({"ip", "netns", "exec", ns("cl"), kTool, "hold", kVip, "8080", "45", "4"},
               dir + "/hold.log");
  ASSERT_TRUE(waitUntil([&] { return hold.log().find("established") != std::string::npos; }));
  Monitors mon(this, ns("rt"), ns("p1a"), dir);

  auto t0 = std::chrono::steady_clock::now();
  auto s = sh(kK8sTools + "/apiserver.sh " + cp().dir + " stop");
  ASSERT_EQ(s.rc, 0) << s.out;
  ASSERT_NE(sh(kK8sTools + "/apiserver.sh " + cp().dir + " status").rc, 0);
  // 30 s without an apiserver: every probe still reaches the same pods.
  int probes = 0;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30)) {
    EXPECT_EQ(tcp(kVip, 30, 24000), before) << "forwarding changed during the outage";
    ++probes;
    std::this_thread::sleep_for(std::chrono::seconds(4));
  }
  mon.stop();
  EXPECT_GE(probes, 5);
  EXPECT_EQ(mon.ipRt.log(), "") << "router kernel objects changed during the outage";
  EXPECT_EQ(mon.nftRt.log(), "") << "nftables changed during the outage";
  EXPECT_EQ(mon.ipPod.log(), "") << "pod kernel objects changed during the outage";
  for (auto n : {"rt", "n1", "n2"}) {
    EXPECT_TRUE(logHas(n, "API server unreachable")) << n << "\n" << logOf(n);
    EXPECT_TRUE(procs[n].running()) << n;
  }
  auto up = sh(kK8sTools + "/apiserver.sh " + cp().dir + " start");
  ASSERT_EQ(up.rc, 0) << up.out;
  auto t1 = std::chrono::steady_clock::now();
  // A change made while the daemons are still backing off: their relist must pick it up.
  ASSERT_EQ(createService("web2", kVip3).rc, 0);
  for (auto n : {"rt", "n1", "n2"})
    EXPECT_TRUE(waitUntil([&] {
      auto l = logOf(n);
      return l.find("services: API server reachable again") != std::string::npos &&
             l.find("endpointslices: API server reachable again") != std::string::npos;
    }, 45)) << n << "\n" << logOf(n);
  std::cerr << "[cluster] daemons reconnected "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count()
            << " s after the apiserver was ready again\n";
  // The router follows the new Service as soon as it has relisted (its VIP enters the nft set)...
  EXPECT_TRUE(waitUntil([&] {
    return in("rt", "nft list set inet kube_service_tunnel vip4").out.find(kVip3) != std::string::npos;
  }, 15)) << logOf("rt");
  // ...and its endpoints once the EndpointSlice controller, whose informers reconnect with their
  // own backoff, has written the new slice.
  EXPECT_TRUE(waitUntil([&] { return podsAre(kVip3, {"p1a", "p1b", "p2a"}); }, 60));
  std::cerr << "[cluster] new Service served "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count()
            << " s after the apiserver was ready again\n";
  EXPECT_EQ(tcp(kVip, 30, 24000), before);
  EXPECT_EQ(hold.wait(45), 0) << hold.log();
  EXPECT_NE(hold.log().find("ok 4"), std::string::npos) << hold.log();
}

// ---- VIP ownership policy and LoadBalancer Services (docs/vip-policy.md) ----------------------
// The daemons run with cluster_harness.h clusterPolicyFlags(): pools 203.0.113.0/24 and
// 2001:db8:ffff::/64 (every namespace), 198.51.100.0/24 only for namespace kOtherNamespace,
// cluster ranges 10.96.0.0/16 (the Service CIDR) and the topology's pod and node ranges.

/** The Service's status.loadBalancer as the API server has it ({} when none). */
nlohmann::json lbStatusOf(const std::string& kns, const std::string& name) {
  auto j = nlohmann::json::parse(
      sh(cp().kubectl("-n " + kns + " get svc " + name + " -o json"), false).out, nullptr, false);
  if (!j.is_object() || !j.contains("status")) return nlohmann::json::object();
  return j["status"].value("loadBalancer", nlohmann::json::object());
}
/** The first ingress IP ("" when none). */
std::string lbAddressOf(const std::string& kns, const std::string& name) {
  auto lb = lbStatusOf(kns, name);
  if (!lb.contains("ingress") || !lb["ingress"].is_array() || lb["ingress"].empty()) return "";
  return lb["ingress"][0].value("ip", "");
}

class ClusterVip : public Cluster {
 protected:
  /** Every kernel object of the router and the pod, as text (a refused VIP must not appear). */
  std::string everything(const std::string& pod) {
    return out("rt", "ip route show table all") + out("rt", "ip -6 route show table all") +
           out("rt", "ip rule show") + out("rt", "ip nexthop show") +
           in("rt", "nft list ruleset").out + in(pod, "ip -o addr show").out +
           in(pod, "nft list ruleset").out;
  }
  Cmd createLb(const std::string& name, const std::string& cls, const std::string& app = "web") {
    nlohmann::json s = {{"apiVersion", "v1"},
                        {"kind", "Service"},
                        {"metadata", {{"name", name}, {"namespace", kns}}},
                        {"spec",
                         {{"type", "LoadBalancer"},
                          {"loadBalancerClass", cls},
                          {"allocateLoadBalancerNodePorts", false},
                          {"selector", {{"app", app}}},
                          {"ports", {{{"name", "http"}, {"port", 8080}, {"targetPort", 8080},
                                      {"protocol", "TCP"}}}}}}};
    return kubectlStdin("create -f -", s.dump());
  }
  std::string leaseHolder() {
    auto l = nlohmann::json::parse(
        sh(cp().kubectl("-n kube-service-tunnel get lease kube-service-tunnel-publisher -o json"),
           false).out, nullptr, false);
    if (!l.is_object() || !l.contains("spec")) return "";
    return l["spec"].value("holderIdentity", "");
  }
  /** A host address of the pool 203.0.113.0/24 (not its network or broadcast address). */
  static bool inPool(const std::string& a) {
    const std::string p = "203.0.113.";
    if (!a.starts_with(p) || a.size() == p.size() || a.size() > p.size() + 3) return false;
    std::string h = a.substr(p.size());
    if (!std::all_of(h.begin(), h.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
    int n = std::stoi(h);
    return n >= 1 && n <= 254 && std::to_string(n) == h;
  }
  /** The elements of the router's IPv4 VIP set, as nft prints them. */
  std::string vip4Elements(const std::string& router = "rt") {
    auto o = in(router, "nft list set inet kube_service_tunnel vip4").out;
    auto b = o.find("elements = {");
    if (b == std::string::npos) return "";
    b += 12;
    auto e = o.find('}', b);
    std::string el = o.substr(b, e == std::string::npos ? std::string::npos : e - b);
    // Each element carries its traffic counter (docs/metrics.md): the addresses only.
    el = std::regex_replace(el, std::regex(" counter packets [0-9]+ bytes [0-9]+"), "");
    std::erase_if(el, [](char c) { return c == ' ' || c == '\n' || c == '\t'; });
    return el;
  }
};

TEST_F(ClusterVip, OutOfPoolServiceCidrAndClosedPoolVipsAreRefusedWithEventsAndNoKernelObject) {
  clusterTopology(2);
  for (auto p : {"p1a", "p2a"}) serve(p);
  const std::map<std::string, std::pair<std::string, std::string>> refused{
      // Service → (VIP, what the Event must name)
      {"outside", {"192.0.2.10", "outside every VIP pool (203.0.113.0/24"}},
      {"svccidr", {"10.96.0.50", "cluster's own range 10.96.0.0/16"}},
      {"closed", {"198.51.100.5", "pool 198.51.100.0/24 that is not open to namespace " + kns}}};
  ASSERT_EQ(createService("web", kVip).rc, 0);
  for (auto& [name, v] : refused) ASSERT_EQ(createService(name, v.first).rc, 0);
  for (auto p : {"p1a", "p2a"}) createPod(p);
  startDaemons();
  // The in-pool VIP works, with the client's address.
  ASSERT_TRUE(waitUntil([&] { return podsAre(kVip, {"p1a", "p2a"}); }, 30)) << logOf("rt");
  for (auto& a : tcp(kVip, 4)) EXPECT_TRUE(a.ends_with(" 198.18.0.10")) << a;
  // An Event per refused Service, naming the range that refused it.
  nlohmann::json ev;
  std::map<std::string, std::string> noteOf;  // Service → Event message
  EXPECT_TRUE(waitUntil([&] {
    ev = nlohmann::json::parse(sh(cp().kubectl("-n " + kns + " get events -o json"), false).out,
                               nullptr, false);
    noteOf.clear();
    if (!ev.is_object() || !ev.contains("items")) return false;
    for (auto& e : ev["items"])
      if (e.value("reason", "") == "TunnelVIPRefused")
        noteOf[e["involvedObject"].value("name", "")] = e.value("message", "");
    return noteOf.size() == refused.size();
  }, 20)) << ev.dump() << logOf("rt");
  for (auto& [name, v] : refused) {
    EXPECT_NE(noteOf[name].find(v.second), std::string::npos) << name << ": " << noteOf[name];
    // The log line names the Service and the range.
    auto l = logOf("rt");
    auto at = l.find("TunnelVIPRefused " + kns + "/" + name + ": VIP " + v.first);
    ASSERT_NE(at, std::string::npos) << name << "\n" << l;
    EXPECT_NE(l.substr(at, l.find('\n', at) - at).find(v.second), std::string::npos) << name;
    EXPECT_TRUE(logHas("n1", "TunnelVIPRefused " + kns + "/" + name)) << "the agent refuses too";
  }
  EXPECT_FALSE(noteOf.contains("web"));
  // No kernel object anywhere for a refused VIP (routes of every table, rules, nexthops, nft
  // elements, pod addresses); the allowed one has them.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  for (auto pod : {"p1a", "p2a"}) {
    auto k = everything(pod);
    EXPECT_NE(k.find(kVip), std::string::npos) << pod;
    for (auto& [name, v] : refused) EXPECT_EQ(k.find(v.first), std::string::npos) << name << " " << pod;
  }
  EXPECT_FALSE(podHasVip("p1a", "192.0.2.10"));
  // Not announced either: the announce plan is the router's plan (unit: AnnounceRec).
  for (auto n : {"rt", "n1", "n2"}) EXPECT_TRUE(procs[n].running()) << n;
}

TEST_F(ClusterVip, OurLoadBalancerGetsAPoolAddressAndTrafficAnotherClassIsLeftAloneLeavingClears) {
  clusterTopology(2);
  for (auto p : {"p1a", "p1b", "p2a"}) serve(p);
  for (auto p : {"p1a", "p1b", "p2a"}) createPod(p);
  ASSERT_EQ(createLb("lb", "cmd.nu/kube-service-tunnel").rc, 0);
  ASSERT_EQ(createLb("foreign", "example.com/other").rc, 0);
  startDaemons();
  std::string addr;
  ASSERT_TRUE(waitUntil([&] { return !(addr = lbAddressOf(kns, "lb")).empty(); }, 40))
      << logOf("rt");
  EXPECT_TRUE(inPool(addr)) << addr;
  auto st = lbStatusOf(kns, "lb");
  ASSERT_EQ(st["ingress"].size(), 1u) << st.dump();
  EXPECT_EQ(st["ingress"][0].value("ipMode", ""), "Proxy") << st.dump();
  // What a user sees.
  auto table = kubectl("-n " + kns + " get svc lb").out;
  EXPECT_NE(table.find(addr), std::string::npos) << table;
  EXPECT_TRUE(logHas("rt", "LoadBalancer " + kns + "/lb: status.loadBalancer.ingress [" + addr +
                               "] ipMode Proxy (allocated)")) << logOf("rt");
  // Traffic reaches the pods with the client's own address, TCP and UDP.
  ASSERT_TRUE(waitUntil([&] { return podsAre(addr, {"p1a", "p1b", "p2a"}); }, 30)) << logOf("rt");
  for (auto& a : tcp(addr, 6)) EXPECT_TRUE(a.ends_with(" 198.18.0.10")) << a;
  for (auto& a : udp(addr, 4)) EXPECT_TRUE(a.ends_with(" 198.18.0.10")) << a;
  // The other class: no status, no tunnel (the router's VIP set holds our address only).
  EXPECT_EQ(lbStatusOf(kns, "foreign"), nlohmann::json::object()) << lbStatusOf(kns, "foreign");
  EXPECT_NE(kubectl("-n " + kns + " get svc foreign").out.find("<pending>"), std::string::npos);
  EXPECT_EQ(vip4Elements(), addr) << "our address, nothing else";
  EXPECT_FALSE(logHas("rt", kns + "/foreign")) << logOf("rt");

  // Leaving the class (the class cannot change while the type is LoadBalancer, so by the type):
  // the API server clears status.loadBalancer itself; the tunnel goes, the address is free.
  auto r = kubectl("-n " + kns + " patch svc lb --type=merge -p "
                   "'{\"spec\":{\"type\":\"ClusterIP\",\"loadBalancerClass\":null,"
                   "\"allocateLoadBalancerNodePorts\":null}}'");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(waitUntil([&] { return lbStatusOf(kns, "lb") == nlohmann::json::object() ||
                                     lbAddressOf(kns, "lb").empty(); }, 30))
      << lbStatusOf(kns, "lb") << logOf("rt");
  EXPECT_TRUE(waitUntil([&] { return vip4Elements().empty() && !podHasVip("p1a", addr); }, 20))
      << vip4Elements();
  ASSERT_EQ(createLb("next", "cmd.nu/kube-service-tunnel").rc, 0);
  EXPECT_TRUE(waitUntil([&] { return lbAddressOf(kns, "next") == addr; }, 30))
      << lbAddressOf(kns, "next") << " (the lowest free address is the one lb had)";
  EXPECT_FALSE(logHas("rt", "writing status.loadBalancer")) << "a failed write\n" << logOf("rt");
}

// One writer, and the next one reads what the last wrote: two routers, the Lease holder stopped
// while more LoadBalancers arrive; the new holder hands out only free addresses.
TEST_F(ClusterVip, TwoLoadBalancersNeverShareAnAddressAlsoAcrossALeaseHandover) {
  clusterTopology(2, 2);
  for (auto p : {"p1a", "p2a"}) {
    serve(p);
    createPod(p);
  }
  startRouterK({"--node-name", "tunnel1"});
  // The previous test's router may still hold the Lease: it expires (15 s) unrenewed.
  ASSERT_TRUE(waitUntil([&] { return leaseHolder() == "tunnel1"; }, 45)) << leaseHolder();
  std::vector<std::string> argv{"ip", "netns", "exec", ns("rt2"), kBin, "run", "--role", "router",
                                "--node-name", "tunnel2"};
  for (auto& f : kubeFlags(true)) argv.push_back(f);
  procs["rt2"] = Process(argv, dir + "/rt2.log");
  ASSERT_EQ(createLb("lb1", "cmd.nu/kube-service-tunnel").rc, 0);
  ASSERT_EQ(createLb("lb2", "cmd.nu/kube-service-tunnel").rc, 0);
  std::map<std::string, std::string> addr;
  auto all = [&](std::initializer_list<const char*> names) {
    for (auto n : names) {
      addr[n] = lbAddressOf(kns, n);
      if (addr[n].empty()) return false;
    }
    return true;
  };
  ASSERT_TRUE(waitUntil([&] { return all({"lb1", "lb2"}); }, 30)) << logOf("rt");
  EXPECT_NE(addr["lb1"], addr["lb2"]);
  EXPECT_FALSE(logHas("rt2", "status.loadBalancer")) << "only the holder writes\n" << logOf("rt2");
  // The holder goes; two more arrive before anyone holds the Lease.
  procs["rt"].stop();
  ASSERT_EQ(createLb("lb3", "cmd.nu/kube-service-tunnel").rc, 0);
  ASSERT_EQ(createLb("lb4", "cmd.nu/kube-service-tunnel").rc, 0);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(lbAddressOf(kns, "lb3"), "") << "written without a holder";
  ASSERT_TRUE(waitUntil([&] { return leaseHolder() == "tunnel2"; }, 45)) << leaseHolder();
  ASSERT_TRUE(waitUntil([&] { return all({"lb1", "lb2", "lb3", "lb4"}); }, 30)) << logOf("rt2");
  std::set<std::string> distinct;
  for (auto& [n, a] : addr) {
    EXPECT_TRUE(inPool(a)) << n << " " << a;
    distinct.insert(a);
  }
  EXPECT_EQ(distinct.size(), 4u) << "an address given twice";
  EXPECT_TRUE(logHas("rt2", "LoadBalancer " + kns + "/lb3: status.loadBalancer.ingress"));
  EXPECT_FALSE(logHas("rt2", "LoadBalancer " + kns + "/lb1:")) << "lb1 rewritten\n" << logOf("rt2");
  // And the new holder tunnels them (its own kernel).
  EXPECT_TRUE(waitUntil([&] { return vip4Elements("rt2").find(addr["lb4"]) != std::string::npos; },
                        20)) << vip4Elements("rt2");
}

}  // namespace
}  // namespace kst::e2e

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  std::signal(SIGPIPE, SIG_IGN);  // a peer of the forwarder may go away at any time
  ::testing::AddGlobalTestEnvironment(new kst::e2e::ControlPlaneEnv);
  return RUN_ALL_TESTS();
}
