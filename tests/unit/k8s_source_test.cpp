// KubeSource (cache + coalesced, deduplicated snapshots) and KubeEventSink (Events) over the
// scripted transport, with objects recorded from a real kube-apiserver.
#include <gtest/gtest.h>

#include <thread>

#include "k8s/event_sink.h"
#include "desired/published.h"
#include "k8s/kube_source.h"
#include "model/model.h"
#include "unit/k8s_fake_transport.h"

namespace kst::k8s {
namespace {

using test::FakeApi;
using test::FakeResponse;
using test::FakeTransport;
using test::fixture;

const std::string kSvcList = "/api/v1/services?limit=500";
const std::string kSvcWatch = "/api/v1/services?watch=1";
const std::string kEpsList = "/apis/discovery.k8s.io/v1/endpointslices?limit=500";
const std::string kEpsWatch = "/apis/discovery.k8s.io/v1/endpointslices?watch=1";

bool waitFor(const std::function<bool()>& fn, int ms = 5000) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end) {
    if (fn()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return fn();
}

struct SourceHarness {
  FakeApi api;
  KubeSourceOptions opts;
  std::unique_ptr<KubeSource> src;
  std::mutex mu;
  std::vector<ClusterObjects> snaps;       // the view after each delivery
  std::vector<ObjectChanges> deliveries;
  SourceHarness() {
    opts.coalesce = std::chrono::milliseconds(50);
    opts.sleeper = [](auto) { return true; };
    opts.listWatch.seed = 7;
  }
  void start() {
    src = std::make_unique<KubeSource>(
        [this]() -> Result<std::unique_ptr<HttpTransport>> {
          return std::unique_ptr<HttpTransport>(new FakeTransport(api));
        },
        opts);
    ASSERT_TRUE(src->start([this](ObjectChanges c) {
      std::lock_guard lk(mu);
      // Deliveries are changes; the view after each one is what the daemon would see.
      if (snaps.empty()) EXPECT_TRUE(c.replaceAll) << "the first delivery is the complete set";
      else EXPECT_FALSE(c.replaceAll);
      ClusterObjects view = snaps.empty() ? ClusterObjects{} : snaps.back();
      applyChanges(view, c);
      snaps.push_back(std::move(view));
      deliveries.push_back(std::move(c));
    }));
  }
  size_t count() {
    std::lock_guard lk(mu);
    return snaps.size();
  }
  ClusterObjects last() {
    std::lock_guard lk(mu);
    return snaps.back();
  }
  ~SourceHarness() {
    if (src) src->stop();
  }
};

TEST(KubeSource, FirstSnapshotAfterBothListsWithDecodedRecordedObjects) {
  SourceHarness h;
  h.api.push(kSvcList, {200, fixture("services-list.json")});
  h.start();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(h.count(), 0u) << "no snapshot before every resource is listed";
  EXPECT_FALSE(h.src->synced());
  h.api.push(kEpsList, {200, fixture("endpointslices-list.json")});
  ASSERT_TRUE(waitFor([&] { return h.count() == 1; }));
  EXPECT_TRUE(h.src->synced());
  auto s = h.last();
  EXPECT_EQ(s.services.size(), 4u);
  EXPECT_EQ(s.slices.size(), 5u);
  auto& web = s.services.at({"kst-fixtures", "web"});
  EXPECT_EQ(web.annotations.size(), 1u) << "only the tunnel annotation is kept";
  EXPECT_EQ(web.annotations.at("cmd.nu/tunnel"), "198.51.100.10");
  EXPECT_FALSE(web.uid.empty());
  EXPECT_EQ(h.src->serviceUid({"kst-fixtures", "web"}), web.uid);
  EXPECT_TRUE(s.services.at({"kst-fixtures", "plain"}).annotations.empty());

  Model m = buildModel(s, {});
  // web (IPv4 VIP) and web6; "bad" is an InvalidAnnotation problem.
  ASSERT_EQ(m.services.size(), 2u);
  const TunnelService* w = nullptr;
  for (auto& ts : m.services)
    if (ts.key.name == "web") w = &ts;
  ASSERT_TRUE(w);
  EXPECT_EQ(w->vip.str(), "198.51.100.10");
  // web-1, web-2 ready; web-3 serving+terminating (draining); web-4 not serving (dropped).
  ASSERT_EQ(w->endpoints.size(), 3u);
  std::map<std::string, bool> draining;
  for (auto& e : w->endpoints) draining[e.ip.str()] = e.draining;
  EXPECT_EQ(draining, (std::map<std::string, bool>{
                          {"10.244.1.5", false}, {"10.244.2.7", false}, {"10.244.2.9", true}}));
  bool invalid = false;
  for (auto& p : m.problems)
    if (p.kind == Problem::Kind::InvalidAnnotation && p.object.name == "bad") invalid = true;
  EXPECT_TRUE(invalid);
}

TEST(KubeSource, RelistAfterGoneWithUnchangedObjectsPublishesNothing) {
  SourceHarness h;
  h.api.push(kSvcList, {200, fixture("services-list.json")});
  h.api.push(kEpsList, {200, fixture("endpointslices-list.json")});
  h.start();
  ASSERT_TRUE(waitFor([&] { return h.count() == 1; }));
  h.api.push(kSvcList, {200, fixture("services-list.json")});
  h.api.push(kEpsList, {200, fixture("endpointslices-list.json")});
  h.api.push(kSvcWatch, {200, fixture("watch-services-410-gone.jsonl")});
  h.api.push(kEpsWatch, {410, fixture("services-list-410-gone.json")});
  ASSERT_TRUE(waitFor([&] {
    return h.src->stats("services").lists == 2 && h.src->stats("endpointslices").lists == 2;
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(h.count(), 1u) << "an identical snapshot must not be republished";
  EXPECT_EQ(h.src->published(), 1);
  EXPECT_EQ(h.src->stats("services").gone, 1);
  EXPECT_EQ(h.src->stats("endpointslices").gone, 1);
}

TEST(KubeSource, WatchEventsAreCoalescedAndNetNoChangeIsNotPublished) {
  SourceHarness h;
  h.opts.coalesce = std::chrono::milliseconds(300);
  h.api.push(kSvcList, {200, fixture("services-list.json")});
  h.api.push(kEpsList, {200, fixture("endpointslices-list.json")});
  h.start();
  ASSERT_TRUE(waitFor([&] { return h.count() == 1; }));
  // tmp ADDED, MODIFIED, DELETED within the window: nothing to publish in the end.
  h.api.push(kSvcWatch, {200, fixture("watch-services.jsonl")});
  ASSERT_TRUE(h.api.waitRequests(kSvcWatch, 2));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(h.count(), 1u);
  // Only the ADDED: one new snapshot with tmp.
  auto lines = fixture("watch-services.jsonl");
  h.api.push(kSvcWatch, {200, lines.substr(0, lines.find('\n') + 1)});
  ASSERT_TRUE(waitFor([&] { return h.count() == 2; }));
  EXPECT_TRUE(h.last().services.contains({"kst-fixtures", "tmp"}));
  EXPECT_EQ(h.last().services.at({"kst-fixtures", "tmp"}).annotations.at("cmd.nu/tunnel"),
            "198.51.100.20");
}

TEST(KubeSource, AgentOnlyKeepsOnlyItsOwnNodesEndpoints) {
  SourceHarness h;
  h.opts.router = false;
  h.opts.agent = true;
  h.opts.nodeName = "kst-node-a";
  h.api.push(kSvcList, {200, fixture("services-list.json")});
  h.api.push(kEpsList, {200, fixture("endpointslices-list.json")});
  h.api.push("/api/v1/nodes/kst-node-a", {200, fixture("node.json")});
  h.start();
  ASSERT_TRUE(waitFor([&] { return h.count() == 1; }));
  auto s = h.last();
  size_t eps = 0;
  for (auto& [k, sl] : s.slices)
    for (auto& e : sl.endpoints) {
      ++eps;
      EXPECT_EQ(e.nodeName.value_or(""), "kst-node-a") << k.str() << " " << e.address;
    }
  EXPECT_EQ(eps, 10u);  // 5 slices × (web-1, web-4) on kst-node-a
  ASSERT_TRUE(h.api.waitRequests("/api/v1/nodes/kst-node-a", 1)) << "the agent checks its Node";
  // An agent on a node without endpoints stores no slices at all.
  SourceHarness other;
  other.opts = h.opts;
  other.opts.nodeName = "elsewhere";
  other.opts.checkNode = false;
  other.api.push(kSvcList, {200, fixture("services-list.json")});
  other.api.push(kEpsList, {200, fixture("endpointslices-list.json")});
  other.start();
  ASSERT_TRUE(waitFor([&] { return other.count() == 1; }));
  EXPECT_TRUE(other.last().slices.empty());
  EXPECT_EQ(other.last().services.size(), 4u);
}

// Routers read published bucket tables from ConfigMaps in their own namespace only (label
// selected); the Service's own annotation of the same name (writable by its tenant) is dropped.
TEST(KubeSource, BucketTablesComeFromOwnNamespaceConfigMapsNeverFromTheService) {
  const std::string cmList = "/api/v1/namespaces/kst/configmaps?limit=500";
  const std::string cmWatch = "/api/v1/namespaces/kst/configmaps?watch=1";
  SourceHarness h;
  h.opts.tablesNamespace = "kst";
  auto svcs = nlohmann::json::parse(fixture("services-list.json"));
  std::string webUid;
  for (auto& item : svcs["items"])
    if (item["metadata"]["name"] == "web") {
      webUid = item["metadata"]["uid"];
      item["metadata"]["annotations"]["kube-service-tunnel.cmd.nu/buckets"] = R"({"v":"1"})";
    }
  auto cm = [](const std::string& name, const std::string& svcName, const std::string& uid,
               const std::string& table) {
    return nlohmann::json{
        {"apiVersion", "v1"},
        {"kind", "ConfigMap"},
        {"metadata", {{"name", name}, {"namespace", "kst"}, {"resourceVersion", "7"},
                      {"labels", {{"app.kubernetes.io/managed-by", "kube-service-tunnel"}}}}},
        {"data", {{"namespace", "kst-fixtures"}, {"name", svcName}, {"uid", uid}, {"table", table}}}};
  };
  const std::string webCm = publishedConfigMapName("kst-fixtures", "web");
  const std::string goneCm = publishedConfigMapName("kst-fixtures", "gone");
  nlohmann::json list = {{"kind", "ConfigMapList"},
                         {"metadata", {{"resourceVersion", "9"}}},
                         {"items", {cm(webCm, "web", webUid, R"({"v":1,"buckets":64})"),
                                    cm(goneCm, "gone", "u-gone", "{}"),
                                    cm("kst-buckets-misnamed", "web6", "", "{}"),
                                    {{"metadata", {{"name", "kst-buckets-broken"}, {"resourceVersion", "7"}}}, {"data", 5}}}}};
  h.api.push(kSvcList, {200, svcs.dump()});
  h.api.push(kEpsList, {200, fixture("endpointslices-list.json")});
  h.api.push(cmList, {200, list.dump()});
  h.start();
  ASSERT_TRUE(waitFor([&] { return h.count() == 1; }));
  auto lists = h.api.requests();
  bool selected = false;
  for (auto& r : lists)
    if (r.path.starts_with(cmList))
      selected = r.path.find("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dkube-service-tunnel") !=
                 std::string::npos;
  EXPECT_TRUE(selected) << "only the daemon's ConfigMaps are listed";
  auto s = h.last();
  EXPECT_EQ(s.services.at({"kst-fixtures", "web"}).annotations.size(), 1u)
      << "the tenant's table annotation is not even kept";
  ASSERT_EQ(s.tables.size(), 2u);  // web and gone; the misnamed and the broken one are not used
  EXPECT_EQ(s.tables.at({"kst-fixtures", "web"}).table, R"({"v":1,"buckets":64})");
  Model m = buildModel(s, {});
  for (auto& ts : m.services)
    if (ts.key.name == "web") EXPECT_EQ(ts.published, R"({"v":1,"buckets":64})");
  // Gone Service, misnamed and undecodable ConfigMaps are for the writer to delete.
  std::vector<std::string> stale;
  for (auto& t : h.src->staleTables()) {
    EXPECT_EQ(t.resourceVersion, "7");
    stale.push_back(t.name);
  }
  std::sort(stale.begin(), stale.end());
  std::vector<std::string> want{goneCm, "kst-buckets-broken", "kst-buckets-misnamed"};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(stale, want);
  // A watch event updates the table; a delete removes it.
  auto upd = cm(webCm, "web", webUid, R"({"v":1,"buckets":32})");
  upd["metadata"]["resourceVersion"] = "10";
  h.api.push(cmWatch, {200, nlohmann::json{{"type", "MODIFIED"}, {"object", upd}}.dump() + "\n"});
  ASSERT_TRUE(waitFor([&] { return h.count() == 2; }));
  EXPECT_EQ(h.last().tables.at({"kst-fixtures", "web"}).table, R"({"v":1,"buckets":32})");
  h.api.push(cmWatch, {200, nlohmann::json{{"type", "DELETED"}, {"object", upd}}.dump() + "\n"});
  ASSERT_TRUE(waitFor([&] { return h.count() == 3; }));
  EXPECT_FALSE(h.last().tables.contains({"kst-fixtures", "web"}));
}

TEST(KubeSource, UndecodableObjectIsSkippedAndItsLastGoodVersionKept) {
  SourceHarness h;
  h.api.push(kSvcList, {200, fixture("services-list.json")});
  h.api.push(kEpsList, {200, fixture("endpointslices-list.json")});
  h.start();
  ASSERT_TRUE(waitFor([&] { return h.count() == 1; }));
  auto before = h.last();
  auto list = nlohmann::json::parse(fixture("endpointslices-list.json"));
  auto broken = list["items"][0];
  broken["endpoints"][0].erase("addresses");
  broken["metadata"]["resourceVersion"] = "100000";
  nlohmann::json ev = {{"type", "MODIFIED"}, {"object", broken}};
  nlohmann::json nameless = {{"type", "ADDED"}, {"object", {{"metadata", {{"namespace", "x"}}}}}};
  h.api.push(kEpsWatch, {200, ev.dump() + "\n" + nameless.dump() + "\n"});
  ASSERT_TRUE(h.api.waitRequests(kEpsWatch, 2));
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(h.count(), 1u);
  EXPECT_EQ(h.src->current(), before);
}

TEST(KubeSource, StopWhileTheApiServerIsDown) {
  SourceHarness h;
  for (int i = 0; i < 1000; ++i) h.api.push(kSvcList, {0, "", "connection refused"});
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kSvcList, 5));
  auto t0 = std::chrono::steady_clock::now();
  h.src->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  EXPECT_EQ(h.count(), 0u);
  EXPECT_FALSE(h.src->synced());
}

// ---------------------------------------------------------------------------------------------

const std::string kEvents = "/apis/events.k8s.io/v1/namespaces/kst-fixtures/events";

EventSinkOptions sinkOptions() {
  EventSinkOptions o;
  o.reportingInstance = "kube-service-tunnel-kst-node-a";
  o.retryInitial = std::chrono::milliseconds(1);
  o.retryMax = std::chrono::milliseconds(10);
  o.uidOf = [](const ObjectKey& k) -> std::optional<std::string> {
    if (k.name == "bad") return "cadba4c8-6075-4110-aa4f-b2b324db3ee9";
    return std::nullopt;
  };
  return o;
}

TEST(KubeEventSink, PostsAnEventsV1WarningOnTheServiceShapedLikeTheRecordedOne) {
  FakeApi api;
  KubeEventSink sink(std::make_unique<FakeTransport>(api), sinkOptions());
  api.push(kEvents, {201, "{}"});
  Problem p{Problem::Kind::InvalidAnnotation, {"kst-fixtures", "bad"},
            "annotation cmd.nu/tunnel=\"not-an-ip\" is not an IPv4 or IPv6 address; service ignored"};
  sink.report(p);
  ASSERT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(sink.posted(), 1);
  auto reqs = api.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "POST");
  EXPECT_EQ(reqs[0].path, kEvents);
  EXPECT_EQ(reqs[0].contentType, "application/json");
  auto ev = nlohmann::json::parse(reqs[0].body);
  EXPECT_EQ(ev["reason"], "InvalidTunnelAnnotation");
  EXPECT_EQ(ev["type"], "Warning");
  EXPECT_EQ(ev["note"], p.message);
  EXPECT_EQ(ev["regarding"]["kind"], "Service");
  EXPECT_EQ(ev["regarding"]["name"], "bad");
  EXPECT_EQ(ev["regarding"]["uid"], "cadba4c8-6075-4110-aa4f-b2b324db3ee9");
  EXPECT_EQ(ev["reportingController"], "cmd.nu/kube-service-tunnel");
  EXPECT_TRUE(ev["metadata"]["name"].get<std::string>().starts_with("bad."));
  // eventTime is a MicroTime: RFC 3339 with exactly 6 fractional digits.
  auto t = ev["eventTime"].get<std::string>();
  EXPECT_EQ(t.size(), 27u) << t;
  EXPECT_EQ(t[19], '.');
  EXPECT_EQ(t.back(), 'Z');
  // Every field we send exists in the Event the real apiserver accepted and returned.
  auto recorded = nlohmann::json::parse(fixture("event-events.k8s.io-v1.json"));
  for (auto& [k, v] : ev.items()) EXPECT_TRUE(recorded.contains(k)) << k;
  for (auto& [k, v] : ev["regarding"].items()) EXPECT_TRUE(recorded["regarding"].contains(k)) << k;
}

TEST(KubeEventSink, DeduplicatesRateLimitsAndIgnoresNonServiceProblems) {
  FakeApi api;
  auto o = sinkOptions();
  o.burst = 2;
  o.refill = std::chrono::hours(1);
  KubeEventSink sink(std::make_unique<FakeTransport>(api), o);
  for (int i = 0; i < 5; ++i) api.push(kEvents, {201, "{}"});
  Problem a{Problem::Kind::VipConflict, {"kst-fixtures", "thief"}, "VIP taken"};
  sink.report(a);
  sink.report(a);  // duplicate: not posted again
  sink.report({Problem::Kind::OrphanSlice, {"kst-fixtures", "ghost-a"}, "orphan"});  // not a Service
  sink.report({Problem::Kind::VipConflict, {"kst-fixtures", "thief2"}, "VIP taken"});
  sink.report({Problem::Kind::VipConflict, {"kst-fixtures", "thief3"}, "VIP taken"});  // over the burst
  ASSERT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(api.count(kEvents), 2u);
  EXPECT_EQ(sink.posted(), 2);
  EXPECT_EQ(sink.dropped(), 1);
}

TEST(KubeEventSink, RetriesServerErrorsButNotForbidden) {
  FakeApi api;
  KubeEventSink sink(std::make_unique<FakeTransport>(api), sinkOptions());
  api.push(kEvents, {0, "", "connection refused"});
  api.push(kEvents, {503, "{}"});
  api.push(kEvents, {201, "{}"});
  sink.report({Problem::Kind::InvalidAnnotation, {"kst-fixtures", "bad"}, "x"});
  ASSERT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(api.count(kEvents), 3u);
  EXPECT_EQ(sink.posted(), 1);
  api.push(kEvents, {403, R"({"kind":"Status","reason":"Forbidden","message":"events.events.k8s.io is forbidden","code":403})"});
  sink.report({Problem::Kind::InvalidAnnotation, {"kst-fixtures", "bad2"}, "x"});
  ASSERT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(api.count(kEvents), 4u);
  EXPECT_EQ(sink.posted(), 1);
  EXPECT_EQ(sink.dropped(), 1);
}

// The Event bodies of the POSTs made so far, from request `from` on, in the order they were made.
std::vector<nlohmann::json> bodies(const FakeApi& api, size_t from = 0) {
  std::vector<nlohmann::json> out;
  auto reqs = api.requests();
  for (size_t i = from; i < reqs.size(); ++i) out.push_back(nlohmann::json::parse(reqs[i].body));
  return out;
}

TEST(KubeEventSink, EventsFailedDuringAnApiOutageArriveOnceWhenItAnswersAgain) {
  FakeApi api;
  auto o = sinkOptions();
  o.dedupWindow = std::chrono::seconds(0);  // the queue itself must not hold a problem twice
  KubeEventSink sink(std::make_unique<FakeTransport>(api), o);
  for (int i = 0; i < 5; ++i) api.push(kEvents, {0, "", "connection refused"});
  Problem bad{Problem::Kind::InvalidAnnotation, {"kst-fixtures", "bad"}, "not an IP"};
  Problem thief{Problem::Kind::VipConflict, {"kst-fixtures", "thief"}, "VIP taken"};
  sink.report(bad);
  sink.report(thief);
  // Five refusals, then a sixth attempt that hangs (nothing answers): still down.
  ASSERT_TRUE(api.waitRequests(kEvents, 6));
  sink.report(bad);    // reported again while waiting: not queued twice
  sink.report(thief);
  EXPECT_EQ(sink.posted(), 0);
  EXPECT_EQ(sink.dropped(), 0);
  EXPECT_EQ(sink.queued(), 2u);
  // While the API server is unreachable only the oldest Event probes it.
  auto probes = bodies(api);
  ASSERT_EQ(probes.size(), 6u);
  for (auto& b : probes) {
    EXPECT_EQ(b["regarding"]["name"], "bad");
    // Same name and eventTime in every attempt: the time the problem was reported.
    EXPECT_EQ(b["metadata"]["name"], probes[0]["metadata"]["name"]);
    EXPECT_EQ(b["eventTime"], probes[0]["eventTime"]);
  }
  // The API server is back: the probe gets through and the rest follows at once.
  for (int i = 0; i < 4; ++i) api.push(kEvents, {201, "{}"});
  ASSERT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(sink.posted(), 2);
  EXPECT_EQ(sink.dropped(), 0);
  EXPECT_EQ(sink.queued(), 0u);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto after = bodies(api, 5);  // the sixth attempt (answered 201) and what followed it
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[0]["regarding"]["name"], "bad");
  EXPECT_EQ(after[0]["metadata"]["name"], probes[0]["metadata"]["name"]);
  EXPECT_EQ(after[1]["regarding"]["name"], "thief");
  EXPECT_EQ(after[1]["reason"], "TunnelVIPConflict");
}

TEST(KubeEventSink, AnAttemptWhoseAnswerWasLostIsNotPostedTwice) {
  FakeApi api;
  KubeEventSink sink(std::make_unique<FakeTransport>(api), sinkOptions());
  // The first POST created the Event but its answer never came back; the second one, with the
  // same name, is refused as a duplicate: the Event exists, once.
  api.push(kEvents, {0, "", "timed out"});
  api.push(kEvents, {409, R"({"kind":"Status","reason":"AlreadyExists","code":409})"});
  sink.report({Problem::Kind::InvalidAnnotation, {"kst-fixtures", "bad"}, "x"});
  ASSERT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(api.count(kEvents), 2u);
  EXPECT_EQ(sink.posted(), 1);
  EXPECT_EQ(sink.dropped(), 0);
  // A first attempt answered 409 is someone else's Event of that name: not ours, not posted.
  api.push(kEvents, {409, R"({"kind":"Status","reason":"AlreadyExists","code":409})"});
  sink.report({Problem::Kind::InvalidAnnotation, {"kst-fixtures", "bad2"}, "x"});
  ASSERT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(sink.posted(), 1);
  EXPECT_EQ(sink.dropped(), 1);
}

TEST(KubeEventSink, KeepsAtMostMaxQueuedEventsThroughAnOutageDroppingTheOldest) {
  FakeApi api;
  auto o = sinkOptions();
  o.maxQueued = 2;
  KubeEventSink sink(std::make_unique<FakeTransport>(api), o);
  auto problem = [](const char* name) {
    return Problem{Problem::Kind::VipConflict, {"kst-fixtures", name}, "VIP taken"};
  };
  api.push(kEvents, {0, "", "connection refused"});
  sink.report(problem("a"));
  ASSERT_TRUE(api.waitRequests(kEvents, 2));  // a failed, and its retry hangs
  sink.report(problem("b"));
  sink.report(problem("c"));
  sink.report(problem("d"));  // the queue (b, c) is full: b, the oldest queued, goes
  EXPECT_EQ(sink.dropped(), 1);
  EXPECT_EQ(sink.queued(), 3u);  // a (being retried), c, d
  api.push(kEvents, {503, "{}"});  // a fails again, and is now the oldest of three
  ASSERT_TRUE(waitFor([&] { return sink.dropped() == 2; }));
  EXPECT_EQ(sink.queued(), 2u);
  for (int i = 0; i < 2; ++i) api.push(kEvents, {201, "{}"});
  ASSERT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(sink.posted(), 2);
  EXPECT_EQ(sink.dropped(), 2);
  auto all = bodies(api);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[2]["regarding"]["name"], "c");
  EXPECT_EQ(all[3]["regarding"]["name"], "d");
}

