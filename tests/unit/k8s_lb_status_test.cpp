// k8s/lb_status.h: the status subresource patch of LoadBalancer Services.
#include "k8s/lb_status.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "unit/k8s_fake_transport.h"

namespace kst::k8s {
namespace {

using test::FakeApi;
using test::fixture;
using test::FakeResponse;
using test::FakeTransport;

IpAddress ip(const char* s) { return *IpAddress::parse(s); }

TEST(LoadBalancerStatus, PatchWritesIngressWithProxyModeOrRemovesIt) {
  auto set = nlohmann::json::parse(loadBalancerStatusPatch(
      {{"team", "web"}, {ip("203.0.113.7"), ip("2001:db8::7")}, "allocated"}));
  EXPECT_EQ(set, nlohmann::json::parse(R"({"status":{"loadBalancer":{"ingress":[
      {"ip":"203.0.113.7","ipMode":"Proxy"},{"ip":"2001:db8::7","ipMode":"Proxy"}]}}})"));
  auto clear = nlohmann::json::parse(loadBalancerStatusPatch({{"team", "web"}, {}, "left class"}));
  EXPECT_EQ(clear, nlohmann::json::parse(R"({"status":{"loadBalancer":{"ingress":null}}})"));
}

TEST(LoadBalancerStatus, WriterPatchesTheStatusSubresourceAndToleratesAGoneService) {
  FakeApi api;
  LoadBalancerStatusWriter w([&]() -> Result<std::unique_ptr<HttpTransport>> {
    return std::make_unique<FakeTransport>(api);
  });
  const std::string path = "/api/v1/namespaces/team/services/web/status";
  api.push(path, FakeResponse{200, "{}"});
  ASSERT_TRUE(w.write({{"team", "web"}, {ip("203.0.113.7")}, "allocated"}));
  auto reqs = api.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "PATCH");
  EXPECT_EQ(reqs[0].path, path);
  EXPECT_EQ(reqs[0].contentType, "application/merge-patch+json");
  api.push(path, FakeResponse{404, R"({"kind":"Status","message":"not found"})"});
  EXPECT_TRUE(w.write({{"team", "web"}, {}, "left class"}));
  api.push(path, FakeResponse{403, R"({"kind":"Status","message":"forbidden: services/status"})"});
  auto denied = w.write({{"team", "web"}, {ip("203.0.113.7")}, "allocated"});
  ASSERT_FALSE(denied);
  EXPECT_NE(denied.error().message.find("HTTP 403"), std::string::npos) << denied.error().message;
}

// The fresh read before an allocation: every page of the list (continue tokens as the server
// gave them), decoded like the cache (only the VIP annotation kept), the status addresses read.
TEST(LoadBalancerStatus, CurrentServicesReadsEveryPageAndTheStatusAddresses) {
  FakeApi api;
  LoadBalancerStatusOptions o;
  o.pageSize = 1;
  LoadBalancerStatusWriter w([&]() -> Result<std::unique_ptr<HttpTransport>> {
    return std::make_unique<FakeTransport>(api);
  }, o);
  auto page2 = nlohmann::json::parse(fixture("services-list-limit1-page2-last.json"));
  // One of them as the elected router left it.
  for (auto& item : page2["items"])
    if (item["metadata"]["name"] == "web")
      item["status"]["loadBalancer"]["ingress"] = {{{"ip", "203.0.113.3"}, {"ipMode", "Proxy"}}};
  api.push("/api/v1/services?limit=1&continue=", FakeResponse{200, page2.dump()});
  api.push("/api/v1/services?limit=1", FakeResponse{200, fixture("services-list-limit1-page1.json")});
  auto got = w.currentServices();
  ASSERT_TRUE(got) << got.error().message;
  std::vector<std::string> names;
  for (auto& [k, s] : *got) names.push_back(k.str());
  EXPECT_EQ(names, (std::vector<std::string>{"kst-fixtures/bad", "kst-fixtures/plain",
                                             "kst-fixtures/web", "kst-fixtures/web6"}));
  auto& web = got->at({"kst-fixtures", "web"});
  EXPECT_EQ(web.ingressIps, (std::vector<std::string>{"203.0.113.3"}));
  EXPECT_TRUE(web.ingressProxyMode);
  for (auto& [k, s] : *got)
    for (auto& [a, v] : s.annotations) EXPECT_EQ(a, "cmd.nu/tunnel") << k.str();
  auto reqs = api.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].path, "/api/v1/services?limit=1");
  EXPECT_TRUE(reqs[1].path.starts_with("/api/v1/services?limit=1&continue=eyJ2")) << reqs[1].path;
  // A failed read is an error (the daemon then writes nothing), never a partial answer.
  api.push("/api/v1/services?limit=1", FakeResponse{403, R"({"kind":"Status","message":"no"})"});
  auto denied = w.currentServices();
  ASSERT_FALSE(denied);
  EXPECT_NE(denied.error().message.find("HTTP 403"), std::string::npos);
  api.push("/api/v1/services?limit=1", FakeResponse{200, R"({"kind":"Status"})"});
  EXPECT_FALSE(w.currentServices());
}

}  // namespace
}  // namespace kst::k8s
