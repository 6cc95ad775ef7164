// Network namespaces without any container-runtime API (docs/dataplane-notes.md "Finding a
// pod's namespace"): candidates are the
// bind mounts in /run/netns and every process's /proc/<pid>/ns/net (hostPID), deduplicated by
// inode; the namespace that owns a pod's IP is the pod's. Work inside a namespace runs on a
// short-lived thread that setns()es, so the daemon's own threads never move.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "common/error.h"

namespace kst {

struct NetnsRef {
  std::string path;  // a path that opens it (/run/netns/x or /proc/<pid>/ns/net)
  dev_t dev = 0;
  ino_t ino = 0;
};

/** Distinct network namespaces reachable from dirs (default /run/netns) and /proc. */
std::vector<NetnsRef> listNetns(const std::vector<std::string>& dirs, bool scanProc);

/** Inode of the calling thread's network namespace. */
ino_t currentNetnsInode();

/** Runs fn on a thread that has entered the namespace at path. */
Status runInNetns(const std::string& path, const std::function<Status()>& fn);

/** Writes a sysctl (e.g. "net/ipv4/conf/all/rp_filter") in the calling thread's namespace. */
Status writeSysctl(const std::string& key, const std::string& value);
Result<std::string> readSysctl(const std::string& key);

}  // namespace kst
