#include "k8s/event_sink.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace kst::k8s {

namespace {

bool aboutService(Problem::Kind k) {
  return k == Problem::Kind::InvalidAnnotation || k == Problem::Kind::VipConflict ||
         k == Problem::Kind::TooManyEndpoints || k == Problem::Kind::UnusableEndpoint;
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
  }
  cv_.notify_all();
  http_->shutdown();
  if (thread_.joinable()) thread_.join();
}

void KubeEventSink::report(const Problem& p) {
  if (!aboutService(p.kind)) return;
  std::lock_guard lk(mu_);
  auto key = std::make_tuple(int(p.kind), p.object.str(), p.message);
  auto now = opts_.now();
  if (auto it = sent_.find(key); it != sent_.end() && now - it->second < opts_.dedupWindow) return;
  // Token bucket.
  auto t = std::chrono::steady_clock::now();
  tokens_ = std::min<double>(opts_.burst, tokens_ + double((t - lastRefill_).count()) /
                                                        double(std::chrono::duration_cast<std::chrono::steady_clock::duration>(opts_.refill).count()));
  lastRefill_ = t;
  if (tokens_ < 1 || queue_.size() >= 100) {
    ++dropped_;
    if (dropped_ == 1 || dropped_ % 100 == 0)
      spdlog::warn("kubernetes: Event rate limit reached; {} Event(s) not posted (the problems "
                   "are still logged)",
                   dropped_);
    return;
  }
  tokens_ -= 1;
  sent_[key] = now;
  if (sent_.size() > 10000) sent_.clear();
  queue_.push_back(p);
  cv_.notify_all();
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

bool KubeEventSink::post(const Problem& p) {
  for (size_t attempt = 0;; ++attempt) {
    auto uid = opts_.uidOf ? opts_.uidOf(p.object) : std::nullopt;
    HttpRequest req;
    req.method = "POST";
    req.path = eventPath(p);
    req.contentType = "application/json";
    req.body = buildEvent(p, uid, opts_, opts_.now()).dump();
    req.timeout = std::chrono::seconds(15);
    auto r = http_->perform(req);
    std::string why;
    bool retry = false;
    if (!r) {
      why = r.error().message;
      retry = true;
    } else if (r->status == 201 || r->status == 200) {
      spdlog::info("kubernetes: Event {} posted on Service {}", problemReason(p.kind),
                   p.object.str());
      return true;
    } else {
      why = fmt::format("HTTP {}: {}", r->status, statusMessage(r->body));
      retry = r->status >= 500 || r->status == 429;
    }
    {
      std::lock_guard lk(mu_);
      if (stopping_) return false;
    }
    if (!retry || attempt >= opts_.retries.size()) {
      spdlog::warn("kubernetes: cannot post Event {} on Service {}: {}", problemReason(p.kind),
                   p.object.str(), why);
      return false;
    }
    std::unique_lock lk(mu_);
    if (cv_.wait_for(lk, opts_.retries[attempt], [&] { return stopping_; })) return false;
  }
}

void KubeEventSink::run() {
  while (true) {
    Problem p;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      p = queue_.front();
      queue_.pop_front();
      busy_ = true;
    }
    bool ok = post(p);
    {
      std::lock_guard lk(mu_);
      busy_ = false;
      if (ok) ++posted_;
      else ++dropped_;
    }
    cv_.notify_all();
  }
}

}  // namespace kst::k8s
