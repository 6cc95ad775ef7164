// Lease election and publishing of bucket tables against a scripted API.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <thread>

#include "desired/published.h"
#include "k8s/publisher.h"
#include "unit/k8s_fake_transport.h"

namespace kst::k8s {
namespace {

using test::FakeApi;
using test::FakeTransport;

const std::string kLease = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";

class PublisherTest : public ::testing::Test {
 protected:
  FakeApi api;
  KubePublisher pub{[this]() -> Result<std::unique_ptr<HttpTransport>> {
                      return std::unique_ptr<HttpTransport>(new FakeTransport(api));
                    },
                    PublisherOptions{"kube-system", "kube-service-tunnel-publisher", "router-a",
                                     std::chrono::seconds(15)}};
  static std::string lease(const std::string& holder, const std::string& renew, int duration = 15,
                           int transitions = 3) {
    return nlohmann::json{{"apiVersion", "coordination.k8s.io/v1"},
                          {"kind", "Lease"},
                          {"metadata", {{"name", "kube-service-tunnel-publisher"},
                                        {"namespace", "kube-system"},
                                        {"resourceVersion", "42"}}},
                          {"spec", {{"holderIdentity", holder},
                                    {"leaseDurationSeconds", duration},
                                    {"renewTime", renew},
                                    {"leaseTransitions", transitions}}}}
        .dump();
  }
  std::vector<HttpRequest> writes() {
    std::vector<HttpRequest> w;
    for (auto& r : api.requests())
      if (r.method != "GET") w.push_back(r);
    return w;
  }
};

TEST_F(PublisherTest, CreatesTheLeaseWhenThereIsNoneAndLeads) {
  api.push(kLease + "/kube-service-tunnel-publisher", {404, "{}"});
  api.push(kLease, {201, "{}"});
  EXPECT_FALSE(pub.isLeader());
  EXPECT_TRUE(pub.tryAcquireOrRenew());
  EXPECT_TRUE(pub.isLeader());
  auto w = writes();
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].method, "POST");
  auto body = nlohmann::json::parse(w[0].body);
  EXPECT_EQ(body["spec"]["holderIdentity"], "router-a");
  EXPECT_EQ(body["spec"]["leaseDurationSeconds"], 15);
}

TEST_F(PublisherTest, ALeaseHeldByAnotherLiveRouterIsRespected) {
  api.push(kLease + "/", {200, lease("router-b", "2026-11-28T03:00:00.000000Z")});
  EXPECT_FALSE(pub.tryAcquireOrRenew());
  EXPECT_FALSE(pub.isLeader());
  EXPECT_TRUE(writes().empty());
}

TEST_F(PublisherTest, AnExpiredLeaseIsTakenOverWithTheResourceVersion) {
  // Same record seen twice more than leaseDuration apart (local observation time): expired.
  auto held = lease("router-b", "2026-11-28T03:00:00.000000Z", 1, 3);
  api.push(kLease + "/", {200, held});
  EXPECT_FALSE(pub.tryAcquireOrRenew());
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  api.push(kLease + "/", {200, held});
  api.push(kLease + "/", {200, "{}"});  // the PUT
  EXPECT_TRUE(pub.tryAcquireOrRenew());
  auto w = writes();
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].method, "PUT");
  auto body = nlohmann::json::parse(w[0].body);
  EXPECT_EQ(body["spec"]["holderIdentity"], "router-a");
  EXPECT_EQ(body["spec"]["leaseTransitions"], 4);
  EXPECT_EQ(body["metadata"]["resourceVersion"], "42") << "optimistic concurrency";
}

TEST_F(PublisherTest, ALostRaceIsNotLeadership) {
  api.push(kLease + "/", {200, lease("router-a", "2026-11-28T03:00:00.000000Z")});
  api.push(kLease + "/", {409, R"({"kind":"Status","message":"the object has been modified"})"});
  EXPECT_FALSE(pub.tryAcquireOrRenew());
  EXPECT_FALSE(pub.isLeader());
}

// The Lease is read as untrusted too: wrongly typed fields are absent, never an exception.
TEST_F(PublisherTest, AWronglyTypedLeaseIsNotAnException) {
  auto bad = nlohmann::json::parse(lease("router-b", "x"));
  bad["spec"]["holderIdentity"] = 5;
  bad["spec"]["leaseDurationSeconds"] = "15";
  bad["spec"]["leaseTransitions"] = nlohmann::json::array();
  api.push(kLease + "/", {200, bad.dump()});
  api.push(kLease + "/", {200, "{}"});
  bool led = false;
  EXPECT_NO_THROW(led = pub.tryAcquireOrRenew());
  EXPECT_TRUE(led) << "no holder: free to take";
  EXPECT_EQ(nlohmann::json::parse(writes().at(0).body)["spec"]["leaseTransitions"], 1);
  api.push(kLease + "/", {200, R"({"spec":"x"})"});
  EXPECT_NO_THROW(led = pub.tryAcquireOrRenew());
  EXPECT_FALSE(led);
}

