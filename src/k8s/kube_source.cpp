#include "k8s/kube_source.h"

#include <type_traits>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/guard.h"
#include "desired/published.h"
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

Result<PublishedTableObject> cacheTable(const nlohmann::json& j) {
  auto t = decodeTableConfigMap(j);
  if (!t) return t;
  const auto& name = j["metadata"]["name"];  // decodeTableConfigMap checked it is a string
  if (name.get<std::string>() != publishedConfigMapName(t->service.ns, t->service.name))
    return fail(fmt::format("ConfigMap {} is not the one named for Service {}",
                            name.get<std::string>(), t->service.str()));
  return t;
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

template <typename T>
using Pending = std::map<ObjectKey, std::optional<T>>;

/** Records key's new version in pending and, the first time since the last delivery, the
 *  version that was delivered (base), so that a change undone before the next delivery (an
 *  object added then deleted) is not delivered at all (KubeSource::publisher). */
template <typename T>
void record(const ObjectKey& key, const T* delivered, std::type_identity_t<std::optional<T>> now,
            Pending<T>& pending,
            Pending<T>& base) {
  if (!pending.contains(key))
    base.insert_or_assign(key, delivered ? std::optional<T>(*delivered) : std::nullopt);
  pending.insert_or_assign(key, std::move(now));
}

/** cache[key] = v (nullopt: erase); a real change is also recorded. */
template <typename T>
bool put(std::map<ObjectKey, T>& cache, const ObjectKey& key,
         std::type_identity_t<std::optional<T>> v, Pending<T>& pending, Pending<T>& base) {
  auto it = cache.find(key);
  if (it == cache.end() ? !v : v && it->second == *v) return false;
  record(key, it == cache.end() ? nullptr : &it->second, v, pending, base);
  if (v) cache.insert_or_assign(key, std::move(*v));
  else cache.erase(it);
  return true;
}

/** Records every object that differs between the cache and a relist's result. */
template <typename T>
bool diffInto(const std::map<ObjectKey, T>& cache, const std::map<ObjectKey, T>& listed,
              Pending<T>& pending, Pending<T>& base) {
  bool changed = false;
  auto a = cache.begin(), b = listed.begin();
  while (a != cache.end() || b != listed.end()) {
    if (b == listed.end() || (a != cache.end() && a->first < b->first)) {
      record(a->first, &a->second, std::nullopt, pending, base);
      ++a;
      changed = true;
    } else if (a == cache.end() || b->first < a->first) {
      record<T>(b->first, nullptr, b->second, pending, base);
      ++b;
      changed = true;
    } else {
      if (!(a->second == b->second)) {
        record(b->first, &a->second, b->second, pending, base);
        changed = true;
      }
      ++a;
      ++b;
    }
  }
  return changed;
}

/** pending without the entries equal to what was delivered. */
template <typename T>
void dropUndone(Pending<T>& pending, const Pending<T>& base) {
  std::erase_if(pending, [&](const auto& e) {
    auto b = base.find(e.first);
    return b != base.end() && b->second == e.second;
  });
}

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
      // What the relist found different from the cache becomes changes (none: nothing to do).
      if (services_) {
        changed =
            diffInto(src_.services_, stagingSvc_, src_.pending_.services, src_.base_.services);
        src_.services_.swap(stagingSvc_);
        n = src_.services_.size();
      } else {
        changed = diffInto(src_.slices_, stagingSlices_, src_.pending_.slices, src_.base_.slices);
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
      changed = services_ ? put(src_.services_, *key, std::nullopt, src_.pending_.services,
                                src_.base_.services)
                          : put(src_.slices_, *key, std::nullopt, src_.pending_.slices,
                                src_.base_.slices);
    } else if (services_) {
      auto s = cacheService(obj, src_.opts_);
      if (!s) return badObject(*key, obj, s.error().message);
      std::lock_guard lk(src_.mu_);
      changed =
          put(src_.services_, *key, std::move(*s), src_.pending_.services, src_.base_.services);
    } else {
      auto e = cacheSlice(obj, src_.opts_);
      if (!e) return badObject(*key, obj, e.error().message);
      std::lock_guard lk(src_.mu_);
      changed = put(src_.slices_, *key, std::move(*e), src_.pending_.slices, src_.base_.slices);
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

/** The bucket table ConfigMaps of the daemon's namespace, joined to Services by the model
 *  (model.h): the cache is keyed by the Service each one names. */
class KubeSource::TableHandler : public ListWatchHandler {
 public:
  explicit TableHandler(KubeSource& src) : src_(src) {}
  void beginList() override {
    staging_.clear();
    stagingNames_.clear();
  }
  void listItem(const nlohmann::json& obj) override {
    auto name = nameOf(obj);
    if (name.empty()) return;
    auto t = decoded(name, obj);
    stagingNames_[name] = {rvOf(obj), t};
    if (t) staging_.insert_or_assign(t->service, std::move(*t));
  }
  void endList(const std::string&) override {
    bool changed;
    {
      std::lock_guard lk(src_.mu_);
      changed = diffInto(src_.tables_, staging_, src_.pending_.tables, src_.base_.tables);
      src_.tables_.swap(staging_);
      src_.tableConfigMaps_.swap(stagingNames_);
      listed_ = true;
    }
    staging_.clear();
    stagingNames_.clear();
    if (changed || ++lists_ == 1) src_.markDirty();
  }
  void abortList() override {
    staging_.clear();
    stagingNames_.clear();
  }
  void event(WatchEventType type, const nlohmann::json& obj) override {
    auto name = nameOf(obj);
    if (name.empty()) return;
    bool changed = false;
    {
      std::lock_guard lk(src_.mu_);
      auto& known = src_.tableConfigMaps_;
      // What this ConfigMap gave before goes, what it gives now comes.
      if (auto it = known.find(name); it != known.end()) {
        if (it->second.table)
          changed |= put(src_.tables_, it->second.table->service, std::nullopt,
                         src_.pending_.tables, src_.base_.tables);
        known.erase(it);
      }
      if (type != WatchEventType::Deleted) {
        auto t = decoded(name, obj);
        known[name] = {rvOf(obj), t};
        if (t) {
          ObjectKey svc = t->service;
          changed |= put(src_.tables_, svc, std::move(*t), src_.pending_.tables, src_.base_.tables);
        }
      }
    }
    if (changed) src_.markDirty();
  }
  /** Caller holds the source's mutex. */
  bool listedUnlocked() const { return listed_; }

 private:
  static std::string nameOf(const nlohmann::json& obj) {
    auto key = keyOf(obj);
    return key ? key->name : std::string();
  }
  std::optional<PublishedTableObject> decoded(const std::string& name, const nlohmann::json& obj) {
    auto t = cacheTable(obj);
    if (!t) {
      if (reported_.insert(name + "@" + rvOf(obj)).second) {
        if (reported_.size() > 10000) reported_.clear();
        spdlog::warn("kubernetes: bucket table {}: {}; ignored (the elected router deletes it)",
                     name, t.error().message);
      }
      return std::nullopt;
    }
    return std::move(*t);
  }
  KubeSource& src_;
  bool listed_ = false;
  int lists_ = 0;
  std::map<ObjectKey, PublishedTableObject> staging_;
  std::map<std::string, TableConfigMap> stagingNames_;
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
  return ClusterObjects{services_, slices_, tables_};
}

ListWatch::Stats KubeSource::stats(const std::string& resource) const {
  if (resource == "services" && svcWatch_) return svcWatch_->stats();
  if (resource == "endpointslices" && sliceWatch_) return sliceWatch_->stats();
  if (resource == "configmaps" && tableWatch_) return tableWatch_->stats();
  return {};
}

std::vector<StaleTable> KubeSource::staleTables() const {
  std::vector<StaleTable> out;
  if (!synced_) return out;
  std::lock_guard lk(mu_);
  for (const auto& [name, cm] : tableConfigMaps_) {
    const auto& t = cm.table;
    auto svc = t ? services_.find(t->service) : services_.end();
    if (!t || svc == services_.end() || (!t->uid.empty() && t->uid != svc->second.uid))
      out.push_back({name, cm.resourceVersion});
  }
  return out;
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
  if (!opts_.tablesNamespace.empty()) {
    auto t = make_();
    if (!t) return std::unexpected(t.error().wrap("kubernetes client"));
    transports_.push_back(std::move(*t));
    tableHandler_ = std::make_unique<TableHandler>(*this);
    tableWatch_ = std::make_unique<ListWatch>(
        ResourceSpec{"configmaps",
                     fmt::format("/api/v1/namespaces/{}/configmaps", urlEncode(opts_.tablesNamespace)),
                     fmt::format("{}={}", kManagedByLabel, kManagedByValue), ""},
        *transports_.back(), *tableHandler_, opts_.listWatch, opts_.sleeper);
    spdlog::info("kubernetes: watching bucket table ConfigMaps in namespace {}",
                 opts_.tablesNamespace);
    threads_.emplace_back([this] { tableWatch_->run(); });
  }
  threads_.emplace_back([this] { svcWatch_->run(); });
  threads_.emplace_back([this] { sliceWatch_->run(); });
  auto stopping = [this] {
    std::lock_guard lk(mu_);
    return stopping_;
  };
  threads_.emplace_back([this, stopping] {
    keepRunning("kubernetes: delivery", [this] { publisher(); }, stopping);
  });
  if (opts_.checkNode && opts_.agent && !opts_.nodeName.empty())
    threads_.emplace_back([this, stopping] {
      keepRunning("kubernetes: Node check", [this] { checkNode(); }, stopping);
    });
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
  if (tableWatch_) tableWatch_->stop();
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
    ObjectChanges out;
    bool first;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] {
        return stopping_ || (dirty_ && svcHandler_->listedUnlocked() && sliceHandler_->listedUnlocked() &&
                             (!tableHandler_ || tableHandler_->listedUnlocked()));
      });
      if (stopping_) return;
      // Optional window: changes arriving during it go into the same delivery. Without one
      // (the default) the daemon still folds whatever arrives while it is busy into one pass.
      if (synced_ && opts_.coalesce.count() > 0)
        cv_.wait_for(lk, opts_.coalesce, [&] { return stopping_; });
      if (stopping_) return;
      dirty_ = false;
      first = !synced_;
      if (first) {
        out = ObjectChanges::all(ClusterObjects{services_, slices_, tables_});
      } else {
        dropUndone(pending_.services, base_.services);
        dropUndone(pending_.slices, base_.slices);
        dropUndone(pending_.tables, base_.tables);
        out = std::move(pending_);
      }
      pending_ = {};
      base_ = {};
    }
    if (out.empty()) {
      spdlog::debug("kubernetes: nothing changed; nothing delivered");
      continue;
    }
    if (first) {
      size_t eps = 0;
      for (auto& [k, s] : out.slices) eps += s ? s->endpoints.size() : 0;
      spdlog::info("kubernetes: synced: {} services, {} slices, {} endpoints cached",
                   out.services.size(), out.slices.size(), eps);
    } else {
      spdlog::debug("kubernetes: delivering {} changed objects", out.size());
    }
    cb_(std::move(out));
    ++published_;
    synced_ = true;
  }
}

}  // namespace kst::k8s
