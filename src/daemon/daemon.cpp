#include "daemon/daemon.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <random>

namespace kst {

Daemon::Daemon(DaemonOptions opts, Source& source, RouterReconciler* router,
               AgentReconciler* agent, ProblemSink* sink, DecisionPublisher* publisher)
    : opts_(std::move(opts)), source_(source), router_(router), agent_(agent), sink_(sink),
      publisher_(publisher), builder_(opts_.model) {}

void Daemon::onChanges(ObjectChanges changes) {
  std::lock_guard lk(mu_);
  if (pending_) pending_->merge(std::move(changes));
  else pending_ = std::move(changes);
  cv_.notify_all();
}

void Daemon::poke() {
  std::lock_guard lk(mu_);
  poked_ = true;
  cv_.notify_all();
}

void Daemon::stop() {
  std::lock_guard lk(mu_);
  stopping_ = true;
  cv_.notify_all();
}

bool Daemon::pass(std::chrono::steady_clock::time_point start) {
  const Model& model = builder_.model();
  std::vector<Problem> problems = model.problems;
  bool ok = true;
  size_t changes = 0;
  // Metrics: one pass of reconciler `who` that began at `began`, with the kernel changes it
  // applied and whether reading the kernel (observe) or applying (apply) failed.
  auto record = [&](Reconciler who, std::chrono::steady_clock::time_point began, size_t n,
                    std::optional<FailureReason> failed) {
    if (!metrics_) return;
    metrics_->pass(who, std::chrono::duration<double>(std::chrono::steady_clock::now() - began)
                            .count(), n);
    if (failed) metrics_->failure(who, *failed);
  };
  auto handle = [&](Reconciler who, std::chrono::steady_clock::time_point began,
                    const Result<PassResult>& r) {
    const char* role = reconcilerName(who);
    if (!r) {
      spdlog::error("{}: reconcile failed: {}", role, r.error().message);
      record(who, began, 0, FailureReason::Observe);
      ok = false;
      return;
    }
    changes += r->changes;
    problems.insert(problems.end(), r->problems.begin(), r->problems.end());
    for (auto& f : r->failures) spdlog::warn("{}: {}", role, f);
    if (!r->ok()) ok = false;
    record(who, began, r->changes,
           r->ok() ? std::nullopt : std::optional<FailureReason>(FailureReason::Apply));
  };
  if (router_) {
    running_ = Reconciler::Router;
    auto began = std::chrono::steady_clock::now();
    auto r = router_->reconcile(model, &routerChanged_);
    // Whatever the outcome, the router's next pass starts from this model: after a success
    // its cache holds it, after a failure it has no cache (and re-reads the kernel).
    routerChanged_.clear();
    handle(Reconciler::Router, began, r);
    if (metrics_ && r) metrics_->releasedSlots(r->releasedSlots);
    bool routerOk = r && r->ok();
    lastRouterPass_ = r ? std::move(*r) : PassResult{};
    // After the router's pass: what is announced is programmed (withdrawals only when the
    // pass did not apply everything).
    if (announcer_) {
      running_ = Reconciler::Announce;
      auto aBegan = std::chrono::steady_clock::now();
      auto a = announcer_->reconcile(router_->lastPlan(), routerOk);
      if (!a) {
        spdlog::error("announce: {}", a.error().message);
        record(Reconciler::Announce, aBegan, 0, FailureReason::Observe);
        ok = false;
      } else {
        changes += a->changes;
        for (auto& f : a->failures) spdlog::warn("announce: {}", f);
        if (!a->ok()) ok = false;
        record(Reconciler::Announce, aBegan, a->changes,
               a->ok() ? std::nullopt : std::optional<FailureReason>(FailureReason::Apply));
      }
      // The announced set is copied only when it may have changed (not on the usual pass).
      bool drained = a && a->drained;
      if (metrics_ && (announceUnreported_ || !a || !a->ok() || a->changes > 0 ||
                       drained != announceDrained_)) {
        metrics_->announced(announcer_->announcedVips(), drained);
        announceUnreported_ = !a || !a->ok();
        announceDrained_ = drained;
      }
    }
    // Publishing only after the kernel holds the plan; a failed write is retried next pass.
    if (ok && publisher_ && publisher_->isLeader()) {
      for (auto& [svc, table] : router_->pendingPublications()) {
        if (auto s = publisher_->publish(svc, table); !s) {
          spdlog::warn("publish bucket table of {}: {}", svc.str(), s.error().message);
          if (metrics_) metrics_->failure(Reconciler::Router, FailureReason::Publish);
          ok = false;
        } else {
          spdlog::info("published bucket table of {}", svc.str());
        }
      }
    }
  }
  // The status of our LoadBalancer Services: written by the Lease holder only.
  if (router_ && lbStatus_ && publisher_ && publisher_->isLeader())
    if (!writeLoadBalancerStatus(problems)) {
      if (metrics_) metrics_->failure(Reconciler::Router, FailureReason::Publish);
      ok = false;
    }
  if (agent_) {
    running_ = Reconciler::Agent;
    auto began = std::chrono::steady_clock::now();
    handle(Reconciler::Agent, began, agent_->reconcile(model));
    if (gates_) gates_->update(agent_->gates());
  }
  running_.reset();
  // Report each distinct problem once while it persists.
  std::map<std::tuple<int, std::string, std::string>, Problem> now;
  for (auto& p : problems) {
    auto key = std::make_tuple(static_cast<int>(p.kind), p.object.str(), p.message);
    now.emplace(key, p);
    if (reported_.contains(key)) continue;
    spdlog::warn("{} {}: {}", problemReason(p.kind), p.object.str(), p.message);
    if (sink_) sink_->report(p);
  }
  if (sink_)
    for (auto& [key, p] : reported_)
      if (!now.contains(key)) sink_->resolved(p);
  reported_ = std::move(now);
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::steady_clock::now() - start).count();
  if (changes)
    spdlog::info("reconciled {} services: {} kernel changes in {} us", model.services.size(),
                 changes, us);
  else
    spdlog::debug("reconciled {} services: no changes ({} us)", model.services.size(), us);
  return ok;
}

