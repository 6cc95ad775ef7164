// A scripted HttpTransport for the Kubernetes client tests: responses are queued per path
// prefix and served in order; a request with nothing queued waits (like an idle watch) until a
// response is pushed or the transport shuts down. Bodies of 2xx answers are streamed to the
// chunk callback in small pieces, so the decoder sees lines split anywhere.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "k8s/http.h"

namespace kst::k8s::test {

inline std::string fixture(const std::string& name) {
  std::ifstream f(std::string(KST_TEST_DATA_DIR) + "/k8s/" + name);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct FakeResponse {
  int status = 200;
  std::string body;
  std::string transportError;  // non-empty: perform() fails with this message
  size_t chunk = 7;            // streamed in pieces of this size
};

class FakeApi {
 public:
  void push(const std::string& prefix, FakeResponse r) {
    std::lock_guard lk(mu_);
    queues_[prefix].push_back(std::move(r));
    cv_.notify_all();
  }
  std::vector<HttpRequest> requests() const {
    std::lock_guard lk(mu_);
    return requests_;
  }
  size_t count(const std::string& prefix) const {
    std::lock_guard lk(mu_);
    size_t n = 0;
    for (auto& r : requests_)
      if (r.path.starts_with(prefix)) ++n;
    return n;
  }
  /** Waits until at least n requests with this prefix were made. */
  bool waitRequests(const std::string& prefix, size_t n, int ms = 5000) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, std::chrono::milliseconds(ms), [&] {
      size_t c = 0;
      for (auto& r : requests_)
        if (r.path.starts_with(prefix)) ++c;
      return c >= n;
    });
  }
  void wake() {
    std::lock_guard lk(mu_);
    cv_.notify_all();
  }

  Result<HttpResponse> serve(const HttpRequest& req, const ChunkFn& onChunk,
                             const std::atomic<bool>& shut) {
    FakeResponse r;
    {
      std::unique_lock lk(mu_);
      requests_.push_back(req);
      cv_.notify_all();
      std::deque<FakeResponse>* q = nullptr;
      cv_.wait(lk, [&] {
        if (shut) return true;
        q = nullptr;
        size_t best = 0;
        for (auto& [prefix, dq] : queues_)
          if (!dq.empty() && req.path.starts_with(prefix) && prefix.size() >= best) {
            q = &dq;
            best = prefix.size();
          }
        return q != nullptr;
      });
      if (shut) return fail(ECANCELED, "shutting down");
      r = std::move(q->front());
      q->pop_front();
    }
    if (!r.transportError.empty()) return fail(EIO, r.transportError);
    HttpResponse resp;
    resp.status = r.status;
    if (r.status >= 200 && r.status < 300 && onChunk) {
      if (!onChunk({})) {
        resp.aborted = true;
        return resp;
      }
      for (size_t i = 0; i < r.body.size(); i += r.chunk) {
        if (shut) return fail(ECANCELED, "shutting down");
        if (!onChunk(std::string_view(r.body).substr(i, r.chunk))) {
          resp.aborted = true;
          return resp;
        }
      }
      return resp;
    }
    // As CurlTransport: a collected 2xx body over the request's limit is refused.
    if (r.status >= 200 && r.status < 300 && req.maxBody && r.body.size() > req.maxBody)
      return fail(EMSGSIZE, "the answer is larger than the limit; refused (not buffered)");
    resp.body = r.body;
    return resp;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::deque<FakeResponse>> queues_;
  std::vector<HttpRequest> requests_;
};

class FakeTransport : public HttpTransport {
 public:
  explicit FakeTransport(FakeApi& api) : api_(api) {}
  Result<HttpResponse> perform(const HttpRequest& req, const ChunkFn& onChunk = {}) override {
    return api_.serve(req, onChunk, shut_);
  }
  void shutdown() override {
    shut_ = true;
    api_.wake();
  }
  std::string server() const override { return "https://fake:6443"; }

 private:
  FakeApi& api_;
  std::atomic<bool> shut_{false};
};

}  // namespace kst::k8s::test
