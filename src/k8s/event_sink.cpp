#include "k8s/event_sink.h"

#include <algorithm>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace kst::k8s {

namespace {

bool aboutService(Problem::Kind k) {
  return k == Problem::Kind::InvalidAnnotation || k == Problem::Kind::VipConflict ||
         k == Problem::Kind::TooManyEndpoints || k == Problem::Kind::UnusableEndpoint ||
         k == Problem::Kind::VipRefused || k == Problem::Kind::DuplicatePodAddress;
}

std::string microTime(std::chrono::system_clock::time_point t) {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  std::time_t secs = us / 1000000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:06d}Z", tm, us % 1000000);
}

}  // namespace

nlohmann::json KubeEventSink::buildEvent(const Problem& p, const std::optional<std::string>& uid,
                                         const EventSinkOptions& o,
                                         std::chrono::system_clock::time_point t) {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  // client-go's naming: <object>.<hex timestamp>; names are at most 253 characters.
  std::string name = fmt::format("{}.{:x}", p.object.name.substr(0, 200), ns);
  nlohmann::json regarding = {{"apiVersion", "v1"},
                              {"kind", "Service"},
                              {"namespace", p.object.ns},
                              {"name", p.object.name}};
  if (uid && !uid->empty()) regarding["uid"] = *uid;
  std::string note = p.message.substr(0, 1024);  // the API limits note to 1 kB
  return {{"apiVersion", "events.k8s.io/v1"},
          {"kind", "Event"},
          {"metadata", {{"name", name}, {"namespace", p.object.ns}}},
          {"eventTime", microTime(t)},
          {"reportingController", o.reportingController},
          {"reportingInstance", o.reportingInstance.substr(0, 128)},
          {"action", "Tunnel"},
          {"reason", problemReason(p.kind)},
          {"type", "Warning"},
          {"regarding", regarding},
          {"note", note}};
}

std::string KubeEventSink::eventPath(const Problem& p) {
  return "/apis/events.k8s.io/v1/namespaces/" + urlEncode(p.object.ns) + "/events";
}

KubeEventSink::KubeEventSink(std::unique_ptr<HttpTransport> http, EventSinkOptions opts)
    : http_(std::move(http)), opts_(std::move(opts)), tokens_(opts_.burst),
      lastRefill_(std::chrono::steady_clock::now()) {
  thread_ = std::thread([this] { run(); });
}

KubeEventSink::~KubeEventSink() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    if (!queue_.empty())
      spdlog::warn("kubernetes: stopping with {} Event(s) not posted", queue_.size());
  }
  cv_.notify_all();
  http_->shutdown();
  if (thread_.joinable()) thread_.join();
}

KubeEventSink::Key KubeEventSink::keyOf(const Problem& p) {
  return std::make_tuple(int(p.kind), p.object.str(), p.message);
}

void KubeEventSink::report(const Problem& p) {
  if (!aboutService(p.kind)) return;
  std::lock_guard lk(mu_);
  auto key = keyOf(p);
  auto now = opts_.now();
  if (auto it = sent_.find(key); it != sent_.end() && now - it->second < opts_.dedupWindow) return;
  // Already waiting (possibly through an API outage longer than the window): one Event.
  if ((inFlight_ == key && !inFlightResolved_) ||
      std::any_of(queue_.begin(), queue_.end(), [&](const Item& i) { return keyOf(i.problem) == key; }))
    return;
  // Token bucket.
  auto t = std::chrono::steady_clock::now();
  tokens_ = std::min<double>(opts_.burst, tokens_ + double((t - lastRefill_).count()) /
                                                        double(std::chrono::duration_cast<std::chrono::steady_clock::duration>(opts_.refill).count()));
  lastRefill_ = t;
  if (tokens_ < 1) {
    ++dropped_;
    if (dropped_ == 1 || dropped_ % 100 == 0)
      spdlog::warn("kubernetes: Event rate limit reached; {} Event(s) not posted (the problems "
                   "are still logged)",
                   dropped_);
    return;
  }
  tokens_ -= 1;
  if (sent_.size() > 10000) sent_.clear();
  sent_[key] = now;
  // Full (the API server has been unreachable for a while): the newest problems are the likelier
  // to still matter, so the oldest Event goes.
  if (queue_.size() >= opts_.maxQueued && !queue_.empty()) {
    dropLocked(queue_.front(), "the queue is full");
    queue_.pop_front();
  }
  // Distinct stamps, so that two Events on one object in the same clock tick get distinct names.
  auto at = std::max(now, lastStamp_ + std::chrono::nanoseconds(1));
  lastStamp_ = at;
  queue_.push_back({p, at, 0});
  cv_.notify_all();
}

void KubeEventSink::resolved(const Problem& p) {
  if (!aboutService(p.kind)) return;
  std::lock_guard lk(mu_);
  auto key = keyOf(p);
  auto n = std::erase_if(queue_, [&](const Item& i) { return keyOf(i.problem) == key; });
  if (n) {
    // Not posted: should the problem come back, its Event is posted then.
    sent_.erase(key);
    spdlog::debug("kubernetes: {} on Service {} resolved before its Event was posted; not posting it",
                  problemReason(p.kind), p.object.str());
  }
  if (busy_ && inFlight_ == key) inFlightResolved_ = true;
  cv_.notify_all();
}

