// k8s/pod_gate.h: the VIP readiness gate writer against a scripted API server.
#include "k8s/pod_gate.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "unit/k8s_fake_transport.h"

namespace kst::k8s {
namespace {

using test::FakeApi;
using test::FakeResponse;
using test::FakeTransport;

const std::string kPath = "/api/v1/namespaces/web/pods/front-1/status";
const IpAddress kPodIp = *IpAddress::parse("10.0.0.1");

std::string pod(bool gated, const char* status = nullptr, const char* uid = "u1",
                const char* node = "n1", const char* podIp = "10.0.0.1") {
  nlohmann::json p = {{"metadata", {{"name", "front-1"}, {"namespace", "web"}, {"uid", uid}}},
                      {"spec", {{"nodeName", node}}},
                      {"status", {{"podIP", podIp},
                                  {"podIPs", nlohmann::json::array({{{"ip", podIp}}, {{"ip", "fd00::1"}}})},
                                  {"conditions", nlohmann::json::array(
                                                      {{{"type", "Ready"}, {"status", "False"}}})}}}};
  if (gated)
    p["spec"]["readinessGates"] = nlohmann::json::array(
        {{{"conditionType", "example.com/other"}}, {{"conditionType", "cmd.nu/vip-ready"}}});
  if (status)
    p["status"]["conditions"].push_back({{"type", "cmd.nu/vip-ready"}, {"status", status}});
  return p.dump();
}

struct Writer {
  FakeApi api;
  std::chrono::system_clock::time_point now = std::chrono::system_clock::from_time_t(1'800'000'000);
  PodGateWriter w{[this]() -> Result<std::unique_ptr<HttpTransport>> {
                    return std::make_unique<FakeTransport>(api);
                  },
                  [this] {
                    PodGateOptions o;
                    o.nodeName = "n1";
                    o.now = [this] { return now; };
                    return o;
                  }()};
  /** The requests made since the last call: "READ" (dry run) or the patch body. */
  std::vector<std::string> since() {
    auto reqs = api.requests();
    std::vector<std::string> out;
    for (size_t i = seen; i < reqs.size(); ++i) {
      EXPECT_EQ(reqs[i].method, "PATCH");
      EXPECT_EQ(reqs[i].contentType, "application/strategic-merge-patch+json");
      if (reqs[i].path == kPath + "?dryRun=All") {
        EXPECT_EQ(reqs[i].body, "{}");
        out.push_back("READ");
      } else {
        EXPECT_EQ(reqs[i].path, kPath);
        out.push_back(reqs[i].body);
      }
    }
    seen = reqs.size();
    return out;
  }
  size_t seen = 0;
};

TEST(PodGate, ReadsTheGateAndTheConditionFromAnyShapeWithoutThrowing) {
  auto v = readPodGate(nlohmann::json::parse(pod(true, "True")), "cmd.nu/vip-ready");
  ASSERT_TRUE(v);
  EXPECT_TRUE(v->gated);
  EXPECT_EQ(v->status, true);
  EXPECT_EQ(v->uid, "u1");
  EXPECT_EQ(v->nodeName, "n1");
  EXPECT_EQ(v->ips, (std::vector<IpAddress>{kPodIp, *IpAddress::parse("fd00::1")}));
  v = readPodGate(nlohmann::json::parse(pod(false)), "cmd.nu/vip-ready");
  ASSERT_TRUE(v);
  EXPECT_FALSE(v->gated);
  EXPECT_EQ(v->status, std::nullopt);
  for (const char* bad : {R"([])", R"({"metadata":{}})", R"({"metadata":{"uid":7}})", R"("x")"})
    EXPECT_FALSE(readPodGate(nlohmann::json::parse(bad), "cmd.nu/vip-ready")) << bad;
  // Wrong types inside are defaults, not errors.
  v = readPodGate(nlohmann::json::parse(
                      R"({"metadata":{"uid":"u"},"spec":{"readinessGates":{"a":1},"nodeName":3},
                          "status":{"conditions":[7,{"type":"cmd.nu/vip-ready","status":true}]}})"),
                  "cmd.nu/vip-ready");
  ASSERT_TRUE(v);
  EXPECT_FALSE(v->gated);
  EXPECT_EQ(v->status, std::nullopt);
}

TEST(PodGate, PatchSetsOneConditionByTypeWithItsTransitionTimeAndTheUid) {
  auto t = std::chrono::system_clock::from_time_t(1'800'000'000);  // 2027-01-15T08:00:00Z
  auto j = nlohmann::json::parse(podGatePatch("cmd.nu/vip-ready", {"web/a", "u1", {}, true, "ok"}, t));
  EXPECT_EQ(j["metadata"]["uid"], "u1");
  ASSERT_EQ(j["status"]["conditions"].size(), 1u);
  auto c = j["status"]["conditions"][0];
  EXPECT_EQ(c["type"], "cmd.nu/vip-ready");
  EXPECT_EQ(c["status"], "True");
  EXPECT_EQ(c["lastTransitionTime"], "2027-01-15T08:00:00Z");
  j = nlohmann::json::parse(podGatePatch("cmd.nu/vip-ready", {"web/a", "", {}, false, "gone"}, t));
  EXPECT_FALSE(j.contains("metadata"));
  EXPECT_EQ(j["status"]["conditions"][0]["status"], "False");
  EXPECT_EQ(j["status"]["conditions"][0]["reason"], "VipNotInPlace");
}

TEST(PodGate, WritesAGatedPodOnlyWhenTheValueChanges) {
  Writer x;
  x.api.push(kPath + "?dryRun=All", {200, pod(true)});
  x.api.push(kPath, {200, "{}"});
  x.w.update({{"web/front-1", "u1", {kPodIp}, true, "in place"}});
  EXPECT_TRUE(x.w.syncOnce());
  auto r = x.since();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0], "READ");
  auto body = nlohmann::json::parse(r[1]);
  EXPECT_EQ(body["status"]["conditions"][0]["status"], "True");
  EXPECT_EQ(body["metadata"]["uid"], "u1");
  // The same value again: no request at all.
  x.w.update({{"web/front-1", "u1", {kPodIp}, true, "in place"}});
  EXPECT_TRUE(x.w.syncOnce());
  EXPECT_TRUE(x.since().empty());
  // A new message alone is no transition either.
  x.w.update({{"web/front-1", "u1", {kPodIp}, true, "still in place"}});
  EXPECT_TRUE(x.w.syncOnce());
  EXPECT_TRUE(x.since().empty());
  // False: one write.
  x.api.push(kPath, {200, "{}"});
  x.w.update({{"web/front-1", "u1", {kPodIp}, false, "device gone"}});
  EXPECT_TRUE(x.w.syncOnce());
  r = x.since();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(r[0])["status"]["conditions"][0]["status"], "False");
  EXPECT_EQ(x.w.writes(), 2);
}

