// Network namespaces without any container-runtime API (docs/pod-identity.md):
// candidates are the bind mounts in /run/netns and every process's /proc/<pid>/ns/net
// (hostPID), deduplicated by device and inode; which one is a pod's is decided by the node's
// routing (linux/netns_provider.h). A candidate is opened once and then used through its
// handle only (NetnsHandle): a path may name another namespace later (a reused /proc/PID), the
// handle cannot. Work inside a namespace runs on a short-lived thread that setns()es to the
// handle, so the daemon's own threads never move.
#pragma once

#include <sys/types.h>

#include <functional>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "common/error.h"

namespace kst {

struct NetnsRef {
  std::string path;  // a path that opens it (/run/netns/x or /proc/<pid>/ns/net)
  dev_t dev = 0;
  ino_t ino = 0;
};

/** An open network namespace (an nsfs file descriptor): the namespace lives at least as long
 *  as the handle and the handle always means the same namespace. Move-only. */
class NetnsHandle {
 public:
  /** Opens path (O_RDONLY | O_CLOEXEC) and checks that it is a network namespace. */
  static Result<NetnsHandle> open(const std::string& path);
  NetnsHandle() = default;
  NetnsHandle(NetnsHandle&& o) noexcept;
  NetnsHandle& operator=(NetnsHandle&& o) noexcept;
  NetnsHandle(const NetnsHandle&) = delete;
  NetnsHandle& operator=(const NetnsHandle&) = delete;
  ~NetnsHandle();
  int fd() const { return fd_; }
  dev_t dev() const { return dev_; }
  ino_t ino() const { return ino_; }

 private:
  int fd_ = -1;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

/** Distinct network namespaces reachable from dirs (default /run/netns) and /proc. */
std::vector<NetnsRef> listNetns(const std::vector<std::string>& dirs, bool scanProc);

/** Inode of the calling thread's network namespace. */
ino_t currentNetnsInode();

/** Device and inode of the namespace at path (stat), if it can be read. */
std::optional<std::pair<dev_t, ino_t>> netnsIdentity(const std::string& path);

/** Runs fn on a thread that has entered the namespace at path. */
Status runInNetns(const std::string& path, const std::function<Status()>& fn);
/** Runs fn on a thread that has entered the namespace of handle fd (never re-opens a path). */
Status runInNetns(int fd, const std::function<Status()>& fn);

/** Writes a sysctl (e.g. "net/ipv4/conf/all/rp_filter") in the calling thread's namespace. */
Status writeSysctl(const std::string& key, const std::string& value);
Result<std::string> readSysctl(const std::string& key);

}  // namespace kst
