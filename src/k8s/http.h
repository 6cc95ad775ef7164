// The HTTP seam of the Kubernetes client: an abstract transport (so the list/watch state machine
// and the Event sink are unit-tested with a fake replaying recorded apiserver answers) and its
// libcurl implementation (TLS with OpenSSL, bearer token re-read when its file rotates, client
// certificates, streaming GET for watches, shutdown() that interrupts a blocked watch at once).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "common/error.h"
#include "k8s/kubeconfig.h"

namespace kst::k8s {

struct HttpRequest {
  std::string method = "GET";
  std::string path;  // absolute path with query: "/api/v1/services?limit=500"
  std::string body;
  std::string contentType;  // for requests with a body
  /** Whole request, including a streamed body; 0 = no limit. */
  std::chrono::seconds timeout{30};
};

struct HttpResponse {
  int status = 0;
  /** The body, unless a chunk callback consumed it (2xx with onChunk). Error bodies (non-2xx)
   *  are always collected here (capped at 1 MiB). */
  std::string body;
  /** The chunk callback asked to stop. */
  bool aborted = false;
};

/** Receives body bytes of a 2xx answer as they arrive; return false to abort the request. */
using ChunkFn = std::function<bool(std::string_view)>;

class HttpTransport {
 public:
  virtual ~HttpTransport() = default;
  /** Performs one request (blocking). Transport failures (connect, TLS, timeout, shutdown) are
   *  Errors; any HTTP status is a response. */
  virtual Result<HttpResponse> perform(const HttpRequest& req, const ChunkFn& onChunk = {}) = 0;
  /** Interrupts a perform() running in another thread and makes later ones fail at once.
   *  Thread-safe; irreversible. */
  virtual void shutdown() = 0;
  virtual std::string server() const = 0;
};

/** libcurl transport. One instance per thread (a libcurl handle is not thread-safe); instances
 *  keep their connection open between requests. */
class CurlTransport : public HttpTransport {
 public:
  static Result<std::unique_ptr<CurlTransport>> create(const ClientConfig& cfg);
  ~CurlTransport() override;
  Result<HttpResponse> perform(const HttpRequest& req, const ChunkFn& onChunk = {}) override;
  void shutdown() override;
  std::string server() const override { return cfg_.server; }

 private:
  explicit CurlTransport(ClientConfig cfg);
  std::string bearerToken();
  ClientConfig cfg_;
  void* multi_ = nullptr;  // CURLM*
  void* easy_ = nullptr;   // CURL*, reused (keeps the connection)
  std::atomic<bool> shutdown_{false};
  std::mutex wakeMu_;  // guards multi_ against shutdown() racing the destructor
  // Token file state: re-read when mtime/size/inode change, or after a 401.
  std::string fileToken_;
  struct {
    long long mtimeNs = -1;
    long long size = -1;
    unsigned long ino = 0;
  } tokenStat_;
  bool forceTokenReload_ = false;
};

/** Percent-encodes a query parameter value. */
std::string urlEncode(std::string_view s);

/** "reason: message" from a Kubernetes Status body, or a prefix of the raw body. */
std::string statusMessage(const std::string& body);

}  // namespace kst::k8s