TEST(PodGate, AConditionAlreadyAtTheValueIsNotWritten) {
  Writer x;
  x.api.push(kPath + "?dryRun=All", {200, pod(true, "True")});
  x.w.update({{"web/front-1", "u1", {kPodIp}, true, "in place"}});
  EXPECT_TRUE(x.w.syncOnce());
  EXPECT_EQ(x.since(), std::vector<std::string>{"READ"});
  EXPECT_EQ(x.w.writes(), 0);
}

TEST(PodGate, PodsWithoutTheGateAreNeverWritten) {
  Writer x;
  x.api.push(kPath + "?dryRun=All", {200, pod(false)});
  x.w.update({{"web/front-1", "u1", {kPodIp}, true, "in place"}});
  EXPECT_TRUE(x.w.syncOnce());
  x.w.update({{"web/front-1", "u1", {kPodIp}, false, "gone"}});
  EXPECT_TRUE(x.w.syncOnce());
  EXPECT_EQ(x.since(), std::vector<std::string>{"READ"});  // read once, never patched
  EXPECT_EQ(x.w.writes(), 0);
}

TEST(PodGate, AnotherNodesPodOrAnotherUidIsNotWritten) {
  Writer x;
  x.api.push(kPath + "?dryRun=All", {200, pod(true, nullptr, "u1", "n2")});
  x.w.update({{"web/front-1", "u1", {kPodIp}, true, "in place"}});
  EXPECT_TRUE(x.w.syncOnce());
  EXPECT_EQ(x.since(), std::vector<std::string>{"READ"});
  Writer y;
  y.api.push(kPath + "?dryRun=All", {200, pod(true, nullptr, "u-new")});
  y.w.update({{"web/front-1", "u-old", {kPodIp}, true, "in place"}});
  EXPECT_TRUE(y.w.syncOnce());
  EXPECT_EQ(y.since(), std::vector<std::string>{"READ"});
  // A pod of that name and uid that does not hold the endpoint's address (a hand-written slice).
  Writer z;
  z.api.push(kPath + "?dryRun=All", {200, pod(true, nullptr, "u1", "n1", "10.0.0.99")});
  z.w.update({{"web/front-1", "u1", {kPodIp}, true, "in place"}});
  EXPECT_TRUE(z.w.syncOnce());
  EXPECT_EQ(z.since(), std::vector<std::string>{"READ"});
  EXPECT_EQ(x.w.writes() + y.w.writes() + z.w.writes(), 0);
}

