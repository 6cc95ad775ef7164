#include "linux/netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
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
