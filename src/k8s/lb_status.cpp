#include "k8s/lb_status.h"

#include <cerrno>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "k8s/watch.h"

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

LoadBalancerStatusWriter::LoadBalancerStatusWriter(TransportFactory makeTransport,
                                                   LoadBalancerStatusOptions opts)
    : make_(std::move(makeTransport)), opts_(std::move(opts)) {}

Status LoadBalancerStatusWriter::connect() {
  if (http_) return {};
  auto t = make_();
  if (!t) return std::unexpected(t.error());
  http_ = std::move(*t);
  return {};
}

Result<std::map<ObjectKey, ServiceObject>> LoadBalancerStatusWriter::currentServices() {
  if (auto c = connect(); !c) return std::unexpected(c.error());
  KubeSourceOptions decodeOpts;
  decodeOpts.keepAnnotations = {opts_.annotation};
  std::map<ObjectKey, ServiceObject> out;
  size_t pageSize = std::max<size_t>(opts_.pageSize, 1);
  std::string cont;
  while (true) {
    std::string path = fmt::format("/api/v1/services?limit={}", pageSize);
    if (!cont.empty()) path += "&continue=" + urlEncode(cont);
    HttpRequest req{"GET", path, "", "", opts_.requestTimeout};
    req.maxBody = opts_.maxResponseBytes;
    auto r = http_->perform(req);
    if (!r && r.error().code == EMSGSIZE && pageSize > 1) {
      pageSize /= 2;  // big objects: fewer per page, from the start (a token is its list's)
      out.clear();
      cont.clear();
      continue;
    }
    if (!r) return std::unexpected(r.error());
    if (r->status != 200)
      return fail(fmt::format("list services: HTTP {}: {}", r->status, statusMessage(r->body)));
    auto j = WatchDecoder::parseObjects(r->body);
    if (!j.is_object() || !j.contains("items") || !j["items"].is_array())
      return fail("list services: the answer is not a Kubernetes list");
    for (const auto& item : j["items"]) {
      auto s = cacheService(item, decodeOpts);
      if (!s) {
        spdlog::debug("list services: an item cannot be decoded ({}); left out",
                      s.error().message);
        continue;
      }
      ObjectKey key = s->key;
      out.insert_or_assign(std::move(key), std::move(*s));
      if (out.size() > opts_.maxServices)
        return fail(fmt::format("list services: more than {} Services", opts_.maxServices));
    }
    cont.clear();
    if (auto m = j.find("metadata"); m != j.end() && m->is_object())
      if (auto c = m->find("continue"); c != m->end() && c->is_string()) cont = c->get<std::string>();
    if (cont.empty()) return out;
  }
}

Status LoadBalancerStatusWriter::write(const LoadBalancerStatusChange& change) {
  if (auto c = connect(); !c) return c;
  auto r = http_->perform({"PATCH",
                           fmt::format("/api/v1/namespaces/{}/services/{}/status",
                                       urlEncode(change.service.ns), urlEncode(change.service.name)),
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