bool Daemon::writeLoadBalancerStatus(std::vector<Problem>& problems) {
  using clock = std::chrono::steady_clock;
  // A write the watch has not shown after this long is not trusted to be pending any more.
  constexpr auto kRecent = std::chrono::seconds(30);
  const VipPolicy policy = opts_.model.policy.value_or(VipPolicy{});
  const std::string& ann = opts_.model.annotation;
  const std::string& cls = opts_.model.loadBalancerClass;
  const auto now = clock::now();
  std::erase_if(lbWritten_, [&](const auto& w) { return now - w.second.second > kRecent; });
  auto plan = planLoadBalancerStatus(builder_.objects(), policy, ann, cls);
  auto recent = [&](const LoadBalancerStatusChange& c) {
    auto w = lbWritten_.find(c.service);
    return w != lbWritten_.end() && w->second.first == c.ingress;
  };
  std::erase_if(plan.changes, recent);
  if (!plan.changes.empty()) {
    // Something to write: plan again from the API server's current Services, so that nothing
    // this router or the previous Lease holder wrote is missed (the cache may lag behind both).
    auto fresh = lbStatus_->currentServices();
    if (!fresh) {
      spdlog::warn("LoadBalancer status: reading the Services: {}", fresh.error().message);
      return false;
    }
    ClusterObjects current;
    current.services = std::move(*fresh);
    plan = planLoadBalancerStatus(current, policy, ann, cls);
  }
  for (auto& [key, why] : plan.unallocated)
    problems.push_back({Problem::Kind::VipRefused, key, why + "; no address written"});
  bool ok = true;
  for (const auto& c : plan.changes) {
    if (!publisher_->isLeader()) break;  // lost the lease: the next holder writes
    std::string ips;
    for (const auto& ip : c.ingress) ips += (ips.empty() ? "" : ",") + ip.str();
    if (auto st = lbStatus_->write(c); !st) {
      spdlog::warn("LoadBalancer {}: writing status.loadBalancer.ingress [{}]: {}",
                   c.service.str(), ips, st.error().message);
      ok = false;
      continue;
    }
    lbWritten_.insert_or_assign(c.service, std::make_pair(c.ingress, clock::now()));
    if (c.ingress.empty())
      spdlog::info("LoadBalancer {}: status.loadBalancer cleared ({})", c.service.str(), c.reason);
    else
      spdlog::info("LoadBalancer {}: status.loadBalancer.ingress [{}] ipMode Proxy ({})",
                   c.service.str(), ips, c.reason);
  }
  return ok;
}

