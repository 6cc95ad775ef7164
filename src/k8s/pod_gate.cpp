#include "k8s/pod_gate.h"

#include <algorithm>
#include <ctime>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace kst::k8s {

namespace {

std::string timeString(std::chrono::system_clock::time_point t) {
  auto secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

/** "ns/name" → the pod's status path; nullopt when it is not of that shape. */
std::optional<std::string> statusPath(const std::string& pod) {
  auto slash = pod.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == pod.size() ||
      pod.find('/', slash + 1) != std::string::npos || pod.size() > 400)
    return std::nullopt;
  return fmt::format("/api/v1/namespaces/{}/pods/{}/status", urlEncode(pod.substr(0, slash)),
                     urlEncode(pod.substr(slash + 1)));
}

const nlohmann::json* field(const nlohmann::json& j, const char* name) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(name);
  return it == j.end() ? nullptr : &*it;
}

std::string stringField(const nlohmann::json& j, const char* name) {
  const auto* f = field(j, name);
  return f && f->is_string() ? f->get<std::string>() : std::string();
}

/** A retryable outcome (the API server may answer later), as opposed to a final one. */
bool retryable(int status) { return status == 429 || status / 100 == 5; }

}  // namespace

Result<PodGateView> readPodGate(const nlohmann::json& pod, const std::string& conditionType) {
  if (!pod.is_object()) return fail("pod: not an object");
  PodGateView v;
  if (const auto* m = field(pod, "metadata")) v.uid = stringField(*m, "uid");
  if (v.uid.empty()) return fail("pod: no metadata.uid");
  if (const auto* spec = field(pod, "spec")) {
    v.nodeName = stringField(*spec, "nodeName");
    if (const auto* gates = field(*spec, "readinessGates"); gates && gates->is_array())
      for (const auto& g : *gates)
        if (stringField(g, "conditionType") == conditionType) v.gated = true;
  }
  if (const auto* st = field(pod, "status")) {
    auto addIp = [&](const std::string& s) {
      if (auto ip = IpAddress::parse(s);
          ip && std::find(v.ips.begin(), v.ips.end(), *ip) == v.ips.end())
        v.ips.push_back(*ip);
    };
    addIp(stringField(*st, "podIP"));
    if (const auto* ips = field(*st, "podIPs"); ips && ips->is_array())
      for (const auto& i : *ips) addIp(stringField(i, "ip"));
  }
  if (const auto* st = field(pod, "status"))
    if (const auto* conds = field(*st, "conditions"); conds && conds->is_array())
      for (const auto& c : *conds) {
        if (stringField(c, "type") != conditionType) continue;
        std::string s = stringField(c, "status");
        if (s == "True") v.status = true;
        else if (s == "False") v.status = false;
      }
  return v;
}

std::string podGatePatch(const std::string& conditionType, const PodGate& gate,
                         std::chrono::system_clock::time_point now) {
  nlohmann::json cond = {
      {"type", conditionType},
      {"status", gate.ready ? "True" : "False"},
      {"reason", gate.ready ? "VipInPlace" : "VipNotInPlace"},
      {"message", gate.message.substr(0, 1024)},
      {"lastTransitionTime", timeString(now)},
      {"lastProbeTime", nullptr},
  };
  nlohmann::json patch = {{"status", {{"conditions", nlohmann::json::array({cond})}}}};
  if (!gate.uid.empty()) patch["metadata"] = {{"uid", gate.uid}};
  return patch.dump();
}

PodGateWriter::PodGateWriter(TransportFactory makeTransport, PodGateOptions opts)
    : make_(std::move(makeTransport)), opts_(std::move(opts)) {}

PodGateWriter::~PodGateWriter() { stop(); }

void PodGateWriter::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { loop(); });
}

void PodGateWriter::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PodGateWriter::update(const std::vector<PodGate>& gates) {
  std::map<std::string, PodGate> want;
  for (const auto& g : gates) want.emplace(g.pod, g);
  std::lock_guard lk(mu_);
  if (want == want_) return;
  want_ = std::move(want);
  dirty_ = true;
  cv_.notify_all();
}

int PodGateWriter::writes() const {
  std::lock_guard lk(mu_);
  return writes_;
}

int PodGateWriter::reads() const {
  std::lock_guard lk(mu_);
  return reads_;
}

Result<PodGateView> PodGateWriter::read(const std::string& pod) {
  auto path = statusPath(pod);
  if (!path) return fail(EINVAL, "not a pod reference: " + pod);
  if (!http_) {
    auto t = make_();
    if (!t) return std::unexpected(t.error());
    http_ = std::move(*t);
  }
  // Dry run: the answer is the pod as it is; nothing is written.
  auto r = http_->perform({"PATCH", *path + "?dryRun=All", "{}",
                           "application/strategic-merge-patch+json", std::chrono::seconds(10),
                           size_t(4) << 20});
  if (!r) return std::unexpected(r.error());
  {
    std::lock_guard lk(mu_);
    ++reads_;
  }
  if (r->status == 404) return fail(ENOENT, "pod " + pod + " is gone");
  if (r->status / 100 != 2)
    return fail(retryable(r->status) ? EAGAIN : EPERM,
                fmt::format("read pod {}: HTTP {}: {}", pod, r->status, statusMessage(r->body)));
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (j.is_discarded()) return fail(EAGAIN, "read pod " + pod + ": answer is not JSON");
  return readPodGate(j, opts_.conditionType);
}

