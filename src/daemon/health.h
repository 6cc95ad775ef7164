// A tiny HTTP health endpoint for the DaemonSet probes: GET /healthz (process alive, answers
// while the daemon runs) and GET /readyz (the source has delivered its first snapshot and the
// last reconcile pass succeeded). One blocking thread, one connection at a time, no keep-alive:
// probes are rare and tiny.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "common/error.h"

namespace kst {

class HealthServer {
 public:
  /** ready() returns "" when ready, otherwise the reason (sent with 503). */
  explicit HealthServer(std::function<std::string()> ready) : ready_(std::move(ready)) {}
  ~HealthServer();
  /** Binds address:port (port 0 picks one; see port()). */
  Status start(const std::string& address, uint16_t port);
  void stop();
  uint16_t port() const { return port_; }

 private:
  void run();
  void handle(int fd);
  std::function<std::string()> ready_;
  int listenFd_ = -1;
  int stopFd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

}  // namespace kst
