#include "source/manifest_source.h"

#include <algorithm>

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
#include "common/guard.h"
#include "source/decode.h"
#include "source/yaml.h"

namespace kst {

Result<ClusterObjects> parseManifestText(const std::string& text, const std::string& fileName,
                                         std::vector<std::string>* skipped) {
  if (text.size() > kMaxManifestBytes)
    return fail(EFBIG, fmt::format("{}: larger than {} bytes", fileName, kMaxManifestBytes));
  auto docs = yamlDocuments(text);  // JSON is YAML too
  if (!docs) return fail(EINVAL, fmt::format("{}: {}", fileName, docs.error().message));
  ClusterObjects objs;
  for (size_t i = 0; i < docs->size(); ++i) {
    const auto& j = (*docs)[i];
    if (j.is_null()) continue;
    std::vector<std::string> items;
    // One bad document (or List item) costs that object only; the rest of the file applies.
    try {
      if (auto s = addObject(j, objs, &items); !s) items.push_back(s.error().message);
    } catch (const std::exception& e) {  // not expected; still only this document
      items.push_back(e.what());
    }
    if (skipped)
      for (auto& m : items) skipped->push_back(fmt::format("{} document {}: {}", fileName, i + 1, m));
  }
  return objs;
}

ManifestSource::ManifestSource(std::string dir) : dir_(std::move(dir)) {}

ManifestSource::~ManifestSource() { stop(); }

namespace {

bool isManifestName(const std::string& n) {
  return !n.starts_with(".") && (n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".json"));
}

/** The version of a key that wins (the last defining file in name order, as `kubectl apply -f
 *  dir` would leave it), or null. */
template <typename T>
const T* winner(const ObjectKey& k, const std::map<ObjectKey, std::set<std::string>>& filesOf,
                const std::map<std::string, ClusterObjects>& content,
                std::map<ObjectKey, T> ClusterObjects::*member, const char* warnKind = nullptr) {
  auto it = filesOf.find(k);
  if (it == filesOf.end() || it->second.empty()) return nullptr;
  if (warnKind && it->second.size() > 1)
    spdlog::warn("manifests: {} {} defined in {} files; {} wins", warnKind, k.str(),
                 it->second.size(), *it->second.rbegin());
  return &(content.at(*it->second.rbegin()).*member).at(k);
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
    for (auto& [f, objs] : lastGood_) names.insert(f);  // gone ones are read below as absent
  }
  // 1. The named files' new content (nullopt: gone). A file that fails to parse keeps its
  //    last good content.
  std::map<std::string, std::optional<ClusterObjects>> next;
  for (const auto& f : names) {
    std::ifstream in(dir_ + "/" + f, std::ios::binary);
    if (!in) {
      if (lastGood_.contains(f)) next.emplace(f, std::nullopt);
      continue;
    }
    // At most the size limit and one byte more is read (a huge file is refused, not loaded),
    // in 64 KiB steps. NOTE Performance: not one zero-filled buffer of the limit per file —
    // 16 MiB memset per file made a 10k-file directory cost ≈ 6 s of CPU.
    std::string text;
    char chunk[64 * 1024];
    while (text.size() <= kMaxManifestBytes && in) {
      size_t want = std::min(sizeof chunk, kMaxManifestBytes + 1 - text.size());
      in.read(chunk, std::streamsize(want));
      text.append(chunk, size_t(in.gcount()));
    }
    std::vector<std::string> skipped;
    auto parsed = parseManifestText(text, f, &skipped);
    for (auto& m : skipped) spdlog::error("manifests: {}: object skipped", m);
    if (!parsed) {
      spdlog::error("manifests: {} ({}); keeping its last good content", parsed.error().message,
                    lastGood_.contains(f) ? "had one" : "none yet");
      continue;
    }
    next.emplace(f, std::move(*parsed));
  }
  // 2. Every key these files define before or after, with the version delivered so far (the
  //    winner over the old contents). No merged copy is kept: the old contents stay alive
  //    (moved aside; std::map nodes do not move) until the comparison below.
  std::map<ObjectKey, const ServiceObject*> svcBefore;
  std::map<ObjectKey, const EndpointSliceObject*> sliceBefore;
  std::map<ObjectKey, const PublishedTableObject*> tableBefore;
  auto touch = [&](const ClusterObjects& c) {
    for (auto& [k, v] : c.tables)
      tableBefore.try_emplace(k, winner(k, tableFiles_, lastGood_, &ClusterObjects::tables));
    for (auto& [k, v] : c.services)
      svcBefore.try_emplace(k, winner(k, svcFiles_, lastGood_, &ClusterObjects::services));
    for (auto& [k, v] : c.slices)
      sliceBefore.try_emplace(k, winner(k, sliceFiles_, lastGood_, &ClusterObjects::slices));
  };
  for (auto& [f, c] : next) {
    if (auto it = lastGood_.find(f); it != lastGood_.end()) touch(it->second);
    if (c) touch(*c);
  }
  // 3. Swap the new contents in.
  std::vector<ClusterObjects> retired;
  retired.reserve(next.size());
  for (auto& [f, c] : next) {
    auto indexOne = [&f](auto& filesOf, const ObjectKey& k, bool add) {
      if (add) {
        filesOf[k].insert(f);
      } else if (auto it = filesOf.find(k); it != filesOf.end()) {
        it->second.erase(f);
        if (it->second.empty()) filesOf.erase(it);
      }
    };
    auto index = [&](const ClusterObjects& objs, bool add, auto& svcFiles, auto& sliceFiles) {
      for (auto& [k, v] : objs.services) indexOne(svcFiles, k, add);
      for (auto& [k, v] : objs.slices) indexOne(sliceFiles, k, add);
      for (auto& [k, v] : objs.tables) indexOne(tableFiles_, k, add);
    };
    if (auto it = lastGood_.find(f); it != lastGood_.end()) {
      index(it->second, false, svcFiles_, sliceFiles_);
      retired.push_back(std::move(it->second));
      lastGood_.erase(it);
    }
    if (c) {
      index(*c, true, svcFiles_, sliceFiles_);
      lastGood_.emplace(f, std::move(*c));
    }
  }
  // 4. Only what differs from what was delivered becomes a change.
  ObjectChanges out;
  auto settle = [&](const auto& before, const auto& filesOf, auto member, auto& changes,
                    const char* kind) {
    for (const auto& [k, old] : before) {
      const auto* now = winner(k, filesOf, lastGood_, member, kind);
      if (!now) {
        if (old) changes.emplace(k, std::nullopt);
      } else if (!old || !(*old == *now)) {
        changes.emplace(k, *now);
      }
    }
  };
  settle(svcBefore, svcFiles_, &ClusterObjects::services, out.services, "Service");
  settle(sliceBefore, sliceFiles_, &ClusterObjects::slices, out.slices, "EndpointSlice");
  settle(tableBefore, tableFiles_, &ClusterObjects::tables, out.tables, "bucket table of");
  return out;
}

ClusterObjects ManifestSource::loadOnce() {
  refresh(nullptr);
  ClusterObjects all;
  for (auto& [k, files] : svcFiles_)
    all.services.emplace(k, *winner(k, svcFiles_, lastGood_, &ClusterObjects::services));
  for (auto& [k, files] : sliceFiles_)
    all.slices.emplace(k, *winner(k, sliceFiles_, lastGood_, &ClusterObjects::slices));
  for (auto& [k, files] : tableFiles_)
    all.tables.emplace(k, *winner(k, tableFiles_, lastGood_, &ClusterObjects::tables));
  return all;
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
  // From nothing, everything read is a change: that is the complete set.
  auto all = refresh(nullptr);
  all.replaceAll = true;
  cb_(std::move(all));
  thread_ = std::thread([this] {
    keepRunning("manifests", [this] { run(); }, [this] { return stopping_.load(); });
  });
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
  stopping_ = true;
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
