// Small pieces shared by the daemon's libbpf users (linux/bpf_classifier.h, linux/pod_decap.h).
#pragma once

#include <bpf/libbpf.h>
#include <unistd.h>

#include <cstdarg>

namespace kst::bpf {

/** An owned file descriptor (a BPF object's, usually). Move-only. */
struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      if (fd >= 0) close(fd);
      fd = o.fd;
      o.fd = -1;
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

/** Routes libbpf's messages to spdlog at debug level (an expected miss, such as querying an
 *  interface without a clsact qdisc, is no warning of ours). Idempotent. */
void logLibbpfAtDebug();

}  // namespace kst::bpf
