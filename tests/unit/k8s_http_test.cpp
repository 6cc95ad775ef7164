// CurlTransport against a tiny in-process HTTP server on 127.0.0.1 (plain HTTP, so no
// certificates): bearer token re-read when its file rotates, streamed chunks with the
// "headers arrived" signal, error bodies, and shutdown() interrupting a watch that waits.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

#include "k8s/http.h"

namespace kst::k8s {
namespace {

/** One request per connection; the handler writes the whole answer to the socket. */
class MiniServer {
 public:
  using Handler = std::function<void(int fd, const std::string& request)>;
  explicit MiniServer(Handler h) : handler_(std::move(h)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    listen(fd_, 8);
    socklen_t l = sizeof a;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &l);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      while (true) {
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        std::string req;
        char buf[4096];
        while (req.find("\r\n\r\n") == std::string::npos) {
          ssize_t n = read(c, buf, sizeof buf);
          if (n <= 0) break;
          req.append(buf, size_t(n));
        }
        {
          std::lock_guard lk(mu_);
          requests_.push_back(req);
        }
        handler_(c, req);
        close(c);
      }
    });
  }
  ~MiniServer() {
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<std::string> requests() {
    std::lock_guard lk(mu_);
    return requests_;
  }

 private:
  Handler handler_;
  int fd_;
  int port_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> requests_;
};

void send(int fd, const std::string& s) { (void)!write(fd, s.data(), s.size()); }

void answer(int fd, int status, const std::string& body) {
  send(fd, "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: application/json\r\n"
           "Connection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
}

std::string header(const std::string& req, const std::string& name) {
  auto p = req.find("\r\n" + name + ": ");
  if (p == std::string::npos) return {};
  p += name.size() + 4;
  return req.substr(p, req.find("\r\n", p) - p);
}

TEST(CurlTransport, BearerTokenFileIsReReadWhenItRotates) {
  MiniServer srv([](int fd, const std::string&) { answer(fd, 200, "{}"); });
  std::string tok = std::filesystem::temp_directory_path() / ("kst-token-" + std::to_string(getpid()));
  std::ofstream(tok) << "first-token\n";
  ClientConfig cfg;
  cfg.server = srv.url();
  cfg.tokenFile = tok;
  auto t = CurlTransport::create(cfg);
  ASSERT_TRUE(t);
  ASSERT_EQ((*t)->perform({.path = "/api"})->status, 200);
  ASSERT_EQ((*t)->perform({.path = "/api"})->status, 200);
  std::ofstream(tok) << "second-token-rotated\n";  // the kubelet rewrites the projected token
  ASSERT_EQ((*t)->perform({.path = "/api"})->status, 200);
  auto reqs = srv.requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(header(reqs[0], "Authorization"), "Bearer first-token");
  EXPECT_EQ(header(reqs[1], "Authorization"), "Bearer first-token");
  EXPECT_EQ(header(reqs[2], "Authorization"), "Bearer second-token-rotated");
  EXPECT_EQ(header(reqs[0], "Accept"), "application/json");
  std::filesystem::remove(tok);
}

TEST(CurlTransport, StreamsChunksAndSignalsHeadersFirst) {
  MiniServer srv([](int fd, const std::string&) {
    send(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
             "Connection: close\r\n\r\n");
    for (std::string part : {"{\"type\":\"ADDED\"", ",\"object\":{}}\n{\"ty", "pe\":\"BOOKMARK\",\"object\":{}}\n"}) {
      char len[16];
      snprintf(len, sizeof len, "%zx\r\n", part.size());
      send(fd, len + part + "\r\n");
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
    }
    send(fd, "0\r\n\r\n");
  });
  ClientConfig cfg;
  cfg.server = srv.url();
  cfg.token = "t";
  auto t = CurlTransport::create(cfg);
  ASSERT_TRUE(t);
  std::vector<std::string> chunks;
  auto r = (*t)->perform({.path = "/api/v1/services?watch=1"}, [&](std::string_view c) {
    chunks.emplace_back(c);
    return true;
  });
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(r->body.empty()) << "a streamed body is not kept";
  ASSERT_GE(chunks.size(), 2u);
  EXPECT_EQ(chunks[0], "") << "the headers are announced with an empty chunk";
  std::string all;
  for (auto& c : chunks) all += c;
  EXPECT_EQ(all, "{\"type\":\"ADDED\",\"object\":{}}\n{\"type\":\"BOOKMARK\",\"object\":{}}\n");
  EXPECT_EQ(header(srv.requests()[0], "Authorization"), "Bearer t");
}

TEST(CurlTransport, ErrorBodiesAreCollectedNotStreamed) {
  MiniServer srv([](int fd, const std::string&) {
    answer(fd, 403, R"({"kind":"Status","apiVersion":"v1","status":"Failure","message":"services is forbidden","reason":"Forbidden","code":403})");
  });
  ClientConfig cfg;
  cfg.server = srv.url();
  auto t = CurlTransport::create(cfg);
  ASSERT_TRUE(t);
  bool called = false;
  auto r = (*t)->perform({.path = "/api/v1/services"}, [&](std::string_view) {
    called = true;
    return true;
  });
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  EXPECT_FALSE(called);
  EXPECT_EQ(statusMessage(r->body), "Forbidden: services is forbidden");
}

TEST(CurlTransport, ShutdownInterruptsAWaitingWatchAndConnectErrorsAreErrors) {
  std::atomic<bool> release{false};
  MiniServer srv([&](int fd, const std::string&) {
    send(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  });
  ClientConfig cfg;
  cfg.server = srv.url();
  auto t = CurlTransport::create(cfg);
  ASSERT_TRUE(t);
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    (*t)->shutdown();
  });
  auto t0 = std::chrono::steady_clock::now();
  auto r = (*t)->perform({.path = "/api/v1/services?watch=1", .timeout = std::chrono::seconds(60)},
                         [](std::string_view) { return true; });
  auto took = std::chrono::steady_clock::now() - t0;
  stopper.join();
  release = true;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ECANCELED);
  EXPECT_LT(took, std::chrono::milliseconds(1500));
  EXPECT_FALSE((*t)->perform({.path = "/"})) << "after shutdown every request fails at once";

  ClientConfig nowhere;
  nowhere.server = "http://127.0.0.1:1";  // nothing listens on port 1
  auto n = CurlTransport::create(nowhere);
  ASSERT_TRUE(n);
  auto e = (*n)->perform({.path = "/api"});
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("127.0.0.1:1"), std::string::npos) << e.error().message;
}

TEST(UrlEncode, EncodesReservedCharacters) {
  EXPECT_EQ(urlEncode("a=b&c d/é"), "a%3Db%26c%20d%2F%C3%A9");
  EXPECT_EQ(urlEncode("eyJ2Ijo-_.~"), "eyJ2Ijo-_.~");
}

}  // namespace
}  // namespace kst::k8s
