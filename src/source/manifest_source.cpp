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

ClusterObjects ManifestSource::reload() {
  std::set<std::string> files;
  if (DIR* d = opendir(dir_.c_str())) {
    while (auto* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.starts_with(".")) continue;
      if (n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".json")) files.insert(n);
    }
    closedir(d);
  } else {
    spdlog::error("manifests: cannot read directory {}", dir_);
  }
  for (auto it = lastGood_.begin(); it != lastGood_.end();)
    it = files.contains(it->first) ? std::next(it) : lastGood_.erase(it);
  for (const auto& f : files) {
    std::ifstream in(dir_ + "/" + f);
    std::stringstream ss;
    ss << in.rdbuf();
    auto parsed = parseManifestText(ss.str(), f);
    if (!parsed) {
      spdlog::error("manifests: {} ({}); keeping its last good content",
                    parsed.error().message, lastGood_.contains(f) ? "had one" : "none yet");
      continue;
    }
    lastGood_[f] = std::move(*parsed);
  }
  ClusterObjects all;
  for (auto& [f, objs] : lastGood_) {
    for (auto& [k, s] : objs.services) {
      if (all.services.contains(k)) spdlog::warn("manifests: Service {} defined twice; {} wins", k.str(), f);
      all.services[k] = s;
    }
    for (auto& [k, s] : objs.slices) all.slices[k] = s;
  }
  return all;
}

ClusterObjects ManifestSource::loadOnce() { return reload(); }

Status ManifestSource::start(Callback cb) {
  cb_ = std::move(cb);
  inotify_ = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (inotify_ < 0) return sysFail(errno, "inotify_init1");
  if (inotify_add_watch(inotify_, dir_.c_str(),
                        IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE) < 0)
    return sysFail(errno, "inotify watch " + dir_);
  stopFd_ = eventfd(0, EFD_CLOEXEC);
  cb_(reload());
  thread_ = std::thread([this] { run(); });
  return {};
}

void ManifestSource::run() {
  char buf[4096];
  while (true) {
    pollfd fds[2] = {{inotify_, POLLIN, 0}, {stopFd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    // Coalesce a burst of events (an editor writes, renames, chmods) into one reload.
    do {
      while (read(inotify_, buf, sizeof buf) > 0) {
      }
      pollfd p{inotify_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) break;
    } while (true);
    cb_(reload());
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