void KubeEventSink::dropLocked(const Item& item, const char* why) {
  ++dropped_;
  sent_.erase(keyOf(item.problem));
  spdlog::warn("kubernetes: dropping Event {} on Service {} ({}): {} Event(s) not posted so far",
               problemReason(item.problem.kind), item.problem.object.str(), why, dropped_);
}

bool KubeEventSink::flush(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return queue_.empty() && !busy_; });
}

int KubeEventSink::posted() const {
  std::lock_guard lk(mu_);
  return posted_;
}

int KubeEventSink::dropped() const {
  std::lock_guard lk(mu_);
  return dropped_;
}

size_t KubeEventSink::queued() const {
  std::lock_guard lk(mu_);
  return queue_.size() + (busy_ ? 1 : 0);
}

KubeEventSink::Outcome KubeEventSink::post(const Item& item) {
  const Problem& p = item.problem;
  auto uid = opts_.uidOf ? opts_.uidOf(p.object) : std::nullopt;
  HttpRequest req;
  req.method = "POST";
  req.path = eventPath(p);
  req.contentType = "application/json";
  // replace: a note cut at 1 kB may end inside a UTF-8 sequence (dump() would throw).
  req.body = buildEvent(p, uid, opts_, item.at)
                 .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  req.timeout = std::chrono::seconds(15);
  auto r = http_->perform(req);
  std::string why;
  Outcome out;
  if (!r) {
    why = r.error().message;
    out = Outcome::Retry;
  } else if (r->status == 201 || r->status == 200 || (r->status == 409 && item.attempts > 0)) {
    // 409 on a repeated attempt: the Event of that name exists, so an earlier attempt arrived.
    spdlog::info("kubernetes: Event {} posted on Service {}", problemReason(p.kind),
                 p.object.str());
    return Outcome::Posted;
  } else {
    why = fmt::format("HTTP {}: {}", r->status, statusMessage(r->body));
    out = r->status >= 500 || r->status == 429 ? Outcome::Retry : Outcome::Failed;
  }
  std::lock_guard lk(mu_);
  if (stopping_) return out;
  if (out == Outcome::Failed) {
    spdlog::warn("kubernetes: cannot post Event {} on Service {}: {}", problemReason(p.kind),
                 p.object.str(), why);
  } else if (backoff_.count() == 0) {
    // Once per outage; the retries are quiet until the API server answers again.
    spdlog::warn("kubernetes: cannot post Event {} on Service {}: {}; keeping it and {} other "
                 "queued Event(s) until the API server answers",
                 problemReason(p.kind), p.object.str(), why, queue_.size());
  } else {
    spdlog::debug("kubernetes: Event {} on Service {} still not posted: {}",
                  problemReason(p.kind), p.object.str(), why);
  }
  return out;
}

void KubeEventSink::run() {
  while (true) {
    Item item;
    {
      std::unique_lock lk(mu_);
      while (true) {
        if (stopping_) return;
        if (!queue_.empty() && std::chrono::steady_clock::now() >= retryAt_) break;
        if (queue_.empty()) cv_.wait(lk);
        else cv_.wait_until(lk, retryAt_);
      }
      item = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      inFlight_ = keyOf(item.problem);
      inFlightResolved_ = false;
    }
    Outcome out = Outcome::Failed;
    try {
      out = post(item);
    } catch (const std::exception& e) {  // this Event only; the others still go
      spdlog::error("kubernetes: Event {} on Service {} dropped: {}", problemReason(item.problem.kind),
                    item.problem.object.str(), e.what());
    }
    {
      std::lock_guard lk(mu_);
      busy_ = false;
      inFlight_.reset();
      if (out == Outcome::Retry && !stopping_) {
        // Unreachable or overloaded: keep the Event at the head and retry it alone until the
        // API server answers; everything behind it follows then.
        backoff_ = backoff_.count() == 0 ? opts_.retryInitial
                                         : std::min(backoff_ * 2, opts_.retryMax);
        retryAt_ = std::chrono::steady_clock::now() + backoff_;
        ++item.attempts;
        if (inFlightResolved_) {
          sent_.erase(keyOf(item.problem));
        } else if (queue_.size() >= opts_.maxQueued) {
          dropLocked(item, "the queue is full");
        } else {
          queue_.push_front(std::move(item));
        }
      } else {
        // The API server answered (an accepted Event, or a refusal that retrying will not
        // change): whatever is queued goes now.
        if (backoff_.count() != 0 && !queue_.empty())
          spdlog::info("kubernetes: the API server answers again; posting {} queued Event(s)",
                       queue_.size());
        backoff_ = std::chrono::milliseconds(0);
        retryAt_ = {};
        if (out == Outcome::Posted) {
          ++posted_;
        } else if (!stopping_) {
          ++dropped_;
          sent_.erase(keyOf(item.problem));
        }
      }
    }
    cv_.notify_all();
  }
}

}  // namespace kst::k8s
