// k8s/lb_status.h: the status subresource patch of LoadBalancer Services.
#include "k8s/lb_status.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "unit/k8s_fake_transport.h"

namespace kst::k8s {
namespace {

using test::FakeApi;
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

}  // namespace
}  // namespace kst::k8s
