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
  /** Largest body of a 2xx answer collected into HttpResponse::body: a longer one (announced by
   *  Content-Length, or found while it arrives) fails the request with EMSGSIZE as soon as that
   *  is known, without buffering it. A body streamed to a chunk callback is not limited here
   *  (the callback bounds what it keeps: WatchDecoder's line limit). */
  size_t maxBody = kDefaultMaxBody;
  static constexpr size_t kDefaultMaxBody = size_t(64) << 20;
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

struct CurlTransportOptions {
  /** The trust store used when the configuration names no CA: a directory of hashed
   *  certificates (c_rehash layout). Empty: libcurl's built-in default (Debian:
   *  /etc/ssl/certs). Tests point it at a temporary directory. When the configuration names a
   *  CA (kubeconfig certificate-authority[-data], in-cluster ca.crt) only that CA is trusted:
   *  neither this directory nor libcurl's default CA file/path is consulted. */
  std::string systemCaPath;
};

/** libcurl transport. One instance per thread (a libcurl handle is not thread-safe); instances
 *  keep their connection open between requests. */
class CurlTransport : public HttpTransport {
 public:
  static Result<std::unique_ptr<CurlTransport>> create(const ClientConfig& cfg,
                                                       CurlTransportOptions opts = {});
  ~CurlTransport() override;
  Result<HttpResponse> perform(const HttpRequest& req, const ChunkFn& onChunk = {}) override;
  void shutdown() override;
  std::string server() const override { return cfg_.server; }

 private:
  CurlTransport(ClientConfig cfg, CurlTransportOptions opts);
  std::string bearerToken();
  ClientConfig cfg_;
  CurlTransportOptions opts_;
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
