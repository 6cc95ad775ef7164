#include "k8s/lb_status.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace kst::k8s {

std::string loadBalancerStatusPatch(const LoadBalancerStatusChange& change) {
  nlohmann::json lb = nlohmann::json::object();
  if (change.ingress.empty()) {
    lb["ingress"] = nullptr;  // merge patch: remove the field
  } else {
    nlohmann::json ingress = nlohmann::json::array();
    for (const auto& ip : change.ingress) ingress.push_back({{"ip", ip.str()}, {"ipMode", "Proxy"}});
    lb["ingress"] = std::move(ingress);
  }
  return nlohmann::json{{"status", {{"loadBalancer", std::move(lb)}}}}.dump();
}

LoadBalancerStatusWriter::LoadBalancerStatusWriter(TransportFactory makeTransport)
    : make_(std::move(makeTransport)) {}

Status LoadBalancerStatusWriter::write(const LoadBalancerStatusChange& change) {
  if (!http_) {
    auto t = make_();
    if (!t) return std::unexpected(t.error());
    http_ = std::move(*t);
  }
  auto r = http_->perform({"PATCH",
                           fmt::format("/api/v1/namespaces/{}/services/{}/status",
                                       change.service.ns, change.service.name),
                           loadBalancerStatusPatch(change), "application/merge-patch+json",
                           std::chrono::seconds(10)});
  if (!r) return std::unexpected(r.error());
  if (r->status == 404) return {};
  if (r->status / 100 != 2)
    return fail(fmt::format("PATCH service {} status: HTTP {}: {}", change.service.str(),
                            r->status, statusMessage(r->body)));
  return {};
}

}  // namespace kst::k8s
