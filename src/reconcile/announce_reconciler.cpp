#include "reconcile/announce_reconciler.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <spdlog/spdlog.h>

#include "dataplane/diff.h"
#include "desired/announce.h"

namespace kst {

AnnounceReconciler::AnnounceReconciler(uint32_t table, dp::NetlinkClient& nl,
                                       std::string drainFile)
    : table_(table), nl_(nl), drainFile_(std::move(drainFile)) {}

bool AnnounceReconciler::drained() const {
  if (drainFile_.empty()) return false;
  std::error_code ec;
  return std::filesystem::exists(drainFile_, ec);
}

std::optional<std::set<IpAddress>> AnnounceReconciler::announcedVips() const {
  if (!cache_) return std::nullopt;
  std::set<IpAddress> vips;
  for (auto& r : *cache_) vips.insert(r.key.dst);
  return vips;
}

Result<std::vector<dp::Route>> AnnounceReconciler::observe() {
  return nl_.routes(table_, table_ + 1);
}

Result<AnnounceResult> AnnounceReconciler::reconcile(const RouterPlan& plan, bool routerOk) {
  bool isDrained = drained();
  auto desired = announceRoutes(plan, table_, isDrained);
  if (!routerOk) {
    // Withdrawals only: keep what is announced and still desired, add nothing.
    if (!cache_) {
      auto obs = observe();
      if (!obs) return std::unexpected(obs.error());
      cache_ = std::move(*obs);
    }
    std::erase_if(desired, [&](const dp::Route& r) {
      return std::none_of(cache_->begin(), cache_->end(),
                          [&](const dp::Route& o) { return o.key == r.key; });
    });
  }
  return converge(desired, isDrained);
}

Result<AnnounceResult> AnnounceReconciler::converge(const std::vector<dp::Route>& desired,
                                                    bool isDrained) {
  if (!cache_) {
    auto obs = observe();
    if (!obs) return std::unexpected(obs.error());
    cache_ = std::move(*obs);
  }
  AnnounceResult res;
  res.drained = isDrained;
  res.announced = desired.size();
  // The usual pass changes nothing: both sides are sorted, so a linear comparison settles it
  // without building the diff's maps.
  if (std::equal(desired.begin(), desired.end(), cache_->begin(), cache_->end(),
                 [](const dp::Route& a, const dp::Route& b) { return a.sameConfig(b); }))
    return res;
  dp::RouterState want, have;
  want.routes = desired;
  have.routes = *cache_;
  auto changes = dp::diffRouter(want, have);
  if (!changes.empty()) {
    auto failed = nl_.apply(changes);
    if (!failed) {
      cache_.reset();
      return std::unexpected(failed.error());
    }
    res.failures = std::move(*failed);
    res.changes = changes.size() - res.failures.size();
    size_t adds = 0;
    for (auto& c : changes) {
      bool del = c.action == dp::Change::Action::Delete;
      adds += !del;
      auto& r = std::get<dp::Route>(c.object);
      if (changes.size() <= 16)
        spdlog::info("announce: {} {}", del ? "withdraw" : "announce", r.key.dst.str());
    }
    if (changes.size() > 16)
      spdlog::info("announce: {} VIPs announced, {} withdrawn", adds, changes.size() - adds);
  }
  if (res.ok()) cache_ = desired;
  else cache_.reset();
  return res;
}

Result<AnnounceResult> AnnounceReconciler::cleanup() {
  cache_.reset();
  return converge({}, drained());
}

Status writeDrainFile(const std::string& path) {
  std::error_code ec;
  auto dir = std::filesystem::path(path).parent_path();
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  if (ec) return fail(ec.value(), "create " + dir.string() + ": " + ec.message());
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << "drained by kube-service-tunnel drain; `kube-service-tunnel undrain` reverts\n";
    if (!f) return fail(errno, "write " + tmp + ": " + std::strerror(errno));
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) return fail(ec.value(), "rename " + tmp + ": " + ec.message());
  return {};
}

Status removeDrainFile(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
  if (ec) return fail(ec.value(), "remove " + path + ": " + ec.message());
  return {};
}

DrainWatcher::DrainWatcher(std::string drainFile, std::function<void()> onChange)
    : onChange_(std::move(onChange)) {
  std::filesystem::path p(drainFile);
  dir_ = p.parent_path().empty() ? "." : p.parent_path().string();
  name_ = p.filename().string();
}

Status DrainWatcher::start() {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) return fail(ec.value(), "create " + dir_ + ": " + ec.message());
  fd_ = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (fd_ < 0) return fail(errno, std::string("inotify_init1: ") + std::strerror(errno));
  if (inotify_add_watch(fd_, dir_.c_str(),
                        IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_CLOSE_WRITE) < 0) {
    int e = errno;
    close(fd_);
    fd_ = -1;
    return fail(e, "inotify watch " + dir_ + ": " + std::strerror(e));
  }
  stopFd_ = eventfd(0, EFD_CLOEXEC);
  thread_ = std::thread([this] {
    alignas(inotify_event) char buf[4096];
    while (true) {
      pollfd p[2] = {{fd_, POLLIN, 0}, {stopFd_, POLLIN, 0}};
      if (poll(p, 2, -1) < 0 && errno != EINTR) return;
      if (p[1].revents) return;
      if (!(p[0].revents & POLLIN)) continue;
      ssize_t n = read(fd_, buf, sizeof buf);
      bool hit = false;
      for (ssize_t off = 0; n > 0 && off < n;) {
        auto* ev = reinterpret_cast<inotify_event*>(buf + off);
        if (ev->len && name_ == ev->name) hit = true;
        if (ev->mask & IN_Q_OVERFLOW) hit = true;
        off += ssize_t(sizeof(inotify_event) + ev->len);
      }
      if (hit) onChange_();
    }
  });
  return {};
}

void DrainWatcher::stop() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!write(stopFd_, &one, sizeof one);
    thread_.join();
  }
  if (fd_ >= 0) close(fd_);
  if (stopFd_ >= 0) close(stopFd_);
  fd_ = stopFd_ = -1;
}

DrainWatcher::~DrainWatcher() { stop(); }

}  // namespace kst
