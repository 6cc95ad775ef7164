#include "source/manifest_source.h"

#include <dirent.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include "source/decode.h"

namespace kst {

Result<ClusterObjects> parseManifestText(const std::string& text, const std::string& fileName) {
  ClusterObjects objs;
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(text);  // JSON is YAML too
  } catch (const YAML::Exception& e) {
    return fail(EINVAL, fmt::format("{}: YAML error at line {}: {}", fileName, e.mark.line + 1,
                                    e.msg));
  }
  for (size_t i = 0; i < docs.size(); ++i) {
    if (!docs[i] || docs[i].IsNull()) continue;
    nlohmann::json j;
    try {
      j = yamlToJson(docs[i]);
    } catch (const YAML::Exception& e) {
      return fail(EINVAL, fmt::format("{} document {}: {}", fileName, i + 1, e.msg));
    }
    if (auto s = addObject(j, objs); !s)
      return fail(EINVAL, fmt::format("{} document {}: {}", fileName, i + 1, s.error().message));
  }
  return objs;
}

ManifestSource::ManifestSource(std::string dir) : dir_(std::move(dir)) {}

ManifestSource::~ManifestSource() { stop(); }

namespace {

bool isManifestName(const std::string& n) {
  return !n.starts_with(".") && (n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".json"));
}

/** The defining file that wins for a key (the last in name order, as `kubectl apply -f dir`
 *  would leave it); warns when there are several. */
template <typename T>
const T* winner(const ObjectKey& k, const std::set<std::string>& files,
                const std::map<std::string, ClusterObjects>& content,
                std::map<ObjectKey, T> ClusterObjects::*member, const char* kind) {
  if (files.empty()) return nullptr;
  if (files.size() > 1)
    spdlog::warn("manifests: {} {} defined in {} files; {} wins", kind, k.str(), files.size(),
                 *files.rbegin());
  return &(content.at(*files.rbegin()).*member).at(k);
}

}  // namespace

ObjectChanges ManifestSource::refresh(const std::set<std::string>* only) {
  std::set<std::string> names;
  if (only) {
    for (auto& n : *only)
      if (isManifestName(n)) names.insert(n);
  } else {
    if (DIR* d = opendir(dir_.c_str())) {
      while (auto* e = readdir(d))
        if (isManifestName(e->d_name)) names.insert(e->d_name);
      closedir(d);
    } else {
      spdlog::error("manifests: cannot read directory {}", dir_);
    }
    for (auto& [f, objs] : lastGood_)
      if (!names.contains(f)) names.insert(f);  // gone: reloaded below as absent
  }
  std::set<ObjectKey> touchedSvc, touchedSlices;
  for (const auto& f : names) {
    ClusterObjects next;
    std::ifstream in(dir_ + "/" + f);
    if (in) {
      std::stringstream ss;
      ss << in.rdbuf();
      auto parsed = parseManifestText(ss.str(), f);
      if (!parsed) {
        spdlog::error("manifests: {} ({}); keeping its last good content",
                      parsed.error().message, lastGood_.contains(f) ? "had one" : "none yet");
        continue;
      }
      next = std::move(*parsed);
    }  // else: deleted or renamed away
    ClusterObjects& prev = lastGood_[f];
    auto index = [&f](auto& objs, auto& filesOf, auto& touched, bool add) {
      for (auto& [k, v] : objs) {
        if (add) filesOf[k].insert(f);
        else filesOf[k].erase(f);
        touched.insert(k);
      }
    };
    index(prev.services, svcFiles_, touchedSvc, false);
    index(prev.slices, sliceFiles_, touchedSlices, false);
    index(next.services, svcFiles_, touchedSvc, true);
    index(next.slices, sliceFiles_, touchedSlices, true);
    if (in) prev = std::move(next);
    else lastGood_.erase(f);
  }
  // Only what differs from what was delivered before becomes a change.
  ObjectChanges out;
  auto settle = [&](auto& keys, auto& filesOf, auto member, auto& current, auto& changes,
                    const char* kind) {
    for (const auto& k : keys) {
      auto fit = filesOf.find(k);
      auto* v = fit == filesOf.end() ? nullptr : winner(k, fit->second, lastGood_, member, kind);
      if (fit != filesOf.end() && fit->second.empty()) filesOf.erase(fit);
      auto cur = current.find(k);
      if (!v) {
        if (cur == current.end()) continue;
        current.erase(cur);
        changes[k] = std::nullopt;
      } else if (cur == current.end() || !(cur->second == *v)) {
        current.insert_or_assign(k, *v);
        changes[k] = *v;
      }
    }
  };
  settle(touchedSvc, svcFiles_, &ClusterObjects::services, merged_.services, out.services, "Service");
  settle(touchedSlices, sliceFiles_, &ClusterObjects::slices, merged_.slices, out.slices,
         "EndpointSlice");
  return out;
}

ClusterObjects ManifestSource::loadOnce() {
  refresh(nullptr);
  return merged_;
}

Status ManifestSource::start(Callback cb) {
  cb_ = std::move(cb);
  inotify_ = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (inotify_ < 0) return sysFail(errno, "inotify_init1");
  // No IN_CREATE: a file being written is read once it is closed (IN_CLOSE_WRITE) or renamed
  // into place (IN_MOVED_TO), never half-written.
  if (inotify_add_watch(inotify_, dir_.c_str(),
                        IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE) < 0)
    return sysFail(errno, "inotify watch " + dir_);
  stopFd_ = eventfd(0, EFD_CLOEXEC);
  refresh(nullptr);
  cb_(ObjectChanges::all(merged_));
  thread_ = std::thread([this] { run(); });
  return {};
}

void ManifestSource::run() {
  alignas(inotify_event) char buf[16384];
  while (true) {
    pollfd fds[2] = {{inotify_, POLLIN, 0}, {stopFd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    // Only the files named by the events are read again, with no waiting window: events
    // that arrive meanwhile are read in the next round, and the daemon folds deliveries that
    // arrive while it is busy into one pass.
    std::set<std::string> names;
    bool overflow = false;
    ssize_t n;
    while ((n = read(inotify_, buf, sizeof buf)) > 0) {
      for (char* p = buf; p < buf + n;) {
        auto* ev = reinterpret_cast<inotify_event*>(p);
        if (ev->mask & IN_Q_OVERFLOW) overflow = true;
        if (ev->len > 0) names.insert(ev->name);
        p += sizeof(inotify_event) + ev->len;
      }
    }
    auto changes = refresh(overflow ? nullptr : &names);
    if (!changes.empty()) cb_(std::move(changes));
  }
}

void ManifestSource::stop() {
  if (stopFd_ >= 0) {
    uint64_t one = 1;
    (void)!write(stopFd_, &one, sizeof one);
  }
  if (thread_.joinable()) thread_.join();
  if (inotify_ >= 0) close(inotify_);
  if (stopFd_ >= 0) close(stopFd_);
  inotify_ = stopFd_ = -1;
}

}  // namespace kst