TEST(PodGate, ANewUidIsReadAgainAndAFailedWriteIsRetried) {
  Writer x;
  x.api.push(kPath + "?dryRun=All", {200, pod(true, nullptr, "u1")});
  x.api.push(kPath, {500, R"({"kind":"Status","message":"etcd timeout"})"});
  x.w.update({{"web/front-1", "u1", {kPodIp}, true, "in place"}});
  EXPECT_FALSE(x.w.syncOnce());  // retry wanted
  x.api.push(kPath + "?dryRun=All", {200, pod(true, nullptr, "u1")});
  x.api.push(kPath, {200, "{}"});
  EXPECT_TRUE(x.w.syncOnce());
  EXPECT_EQ(x.since().size(), 4u);  // read, failed write, read, write
  // The pod was recreated under the same name: the slice names the new uid.
  x.api.push(kPath + "?dryRun=All", {200, pod(true, nullptr, "u2")});
  x.api.push(kPath, {200, "{}"});
  x.w.update({{"web/front-1", "u2", {kPodIp}, true, "in place"}});
  EXPECT_TRUE(x.w.syncOnce());
  auto r = x.since();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(nlohmann::json::parse(r[1])["metadata"]["uid"], "u2");
}

TEST(PodGate, AGonePodOrAForbiddenReadIsNotRetriedEverySecond) {
  Writer x;
  x.api.push(kPath + "?dryRun=All", {404, R"({"kind":"Status","message":"not found"})"});
  x.w.update({{"web/front-1", "u1", {kPodIp}, true, "in place"}});
  EXPECT_TRUE(x.w.syncOnce());
  Writer y;
  y.api.push(kPath + "?dryRun=All", {403, R"({"kind":"Status","message":"forbidden"})"});
  y.w.update({{"web/front-1", "u1", {kPodIp}, true, "in place"}});
  EXPECT_TRUE(y.w.syncOnce());
  EXPECT_TRUE(y.w.syncOnce());  // not asked again before the reread interval
  EXPECT_EQ(y.since().size(), 1u);
  y.now += std::chrono::seconds(61);
  y.api.push(kPath + "?dryRun=All", {200, pod(true, "True")});
  EXPECT_TRUE(y.w.syncOnce());
  EXPECT_EQ(y.since(), std::vector<std::string>{"READ"});
}

TEST(PodGate, HostilePodReferencesAreRefusedWithoutARequest) {
  Writer x;
  x.w.update({{"no-slash", "", {}, true, ""}, {"a/b/c", "", {}, true, ""}, {"/x", "", {}, true, ""}});
  EXPECT_TRUE(x.w.syncOnce());
  EXPECT_TRUE(x.since().empty());
}

}  // namespace
}  // namespace kst::k8s
