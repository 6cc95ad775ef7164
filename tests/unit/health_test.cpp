// The health endpoint (daemon/health.h, cpp-httplib) on 127.0.0.1 with raw TCP clients: probe
// answers, a registered extra path, HEAD, keep-alive limits, and what a hostile client cannot
// do: idle connections do not delay the probes, a slow-loris client and an oversized request
// are cut at the deadline, stop() does not wait for open connections.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "daemon/health.h"

namespace kst {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

int connectTo(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool sendAll(int fd, const std::string& s) {
  return ::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == ssize_t(s.size());
}

/** Reads until the peer closes or `ms` pass; *closed tells which. */
std::string readFor(int fd, int ms, bool* closed = nullptr) {
  std::string out;
  auto end = Clock::now() + milliseconds(ms);
  if (closed) *closed = false;
  while (true) {
    auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now()).count();
    if (left <= 0) return out;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, int(left)) <= 0) return out;
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      if (closed) *closed = true;
      return out;
    }
    out.append(buf, size_t(n));
  }
}

/** One request with Connection: close; the whole answer. */
std::string get(uint16_t port, const std::string& path, const std::string& method = "GET") {
  int fd = connectTo(port);
  if (fd < 0) return "connect failed";
  sendAll(fd, method + " " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  std::string r = readFor(fd, 3000);
  close(fd);
  return r;
}

std::string statusLine(const std::string& r) { return r.substr(0, r.find("\r\n")); }
std::string bodyOf(const std::string& r) {
  auto p = r.find("\r\n\r\n");
  return p == std::string::npos ? "" : r.substr(p + 4);
}

TEST(HealthServer, ProbesRegisteredPathsHeadAndNotFound) {
  std::atomic<bool> ready{false};
  HealthServer hs([&]() -> std::string { return ready ? "" : "not synced with the Kubernetes API yet"; });
  hs.handle("/metrics", [] {
    return HealthServer::Reply{200, "kst_up 1\n", "text/plain; version=0.0.4"};
  });
  ASSERT_TRUE(hs.start("127.0.0.1", 0));
  ASSERT_NE(hs.port(), 0);
  auto h = get(hs.port(), "/healthz");
  EXPECT_EQ(statusLine(h), "HTTP/1.1 200 OK");
  EXPECT_EQ(bodyOf(h), "ok\n");
  EXPECT_EQ(bodyOf(get(hs.port(), "/livez")), "ok\n");
  EXPECT_EQ(bodyOf(get(hs.port(), "/healthz?verbose")), "ok\n") << "the query is ignored";
  auto r = get(hs.port(), "/readyz");
  EXPECT_EQ(statusLine(r), "HTTP/1.1 503 Service Unavailable");
  EXPECT_EQ(bodyOf(r), "not synced with the Kubernetes API yet\n");
  ready = true;
  EXPECT_EQ(statusLine(get(hs.port(), "/readyz")), "HTTP/1.1 200 OK");
  auto m = get(hs.port(), "/metrics");
  EXPECT_EQ(bodyOf(m), "kst_up 1\n");
  EXPECT_NE(m.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << m;
  auto head = get(hs.port(), "/healthz", "HEAD");
  EXPECT_EQ(statusLine(head), "HTTP/1.1 200 OK");
  EXPECT_EQ(bodyOf(head), "");
  auto nf = get(hs.port(), "/nope");
  EXPECT_EQ(statusLine(nf), "HTTP/1.1 404 Not Found");
  EXPECT_EQ(bodyOf(nf), "not found\n");
  EXPECT_EQ(statusLine(get(hs.port(), "/healthzX")), "HTTP/1.1 404 Not Found");
  hs.stop();
  EXPECT_EQ(get(hs.port(), "/healthz"), "connect failed");
}

TEST(HealthServer, TenIdleConnectionsDoNotDelayTheProbesAndAreClosedAtTheDeadline) {
  HealthServer hs([] { return std::string(); });
  ASSERT_TRUE(hs.start("127.0.0.1", 0));
  std::vector<int> idle;
  for (int i = 0; i < 10; ++i) {
    idle.push_back(connectTo(hs.port()));
    ASSERT_GE(idle.back(), 0);
  }
  std::this_thread::sleep_for(milliseconds(100));  // every idle one holds a worker by now
  for (int i = 0; i < 3; ++i) {
    auto t0 = Clock::now();
    auto r = get(hs.port(), "/healthz");
    auto took = Clock::now() - t0;
    EXPECT_EQ(statusLine(r), "HTTP/1.1 200 OK");
    EXPECT_LT(took, milliseconds(1000)) << "probe " << i;
  }
  // The server closes each idle connection once its request deadline (2 s) has passed.
  auto t0 = Clock::now();
  for (int fd : idle) {
    bool closed = false;
    std::string got = readFor(fd, 4000, &closed);
    EXPECT_TRUE(closed);
    EXPECT_EQ(got, "");
    close(fd);
  }
  EXPECT_LT(Clock::now() - t0, milliseconds(3500));
}

TEST(HealthServer, SlowLorisIsCutAtTheDeadlineAndOversizedRequestsAreRefused) {
  HealthServerOptions o;
  o.requestTimeout = milliseconds(1000);
  HealthServer hs([] { return std::string(); }, o);
  ASSERT_TRUE(hs.start("127.0.0.1", 0));
  int fd = connectTo(hs.port());
  ASSERT_GE(fd, 0);
  auto t0 = Clock::now();
  std::string req = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
  ASSERT_TRUE(sendAll(fd, req));
  // One byte every 100 ms: each read sees data long before any per-read timeout.
  bool cut = false;
  std::string answer;
  for (int i = 0; i < 40 && !cut; ++i) {
    if (!sendAll(fd, "a")) cut = true;
    answer += readFor(fd, 100, &cut);
  }
  auto took = Clock::now() - t0;
  EXPECT_TRUE(cut) << "still open after 4 s";
  EXPECT_GE(took, milliseconds(900));
  EXPECT_LT(took, milliseconds(1800));
  EXPECT_EQ(answer.find("200 OK"), std::string::npos) << answer;
  close(fd);
  // Headers over the request limit (16 KiB) are not read to their end.
  fd = connectTo(hs.port());
  ASSERT_GE(fd, 0);
  sendAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
  for (int i = 0; i < 40; ++i) sendAll(fd, "X-Pad-" + std::to_string(i) + ": " + std::string(1000, 'p') + "\r\n");
  sendAll(fd, "\r\n");
  bool closed = false;
  std::string big = readFor(fd, 3000, &closed);
  EXPECT_TRUE(closed);
  EXPECT_EQ(big.find("200 OK"), std::string::npos) << big;
  close(fd);
  EXPECT_EQ(statusLine(get(hs.port(), "/healthz")), "HTTP/1.1 200 OK");
}

// A slow answer (a large /metrics) has its own deadline from the end of the request's headers,
// not what is left of the request's.
TEST(HealthServer, ASlowAnswerHasTheResponseDeadlineNotTheRequestOne) {
  HealthServerOptions o;
  o.requestTimeout = milliseconds(200);
  o.responseTimeout = milliseconds(1500);
  HealthServer hs([] { return std::string(); }, o);
  hs.handle("/slow", [] {
    std::this_thread::sleep_for(milliseconds(500));
    return HealthServer::Reply{200, "done\n"};
  });
  hs.handle("/slower", [] {
    std::this_thread::sleep_for(milliseconds(2500));
    return HealthServer::Reply{200, "too late\n"};
  });
  ASSERT_TRUE(hs.start("127.0.0.1", 0));
  auto r = get(hs.port(), "/slow");
  EXPECT_EQ(statusLine(r), "HTTP/1.1 200 OK") << r;
  EXPECT_EQ(bodyOf(r), "done\n");
  int fd = connectTo(hs.port());
  ASSERT_GE(fd, 0);
  sendAll(fd, "GET /slower HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  bool closed = false;
  std::string late = readFor(fd, 4000, &closed);
  close(fd);
  EXPECT_TRUE(closed);
  EXPECT_EQ(late.find("too late"), std::string::npos) << late;
  hs.stop();
}

TEST(HealthServer, KeepAliveServesABoundedNumberOfRequestsPerConnection) {
  HealthServerOptions o;
  o.keepAliveMax = 3;
  HealthServer hs([] { return std::string(); }, o);
  ASSERT_TRUE(hs.start("127.0.0.1", 0));
  int fd = connectTo(hs.port());
  ASSERT_GE(fd, 0);
  int answered = 0;
  bool closed = false;
  for (int i = 0; i < 5 && !closed; ++i) {
    if (!sendAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) break;
    std::string r = readFor(fd, 300, &closed);
    if (r.starts_with("HTTP/1.1 200 OK")) ++answered;
    if (answered == 3) EXPECT_NE(r.find("Connection: close"), std::string::npos) << r;
  }
  EXPECT_EQ(answered, 3);
  close(fd);
}

TEST(HealthServer, AnswersOnSocketsNumberedAboveFdSetsize) {
  // The agent keeps a descriptor per pod namespace: the endpoint's sockets may get numbers
  // above 1024, where select()-based code fails.
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_max < 1200) GTEST_SKIP() << "RLIMIT_NOFILE hard limit " << rl.rlim_max;
  rlimit raised{std::max<rlim_t>(rl.rlim_cur, 1200), rl.rlim_max};
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &raised), 0);
  std::vector<int> filler;
  for (int i = 0; i < 1100; ++i) filler.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
  ASSERT_GE(filler.back(), 1024);
  HealthServer hs([] { return std::string(); });
  ASSERT_TRUE(hs.start("127.0.0.1", 0));
  EXPECT_EQ(statusLine(get(hs.port(), "/healthz")), "HTTP/1.1 200 OK");
  hs.stop();
  for (int fd : filler) close(fd);
  setrlimit(RLIMIT_NOFILE, &rl);
}

TEST(HealthServer, StopDoesNotWaitForOpenConnections) {
  HealthServer hs([] { return std::string(); });
  ASSERT_TRUE(hs.start("127.0.0.1", 0));
  std::vector<int> idle;
  for (int i = 0; i < 4; ++i) idle.push_back(connectTo(hs.port()));
  std::this_thread::sleep_for(milliseconds(100));
  auto t0 = Clock::now();
  hs.stop();
  EXPECT_LT(Clock::now() - t0, milliseconds(500));
  for (int fd : idle) close(fd);
  HealthServer bad([] { return std::string(); });
  EXPECT_FALSE(bad.start("not-an-address", 0));
}

}  // namespace
}  // namespace kst