Status PodGateWriter::write(const std::string& pod, const PodGate& gate, const std::string& uid) {
  auto path = statusPath(pod);
  if (!path) return fail(EINVAL, "not a pod reference: " + pod);
  PodGate g = gate;
  g.uid = uid;  // the pod that was read (the slice's uid, when it gave one, is the same)
  auto r = http_->perform({"PATCH", *path, podGatePatch(opts_.conditionType, g, opts_.now()),
                           "application/strategic-merge-patch+json", std::chrono::seconds(10),
                           size_t(4) << 20});
  if (!r) return std::unexpected(r.error());
  if (r->status == 404) return fail(ENOENT, "pod " + pod + " is gone");
  if (r->status / 100 != 2)
    return fail(retryable(r->status) ? EAGAIN : EPERM,
                fmt::format("patch pod {} status: HTTP {}: {}", pod, r->status,
                            statusMessage(r->body)));
  std::lock_guard lk(mu_);
  ++writes_;
  return {};
}

bool PodGateWriter::syncOnce() {
  std::map<std::string, PodGate> want;
  {
    std::lock_guard lk(mu_);
    want = want_;
    dirty_ = false;
  }
  std::erase_if(known_, [&](const auto& e) { return !want.contains(e.first); });
  bool done = true;
  auto now = opts_.now();
  for (const auto& [pod, gate] : want) {
    auto it = known_.find(pod);
    bool stale = it == known_.end() || now - it->second.readAt >= opts_.reread ||
                 (!gate.uid.empty() && gate.uid != it->second.uid);
    if (stale) {
      auto v = read(pod);
      if (!v) {
        if (v.error().code == ENOENT) {
          known_.erase(pod);  // gone: nothing to write (a new pod is another update)
          continue;
        }
        spdlog::warn("VIP readiness of pod {}: {}", pod, v.error().message);
        if (v.error().code != EPERM && v.error().code != EINVAL) {
          known_.erase(pod);
          done = false;  // transport error, 5xx, 429: the API server may answer later
        } else {
          // Refused (e.g. 403: the agent's role lacks pods/status patch) or not a pod
          // reference: asked again only after opts_.reread, not every second.
          Known k;
          k.foreign = true;
          k.readAt = now;
          k.uid = gate.uid;
          known_.insert_or_assign(pod, k);
        }
        continue;
      }
      Known k;
      k.uid = v->uid;
      k.gated = v->gated;
      k.status = v->status;
      k.readAt = now;
      bool holds = gate.addresses.empty() ||
                   std::any_of(gate.addresses.begin(), gate.addresses.end(), [&](auto& a) {
                     return std::find(v->ips.begin(), v->ips.end(), a) != v->ips.end();
                   });
      k.foreign = (!gate.uid.empty() && gate.uid != v->uid) ||
                  (!opts_.nodeName.empty() && v->nodeName != opts_.nodeName) || !holds;
      if (k.foreign)
        spdlog::warn("VIP readiness of pod {}: not written (uid {} on node {}{}; expected uid {} "
                     "on node {})",
                     pod, v->uid, v->nodeName, holds ? "" : ", without the endpoint's address",
                     gate.uid.empty() ? "any" : gate.uid, opts_.nodeName);
      it = known_.insert_or_assign(pod, k).first;
    }
    Known& k = it->second;
    if (!k.gated || k.foreign || k.status == gate.ready) continue;
    if (auto s = write(pod, gate, k.uid); !s) {
      spdlog::warn("VIP readiness of pod {}: {}", pod, s.error().message);
      known_.erase(pod);  // read again before the next attempt
      if (s.error().code != ENOENT) done = false;
      continue;
    }
    spdlog::info("pod {}: condition {} {} ({})", pod, opts_.conditionType,
                 gate.ready ? "True" : "False", gate.message);
    k.status = gate.ready;
  }
  return done;
}

void PodGateWriter::loop() {
  auto nextReread = std::chrono::steady_clock::now() + opts_.reread;
  bool retry = false;
  while (true) {
    {
      std::unique_lock lk(mu_);
      auto deadline = retry ? std::chrono::steady_clock::now() + opts_.retry : nextReread;
      cv_.wait_until(lk, deadline, [&] { return stopping_ || dirty_; });
      if (stopping_) return;
    }
    if (std::chrono::steady_clock::now() >= nextReread)
      nextReread = std::chrono::steady_clock::now() + opts_.reread;
    try {
      retry = !syncOnce();
    } catch (const std::exception& e) {  // never expected: the answers are checked
      spdlog::error("VIP readiness writer: {}", e.what());
      retry = true;
    }
  }
}

}  // namespace kst::k8s
