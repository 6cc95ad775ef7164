#include "k8s/publisher.h"

#include <algorithm>
#include <cstdint>
#include <ctime>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/guard.h"
#include "desired/published.h"

namespace kst::k8s {

namespace {

std::string microTimeNow() {
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:06d}Z", buf, us);
}

int64_t steadyNs(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace

KubePublisher::KubePublisher(TransportFactory makeTransport, PublisherOptions opts)
    : make_(std::move(makeTransport)), opts_(std::move(opts)) {}

KubePublisher::~KubePublisher() { stop(); }

void KubePublisher::start() {
  thread_ = std::thread([this] {
    keepRunning("lease", [this] { run(); }, [this] {
      std::lock_guard lk(mu_);
      return stopping_;
    });
  });
}

void KubePublisher::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (electionHttp_) electionHttp_->shutdown();
  if (thread_.joinable()) thread_.join();
}

bool KubePublisher::isLeader() {
  return steadyNs(std::chrono::steady_clock::now()) < leaderUntil_.load();
}

bool KubePublisher::tryAcquireOrRenew() {
  if (!electionHttp_) {
    auto t = make_();
    if (!t) {
      spdlog::warn("lease: {}", t.error().message);
      return false;
    }
    electionHttp_ = std::move(*t);
  }
  const auto start = std::chrono::steady_clock::now();
  const std::string path = fmt::format("/apis/coordination.k8s.io/v1/namespaces/{}/leases/{}",
                                       opts_.ns, opts_.leaseName);
  auto got = electionHttp_->perform({"GET", path, "", "", std::chrono::seconds(10)});
  if (!got) {
    spdlog::warn("lease {}: {}", opts_.leaseName, got.error().message);
    return false;
  }
  nlohmann::json lease;
  const std::string now = microTimeNow();
  if (got->status == 404) {
    lease = {{"apiVersion", "coordination.k8s.io/v1"},
             {"kind", "Lease"},
             {"metadata", {{"name", opts_.leaseName}, {"namespace", opts_.ns}}},
             {"spec",
              {{"holderIdentity", opts_.identity},
               {"leaseDurationSeconds", opts_.leaseDuration.count()},
               {"acquireTime", now},
               {"renewTime", now},
               {"leaseTransitions", 0}}}};
    auto r = electionHttp_->perform(
        {"POST", fmt::format("/apis/coordination.k8s.io/v1/namespaces/{}/leases", opts_.ns),
         lease.dump(), "application/json", std::chrono::seconds(10)});
    if (!r || r->status / 100 != 2) return false;
    spdlog::info("lease {}: acquired (created) by {}", opts_.leaseName, opts_.identity);
    leaderUntil_ = steadyNs(start + opts_.leaseDuration * 2 / 3);
    return true;
  }
  if (got->status != 200) {
    spdlog::warn("lease {}: HTTP {}: {}", opts_.leaseName, got->status, statusMessage(got->body));
    return false;
  }
  lease = nlohmann::json::parse(got->body, nullptr, false);
  if (!lease.is_object() || !lease.contains("spec") || !lease["spec"].is_object()) return false;
  auto& spec = lease["spec"];
  // Typed reads only (value() throws on a field of another type).
  auto text = [&](const char* k) {
    auto it = spec.find(k);
    return it != spec.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  auto number = [&](const char* k, int64_t dflt) {
    auto it = spec.find(k);
    return it != spec.end() && it->is_number_integer() ? it->get<int64_t>() : dflt;
  };
  std::string holder = text("holderIdentity");
  std::string renew = text("renewTime");
  int64_t duration = std::clamp<int64_t>(number("leaseDurationSeconds", opts_.leaseDuration.count()),
                                         1, 3600);
  if (holder != observedHolder_ || renew != observedRenew_) {
    observedHolder_ = holder;
    observedRenew_ = renew;
    observedAt_ = start;
  }
  bool mine = holder == opts_.identity;
  bool expired = holder.empty() || start > observedAt_ + std::chrono::seconds(duration);
  if (!mine && !expired) {
    leaderUntil_ = 0;
    return false;
  }
  spec["holderIdentity"] = opts_.identity;
  spec["leaseDurationSeconds"] = opts_.leaseDuration.count();
  spec["renewTime"] = now;
  if (!mine) {
    spec["acquireTime"] = now;
    spec["leaseTransitions"] = std::clamp<int64_t>(number("leaseTransitions", 0), 0, INT32_MAX - 1) + 1;
  }
  // resourceVersion stays in metadata: a concurrent writer makes this PUT fail with 409.
  auto r = electionHttp_->perform({"PUT", path, lease.dump(), "application/json",
                                   std::chrono::seconds(10)});
  if (!r || r->status / 100 != 2) {
    if (r && r->status != 409)
      spdlog::warn("lease {}: update HTTP {}: {}", opts_.leaseName, r->status, statusMessage(r->body));
    leaderUntil_ = 0;
    return false;
  }
  if (!mine) spdlog::info("lease {}: acquired by {} (was {:?})", opts_.leaseName, opts_.identity, holder);
  // Stop acting as leader well before others may consider the lease expired.
  leaderUntil_ = steadyNs(start + opts_.leaseDuration * 2 / 3);
  return true;
}

void KubePublisher::setOnAcquired(std::function<void()> fn) {
  std::lock_guard lk(mu_);
  onAcquired_ = std::move(fn);
}

void KubePublisher::run() {
  bool was = false;
  while (true) {
    bool now = tryAcquireOrRenew();
    if (now && !was) {
      // Publish now rather than at the daemon's next pass (up to --resync-interval away).
      std::function<void()> fn;
      {
        std::lock_guard lk(mu_);
        fn = onAcquired_;
      }
      if (fn) fn();
    }
    if (now) deleteStale();
    was = now;
    std::unique_lock lk(mu_);
    if (cv_.wait_for(lk, opts_.leaseDuration / 3, [&] { return stopping_; })) return;
  }
}

Status KubePublisher::publish(const ObjectKey& service, const std::string& table) {
  if (!patchHttp_) {
    auto t = make_();
    if (!t) return std::unexpected(t.error());
    patchHttp_ = std::move(*t);
  }
  std::string uid;
  if (opts_.uidOf)
    if (auto u = opts_.uidOf(service)) uid = *u;
  const std::string name = publishedConfigMapName(service.ns, service.name);
  // The Service's namespace/name/uid are data (labels cannot hold every name); the label
  // selects the daemon's ConfigMaps.
  nlohmann::json cm = {
      {"apiVersion", "v1"},
      {"kind", "ConfigMap"},
      {"metadata",
       {{"name", name},
        {"namespace", opts_.ns},
        {"labels", {{kManagedByLabel, kManagedByValue}}}}},
      {"data",
       {{"namespace", service.ns}, {"name", service.name}, {"uid", uid}, {kTableKey, table}}}};
  // Server-side apply: creates or replaces our fields in one request, whoever wrote before.
  auto r = patchHttp_->perform(
      {"PATCH",
       fmt::format("/api/v1/namespaces/{}/configmaps/{}?fieldManager=kube-service-tunnel&force=true",
                   urlEncode(opts_.ns), name),
       cm.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
       "application/apply-patch+yaml", std::chrono::seconds(10)});
  if (!r) return std::unexpected(r.error());
  if (r->status / 100 != 2)
    return fail(fmt::format("apply ConfigMap {}/{} (bucket table of {}): HTTP {}: {}", opts_.ns,
                            name, service.str(), r->status, statusMessage(r->body)));
  ++publications_;
  lastPublication_ = std::chrono::steady_clock::now().time_since_epoch().count();
  return {};
}

std::optional<std::chrono::steady_clock::duration> KubePublisher::sinceLastPublication() const {
  int64_t at = lastPublication_;
  if (at == 0) return std::nullopt;
  return std::chrono::steady_clock::now() -
         std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(at));
}

int KubePublisher::deleteStale() {
  if (!opts_.staleTables || !electionHttp_) return 0;
  int deleted = 0;
  for (const auto& [name, rv] : opts_.staleTables()) {
    if (!isLeader()) break;
    // Only the version judged stale: if the table was published again meanwhile (a Service
    // created again under the same name), the API server answers 409 and it stays.
    nlohmann::json options = {{"apiVersion", "v1"}, {"kind", "DeleteOptions"}};
    if (!rv.empty()) options["preconditions"] = {{"resourceVersion", rv}};
    auto r = electionHttp_->perform(
        {"DELETE", fmt::format("/api/v1/namespaces/{}/configmaps/{}", urlEncode(opts_.ns),
                               urlEncode(name)),
         options.dump(), "application/json", std::chrono::seconds(10)});
    if (!r) {
      spdlog::warn("delete stale bucket table {}: {}", name, r.error().message);
      break;
    }
    if (r->status / 100 == 2 || r->status == 404) {
      ++deleted;
      spdlog::info("deleted stale bucket table ConfigMap {}/{}", opts_.ns, name);
    } else if (r->status == 409) {
      spdlog::debug("stale bucket table {} changed meanwhile; kept", name);
    } else {
      spdlog::warn("delete stale bucket table {}: HTTP {}: {}", name, r->status,
                   statusMessage(r->body));
    }
  }
  return deleted;
}

}  // namespace kst::k8s
