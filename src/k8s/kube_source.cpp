#include "k8s/kube_source.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "source/decode.h"

namespace kst::k8s {

Result<ServiceObject> cacheService(const nlohmann::json& j, const KubeSourceOptions& o) {
  auto s = decodeService(j);
  if (!s) return s;
  // Only our annotations matter; others (e.g. last-applied-configuration) can be large.
  for (auto it = s->annotations.begin(); it != s->annotations.end();)
    it = o.keepAnnotations.contains(it->first) ? std::next(it) : s->annotations.erase(it);
  return s;
}

Result<std::optional<EndpointSliceObject>> cacheSlice(const nlohmann::json& j,
                                                      const KubeSourceOptions& o) {
  auto e = decodeEndpointSlice(j);
  if (!e) return std::unexpected(e.error());
  if (e->addressType != "IPv4" && e->addressType != "IPv6") return std::nullopt;
  if (o.agent && !o.router) {
    // The agent only configures its own node's pods.
    std::erase_if(e->endpoints, [&](const SliceEndpoint& se) {
      return !se.nodeName || *se.nodeName != o.nodeName;
    });
    if (e->endpoints.empty()) return std::nullopt;
  }
  return std::optional<EndpointSliceObject>(std::move(*e));
}

namespace {

Result<ObjectKey> keyOf(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("metadata") || !j["metadata"].is_object())
    return fail("object without metadata");
  const auto& m = j["metadata"];
  ObjectKey k;
  if (m.contains("namespace") && m["namespace"].is_string()) k.ns = m["namespace"];
  if (m.contains("name") && m["name"].is_string()) k.name = m["name"];
  if (k.name.empty()) return fail("object without metadata.name");
  if (k.ns.empty()) k.ns = "default";
  return k;
}

std::string rvOf(const nlohmann::json& j) {
  WatchEvent e{WatchEventType::Added, j};
  return e.resourceVersion();
}

}  // namespace

/** Decodes one resource kind into the source's cache. */
class KubeSource::Handler : public ListWatchHandler {
 public:
  Handler(KubeSource& src, bool services) : src_(src), services_(services) {}

  void beginList() override {
    stagingSvc_.clear();
    stagingSlices_.clear();
  }
  void listItem(const nlohmann::json& obj) override {
    auto key = keyOf(obj);
    if (!key) {
      spdlog::warn("kubernetes: {}: list item skipped: {}", kind(), key.error().message);
      return;
    }
    if (services_) {
      auto s = cacheService(obj, src_.opts_);
      if (!s) {
        badObject(*key, obj, s.error().message);
        std::lock_guard lk(src_.mu_);
        if (auto it = src_.services_.find(*key); it != src_.services_.end())
          stagingSvc_.insert(*it);
        return;
      }
      stagingSvc_[*key] = std::move(*s);
    } else {
      auto e = cacheSlice(obj, src_.opts_);
      if (!e) {
        badObject(*key, obj, e.error().message);
        std::lock_guard lk(src_.mu_);
        if (auto it = src_.slices_.find(*key); it != src_.slices_.end())
          stagingSlices_.insert(*it);
        return;
      }
      if (*e) stagingSlices_[*key] = std::move(**e);
    }
  }
  void endList(const std::string& rv) override {
    bool changed;
    size_t n;
    {
      std::lock_guard lk(src_.mu_);
      if (services_) {
        changed = src_.services_ != stagingSvc_;
        src_.services_.swap(stagingSvc_);
        n = src_.services_.size();
      } else {
        changed = src_.slices_ != stagingSlices_;
        src_.slices_.swap(stagingSlices_);
        n = src_.slices_.size();
      }
      listed_ = true;
    }
    stagingSvc_.clear();
    stagingSlices_.clear();
    ++lists_;
    if (lists_ > 1)
      spdlog::info("kubernetes: {}: relist at resourceVersion {}: {} cached, {}", kind(), rv, n,
                   changed ? "changes found" : "nothing changed");
    if (changed || lists_ == 1) src_.markDirty();
  }
  void abortList() override {
    stagingSvc_.clear();
    stagingSlices_.clear();
  }
  void event(WatchEventType type, const nlohmann::json& obj) override {
    auto key = keyOf(obj);
    if (!key) {
      spdlog::warn("kubernetes: {}: {} event skipped: {}", kind(), watchEventTypeName(type),
                   key.error().message);
      return;
    }
    bool changed = false;
    if (type == WatchEventType::Deleted) {
      std::lock_guard lk(src_.mu_);
      changed = services_ ? src_.services_.erase(*key) > 0 : src_.slices_.erase(*key) > 0;
    } else if (services_) {
      auto s = cacheService(obj, src_.opts_);
      if (!s) return badObject(*key, obj, s.error().message);
      std::lock_guard lk(src_.mu_);
      auto& slot = src_.services_[*key];
      changed = !(slot == *s);
      slot = std::move(*s);
    } else {
      auto e = cacheSlice(obj, src_.opts_);
      if (!e) return badObject(*key, obj, e.error().message);
      std::lock_guard lk(src_.mu_);
      if (!*e) {
        changed = src_.slices_.erase(*key) > 0;
      } else {
        auto& slot = src_.slices_[*key];
        changed = !(slot == **e);
        slot = std::move(**e);
      }
    }
    spdlog::debug("kubernetes: {} {} {}{}", watchEventTypeName(type), kind(), key->str(),
                  changed ? "" : " (no change)");
    if (changed) src_.markDirty();
  }
  /** Caller holds the source's mutex. */
  bool listedUnlocked() const { return listed_; }