TEST_F(PublisherTest, RenewsItsOwnLease) {
  api.push(kLease + "/", {200, lease("router-a", "2026-11-28T03:00:00.000000Z")});
  api.push(kLease + "/", {200, "{}"});
  EXPECT_TRUE(pub.tryAcquireOrRenew());
  auto body = nlohmann::json::parse(writes().at(0).body);
  EXPECT_NE(body["spec"]["renewTime"], "2026-11-28T03:00:00.000000Z");
  EXPECT_EQ(body["spec"]["leaseTransitions"], 3) << "a renewal is not a transition";
}

// The table goes into a ConfigMap of the daemon's own namespace (never into the tenant's
// Service), by server-side apply, with the Service's namespace, name and uid.
TEST_F(PublisherTest, PublishAppliesTheTableConfigMapInItsOwnNamespace) {
  const std::string name = publishedConfigMapName("shop", "web");
  EXPECT_TRUE(name.starts_with("kst-buckets-"));
  EXPECT_EQ(name.size(), std::string("kst-buckets-").size() + 16);
  EXPECT_NE(name, publishedConfigMapName("shop", "web2"));
  KubePublisher p{[this]() -> Result<std::unique_ptr<HttpTransport>> {
                    return std::unique_ptr<HttpTransport>(new FakeTransport(api));
                  },
                  PublisherOptions{"kube-system", "kube-service-tunnel-publisher", "router-a",
                                   std::chrono::seconds(15),
                                   [](const ObjectKey&) { return std::optional<std::string>("u-1"); },
                                   {}}};
  const std::string path = "/api/v1/namespaces/kube-system/configmaps/" + name;
  api.push(path, {200, "{}"});
  ASSERT_TRUE(p.publish({"shop", "web"}, R"({"v":1})"));
  auto w = writes();
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].method, "PATCH");
  EXPECT_EQ(w[0].path, path + "?fieldManager=kube-service-tunnel&force=true");
  EXPECT_EQ(w[0].contentType, "application/apply-patch+yaml");
  auto body = nlohmann::json::parse(w[0].body);
  EXPECT_EQ(body["kind"], "ConfigMap");
  EXPECT_EQ(body["metadata"]["namespace"], "kube-system");
  EXPECT_EQ(body["metadata"]["labels"]["app.kubernetes.io/managed-by"], "kube-service-tunnel");
  EXPECT_EQ(body["data"], (nlohmann::json{{"namespace", "shop"}, {"name", "web"}, {"uid", "u-1"},
                                          {"table", R"({"v":1})"}}));
  for (auto& r : api.requests()) EXPECT_EQ(r.path.find("/services"), std::string::npos) << r.path;
  api.push(path, {403, R"({"kind":"Status","message":"forbidden"})"});
  auto denied = p.publish({"shop", "web"}, "x");
  ASSERT_FALSE(denied);
  EXPECT_NE(denied.error().message.find("403"), std::string::npos);
}

TEST_F(PublisherTest, TheLeaderDeletesStaleTables) {
  std::vector<StaleTable> stale{{"kst-buckets-00000000000000aa", "17"},
                                {"kst-buckets-00000000000000bb", ""}};
  KubePublisher p{[this]() -> Result<std::unique_ptr<HttpTransport>> {
                    return std::unique_ptr<HttpTransport>(new FakeTransport(api));
                  },
                  PublisherOptions{"kube-system", "kube-service-tunnel-publisher", "router-a",
                                   std::chrono::seconds(15), {}, [&] { return stale; }}};
  // Not the leader: nothing is deleted.
  api.push(kLease + "/", {200, lease("router-b", "2026-11-28T03:00:00.000000Z")});
  EXPECT_FALSE(p.tryAcquireOrRenew());
  EXPECT_EQ(p.deleteStale(), 0);
  api.push(kLease + "/", {200, lease("router-a", "2026-11-28T03:00:00.000000Z")});
  api.push(kLease + "/", {200, "{}"});
  ASSERT_TRUE(p.tryAcquireOrRenew());
  api.push("/api/v1/namespaces/kube-system/configmaps/kst-buckets-00000000000000aa", {200, "{}"});
  api.push("/api/v1/namespaces/kube-system/configmaps/kst-buckets-00000000000000bb", {404, "{}"});
  EXPECT_EQ(p.deleteStale(), 2);
  std::vector<std::string> deletes;
  for (auto& r : api.requests())
    if (r.method == "DELETE") {
      deletes.push_back(r.path);
      if (deletes.size() == 1)  // only the version judged stale
        EXPECT_EQ(nlohmann::json::parse(r.body)["preconditions"]["resourceVersion"], "17");
    }
  EXPECT_EQ(deletes, (std::vector<std::string>{
                         "/api/v1/namespaces/kube-system/configmaps/kst-buckets-00000000000000aa",
                         "/api/v1/namespaces/kube-system/configmaps/kst-buckets-00000000000000bb"}));
}

}  // namespace
}  // namespace kst::k8s