void Daemon::verifyAgent() {
  auto r = agent_->reconcile(builder_.model());
  if (!r) {
    spdlog::error("agent: verify failed: {}", r.error().message);
    return;
  }
  if (r->changes) spdlog::info("agent: verify repaired {} kernel objects", r->changes);
  std::set<std::string> failures(r->failures.begin(), r->failures.end());
  for (auto& f : failures)
    if (!verifyFailures_.contains(f)) spdlog::warn("agent: {}", f);
  verifyFailures_ = std::move(failures);
  if (gates_) gates_->update(agent_->gates());
}

int Daemon::run() {
  // The router keeps what it observed between passes and re-reads the kernel on resync and
  // after failures (router_reconciler.h, NOTE Performance).
  if (router_) router_->setCaching(true);
  if (metrics_) {
    if (router_) metrics_->enable(Reconciler::Router);
    if (announcer_) metrics_->enable(Reconciler::Announce);
    if (agent_) metrics_->enable(Reconciler::Agent);
  }
  auto st = source_.start([this](ObjectChanges c) { onChanges(std::move(c)); });
  if (!st) {
    spdlog::error("source {}: {}", source_.name(), st.error().message);
    return 1;
  }
  bool synced = false;  // the source delivered its complete set
  auto backoff = std::chrono::milliseconds(200);
  std::mt19937 rng(std::random_device{}());
  auto nextResync = std::chrono::steady_clock::now() + opts_.resyncInterval;
  bool retry = false;
  auto retryAt = std::chrono::steady_clock::time_point::max();
  bool verify = agent_ && opts_.agentVerifyInterval.count() > 0;
  auto nextVerify = std::chrono::steady_clock::time_point::max();
  int rc = 0;
  ObjectChanges changes;
  while (true) {
    bool woken = false;  // changes or a poke (not only a deadline)
    {
      std::unique_lock lk(mu_);
      auto deadline = std::min({nextResync, retry ? retryAt : nextResync, nextVerify});
      cv_.wait_until(lk, deadline, [&] { return stopping_ || pending_.has_value() || poked_; });
      if (stopping_) break;
      woken = poked_ || pending_.has_value();
      poked_ = false;
      if (pending_) {
        changes = std::move(*pending_);
        pending_.reset();
      }
    }
    auto now = std::chrono::steady_clock::now();
    if (!changes.empty()) {
      // Only the objects that changed are looked at (model.h ModelBuilder).
      try {
        auto vips = builder_.apply(std::move(changes));
        if (metrics_) metrics_->vipsChanged(builder_.model(), vips);
        routerChanged_.merge(vips);
        synced = true;
      } catch (const std::exception& e) {
        // Never expected (the sources deliver decoded values); if it happens the daemon keeps
        // its state and the next resync re-reads the kernel rather than ending.
        spdlog::error("model update failed: {}", e.what());
        if (router_) router_->resyncNextPass();
      }
      changes = {};
    }
    if (!synced) continue;  // resync before the first delivery
    if (!woken && now < nextResync && !(retry && now >= retryAt)) {
      // Only the verify deadline passed: the agent alone re-reads its pod namespaces.
      if (now >= nextVerify) {
        try {
          verifyAgent();
        } catch (const std::exception& e) {
          spdlog::error("agent verify failed: {}", e.what());
        }
        nextVerify = std::chrono::steady_clock::now() + opts_.agentVerifyInterval;
      }
      continue;
    }
    if (verify) nextVerify = now + opts_.agentVerifyInterval;
    if (now >= nextResync) {
      nextResync = now + opts_.resyncInterval;
      if (router_) router_->resyncNextPass();
      if (announcer_) announcer_->resyncNextPass();
    }
    bool ok = false;
    try {
      ok = pass(now);
    } catch (const std::exception& e) {  // a failed pass: retried with backoff, never fatal
      spdlog::error("reconcile pass failed: {}", e.what());
      if (metrics_ && running_) metrics_->failure(*running_, FailureReason::Exception);
      running_.reset();
      if (router_) router_->resyncNextPass();
    }
    lastOk_ = ok;
    ++passes_;
    if (ok && metrics_) metrics_->passSucceeded();
    if (opts_.once) {
      rc = ok ? 0 : 1;
      break;
    }
    if (ok) {
      retry = false;
      backoff = std::chrono::milliseconds(200);
    } else {
      retry = true;
      auto jitter = std::chrono::milliseconds(rng() % (backoff.count() / 2 + 1));
      retryAt = std::chrono::steady_clock::now() + backoff + jitter;
      spdlog::info("retrying in {} ms", (backoff + jitter).count());
      backoff = std::min(backoff * 2, opts_.maxBackoff);
    }
  }
  source_.stop();
  return rc;
}

}  // namespace kst