 private:
  const char* kind() const { return services_ ? "Service" : "EndpointSlice"; }
  void badObject(const ObjectKey& key, const nlohmann::json& obj, const std::string& why) {
    // Once per object version: a broken object must neither crash nor flood the log.
    auto id = key.str() + "@" + rvOf(obj);
    if (reported_.insert(id).second) {
      if (reported_.size() > 10000) reported_.clear();
      spdlog::error("kubernetes: cannot decode {} {}: {}; keeping its last good version", kind(),
                    key.str(), why);
    }
  }
  KubeSource& src_;
  bool services_;
  bool listed_ = false;
  int lists_ = 0;
  std::map<ObjectKey, ServiceObject> stagingSvc_;
  std::map<ObjectKey, EndpointSliceObject> stagingSlices_;
  std::set<std::string> reported_;
};

KubeSource::KubeSource(TransportFactory makeTransport, KubeSourceOptions opts)
    : make_(std::move(makeTransport)), opts_(std::move(opts)) {
  name_ = "kubernetes";
}

KubeSource::~KubeSource() { stop(); }

void KubeSource::markDirty() {
  std::lock_guard lk(mu_);
  dirty_ = true;
  cv_.notify_all();
}

std::optional<std::string> KubeSource::serviceUid(const ObjectKey& key) const {
  std::lock_guard lk(mu_);
  auto it = services_.find(key);
  if (it == services_.end()) return std::nullopt;
  return it->second.uid;
}

ClusterObjects KubeSource::current() const {
  std::lock_guard lk(mu_);
  return ClusterObjects{services_, slices_};
}

ListWatch::Stats KubeSource::stats(const std::string& resource) const {
  if (resource == "services" && svcWatch_) return svcWatch_->stats();
  if (resource == "endpointslices" && sliceWatch_) return sliceWatch_->stats();
  return {};
}

Status KubeSource::start(Callback cb) {
  cb_ = std::move(cb);
  for (int i = 0; i < 3; ++i) {
    auto t = make_();
    if (!t) return std::unexpected(t.error().wrap("kubernetes client"));
    transports_.push_back(std::move(*t));
  }
  name_ = "kubernetes:" + transports_[0]->server();
  svcHandler_ = std::make_unique<Handler>(*this, true);
  sliceHandler_ = std::make_unique<Handler>(*this, false);
  svcWatch_ = std::make_unique<ListWatch>(ResourceSpec{"services", "/api/v1/services", "", ""},
                                          *transports_[0], *svcHandler_, opts_.listWatch,
                                          opts_.sleeper);
  sliceWatch_ = std::make_unique<ListWatch>(
      ResourceSpec{"endpointslices", "/apis/discovery.k8s.io/v1/endpointslices", "", ""},
      *transports_[1], *sliceHandler_, opts_.listWatch, opts_.sleeper);
  spdlog::info("kubernetes: watching Services and EndpointSlices at {} ({}){}",
               transports_[0]->server(), opts_.router ? "all endpoints" : "this node's endpoints",
               opts_.agent && !opts_.router ? " for node " + opts_.nodeName : "");
  threads_.emplace_back([this] { svcWatch_->run(); });
  threads_.emplace_back([this] { sliceWatch_->run(); });
  threads_.emplace_back([this] { publisher(); });
  if (opts_.checkNode && opts_.agent && !opts_.nodeName.empty())
    threads_.emplace_back([this] { checkNode(); });
  return {};
}

void KubeSource::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  if (svcWatch_) svcWatch_->stop();
  if (sliceWatch_) sliceWatch_->stop();
  if (transports_.size() > 2) transports_[2]->shutdown();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

void KubeSource::checkNode() {
  HttpRequest req;
  req.path = "/api/v1/nodes/" + urlEncode(opts_.nodeName);
  req.timeout = std::chrono::seconds(15);
  auto r = transports_[2]->perform(req);
  if (!r) {
    spdlog::debug("kubernetes: Node check skipped: {}", r.error().message);
    return;
  }
  if (r->status == 200)
    spdlog::info("kubernetes: Node {} found", opts_.nodeName);
  else if (r->status == 404)
    spdlog::error("kubernetes: there is no Node named {:?}: --node-name must be this node's "
                  "Kubernetes name (spec.nodeName of its pods), or no endpoint will be found "
                  "local",
                  opts_.nodeName);
  else
    spdlog::warn("kubernetes: cannot read Node {}: HTTP {}: {}", opts_.nodeName, r->status,
                 statusMessage(r->body));
}

void KubeSource::publisher() {
  while (true) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] {
        return stopping_ || (dirty_ && svcHandler_->listedUnlocked() && sliceHandler_->listedUnlocked());
      });
      if (stopping_) return;
      // Coalesce: changes arriving during the window go into the same snapshot.
      if (synced_ && opts_.coalesce.count() > 0)
        cv_.wait_for(lk, opts_.coalesce, [&] { return stopping_; });
      if (stopping_) return;
      dirty_ = false;
    }
    ClusterObjects snap = current();
    if (last_ && *last_ == snap) {
      spdlog::debug("kubernetes: snapshot unchanged; not republished");
      continue;
    }
    size_t eps = 0;
    for (auto& [k, s] : snap.slices) eps += s.endpoints.size();
    spdlog::debug("kubernetes: publishing snapshot: {} services, {} slices, {} endpoints",
                  snap.services.size(), snap.slices.size(), eps);
    if (!synced_)
      spdlog::info("kubernetes: synced: {} services, {} slices, {} endpoints cached",
                   snap.services.size(), snap.slices.size(), eps);
    cb_(snap);
    last_ = std::move(snap);
    ++published_;
    synced_ = true;
  }
}

}  // namespace kst::k8s
