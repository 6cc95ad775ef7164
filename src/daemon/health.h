// The daemon's HTTP endpoint (cpp-httplib): GET/HEAD /healthz and /livez (the process answers)
// and /readyz (the source has delivered its first snapshot and the last reconcile pass
// succeeded; else 503 with the reason), plus whatever another module registers with handle()
// before start() (e.g. /metrics).
// Nothing a client does can keep the probes from being answered for long: a pool of worker
// threads serves connections in parallel, and each request — the wait for it on an idle
// connection included — must arrive within a deadline, and be answered within a second one
// from the end of its headers, or its connection is closed (idle and slow-loris clients hold a
// worker at most that long); requests are capped in size and a connection serves a bounded
// number of them.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/error.h"

namespace kst {

struct HealthServerOptions {
  /** Connections served at once; further ones wait for a free worker. */
  size_t threads = 16;
  /** From the start of the wait for a request (accept, or the end of the previous answer on a
   *  kept-alive connection) to the end of its headers. */
  std::chrono::milliseconds requestTimeout{2000};
  /** From the end of a request's headers to the last byte of its answer: building, compressing
   *  and sending a large /metrics (10k VIPs × 4 endpoints: ≈ 15 MB of text before gzip, see
   *  bench/metrics_bench.cpp) takes longer than a probe. */
  std::chrono::milliseconds responseTimeout{10000};
  /** Requests served on one connection before it is closed. */
  size_t keepAliveMax = 10;
  /** Bytes of one request (line, headers, body) read at most; a longer one is cut. */
  size_t maxRequestBytes = 16 << 10;
};

class HealthServer {
 public:
  struct Reply {
    int status = 200;
    std::string body;
    std::string contentType = "text/plain; charset=utf-8";
  };
  /** Called on a worker thread for each GET/HEAD of its path; must be thread-safe. */
  using Handler = std::function<Reply()>;

  /** ready() returns "" when ready, otherwise the reason (sent with 503). */
  explicit HealthServer(std::function<std::string()> ready, HealthServerOptions opts = {});
  ~HealthServer();
  HealthServer(const HealthServer&) = delete;
  HealthServer& operator=(const HealthServer&) = delete;

  /** Serves GET/HEAD path with h (exact path; the query string is ignored). Before start(). */
  void handle(const std::string& path, Handler h);
  /** Binds address:port (port 0 picks one; see port()) and starts serving. */
  Status start(const std::string& address, uint16_t port);
  /** Stops serving; open connections are closed. Idempotent. */
  void stop();
  uint16_t port() const { return port_; }

 private:
  class Server;
  std::unique_ptr<Server> server_;
  uint16_t port_ = 0;
};

}  // namespace kst
