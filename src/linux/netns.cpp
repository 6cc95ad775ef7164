#include "linux/netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <linux/nsfs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <set>
#include <thread>

#include <fmt/format.h>

namespace kst {

std::vector<NetnsRef> listNetns(const std::vector<std::string>& dirs, bool scanProc) {
  std::vector<NetnsRef> out;
  std::set<std::pair<dev_t, ino_t>> seen;
  auto consider = [&](const std::string& path) {
    struct stat st{};
    if (stat(path.c_str(), &st) != 0) return;
    if (seen.insert({st.st_dev, st.st_ino}).second) out.push_back({path, st.st_dev, st.st_ino});
  };
  for (const auto& d : dirs) {
    DIR* dir = opendir(d.c_str());
    if (!dir) continue;
    while (auto* e = readdir(dir)) {
      if (e->d_name[0] == '.') continue;
      consider(d + "/" + e->d_name);
    }
    closedir(dir);
  }
  if (scanProc) {
    DIR* dir = opendir("/proc");
    if (dir) {
      while (auto* e = readdir(dir)) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        consider(fmt::format("/proc/{}/ns/net", e->d_name));
      }
      closedir(dir);
    }
  }
  return out;
}

ino_t currentNetnsInode() {
  struct stat st{};
  if (stat("/proc/thread-self/ns/net", &st) != 0) return 0;
  return st.st_ino;
}

Result<NetnsHandle> NetnsHandle::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sysFail(errno, "open " + path);
  struct stat st{};
  // NSFS_MAGIC-backed: the ioctl NS_GET_NSTYPE answers CLONE_NEWNET for a network namespace.
  int type = ioctl(fd, NS_GET_NSTYPE);
  if (type != CLONE_NEWNET || fstat(fd, &st) != 0) {
    int e = type < 0 ? errno : EINVAL;
    ::close(fd);
    return sysFail(e, path + " is not a network namespace");
  }
  NetnsHandle h;
  h.fd_ = fd;
  h.dev_ = st.st_dev;
  h.ino_ = st.st_ino;
  return h;
}

NetnsHandle::NetnsHandle(NetnsHandle&& o) noexcept : fd_(o.fd_), dev_(o.dev_), ino_(o.ino_) {
  o.fd_ = -1;
}

NetnsHandle& NetnsHandle::operator=(NetnsHandle&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    dev_ = o.dev_;
    ino_ = o.ino_;
    o.fd_ = -1;
  }
  return *this;
}

NetnsHandle::~NetnsHandle() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<std::pair<dev_t, ino_t>> netnsIdentity(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) return std::nullopt;
  return std::make_pair(st.st_dev, st.st_ino);
}

Status runInNetns(int nsFd, const std::function<Status()>& fn) {
  Status result;
  std::thread t([&] {
    if (setns(nsFd, CLONE_NEWNET) != 0) {
      result = sysFail(errno, "setns");
      return;
    }
    result = fn();
  });
  t.join();
  return result;
}

Status runInNetns(const std::string& path, const std::function<Status()>& fn) {
  Status result;
  std::thread t([&] {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      result = sysFail(errno, "open " + path);
      return;
    }
    if (setns(fd, CLONE_NEWNET) != 0) {
      result = sysFail(errno, "setns " + path);
      close(fd);
      return;
    }
    close(fd);
    result = fn();
  });
  t.join();
  return result;
}

Status writeSysctl(const std::string& key, const std::string& value) {
  // /proc/sys/net reflects the network namespace of the thread that opens it.
  std::string path = "/proc/sys/" + key;
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return sysFail(errno, "open " + path);
  ssize_t n = write(fd, value.data(), value.size());
  int e = errno;
  close(fd);
  if (n < 0) return sysFail(e, "write " + path);
  return {};
}

Result<std::string> readSysctl(const std::string& key) {
  std::ifstream f("/proc/sys/" + key);
  if (!f) return fail(ENOENT, "read /proc/sys/" + key);
  std::string v;
  std::getline(f, v);
  return v;
}

}  // namespace kst