TEST(KubeEventSink, AProblemResolvedDuringTheOutageIsNotPostedAfterwards) {
  FakeApi api;
  KubeEventSink sink(std::make_unique<FakeTransport>(api), sinkOptions());
  Problem gone{Problem::Kind::VipConflict, {"kst-fixtures", "gone"}, "VIP taken"};
  Problem stays{Problem::Kind::VipConflict, {"kst-fixtures", "stays"}, "VIP taken"};
  Problem queuedGone{Problem::Kind::InvalidAnnotation, {"kst-fixtures", "fixed"}, "not an IP"};
  api.push(kEvents, {0, "", "connection refused"});
  sink.report(gone);
  ASSERT_TRUE(api.waitRequests(kEvents, 2));  // `gone` is being retried (hanging)
  sink.report(stays);
  sink.report(queuedGone);
  sink.resolved(gone);        // in flight: not put back after its attempt fails
  sink.resolved(queuedGone);  // waiting in the queue: removed
  EXPECT_EQ(sink.queued(), 2u);  // gone (in flight), stays
  api.push(kEvents, {0, "", "connection refused"});
  ASSERT_TRUE(waitFor([&] { return sink.queued() == 1; }));
  api.push(kEvents, {201, "{}"});
  ASSERT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(sink.posted(), 1);
  auto all = bodies(api);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[2]["regarding"]["name"], "stays");
  // Not posted, so not deduplicated either: if the problem comes back, its Event is posted.
  api.push(kEvents, {201, "{}"});
  sink.report(gone);
  ASSERT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(sink.posted(), 2);
  EXPECT_EQ(bodies(api).back()["regarding"]["name"], "gone");
}

TEST(KubeEventSink, ReportNeverWaitsForTheApiServer) {
  FakeApi api;  // answers nothing: every POST hangs
  KubeEventSink sink(std::make_unique<FakeTransport>(api), sinkOptions());
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 300; ++i)
    sink.report({Problem::Kind::VipConflict, {"kst-fixtures", "s" + std::to_string(i)}, "x"});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(500));
  EXPECT_LE(sink.queued(), 100u);
}

}  // namespace
}  // namespace kst::k8s
