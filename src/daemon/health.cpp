#include "daemon/health.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

namespace kst {

HealthServer::~HealthServer() { stop(); }

Status HealthServer::start(const std::string& address, uint16_t port) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, address.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    len = sizeof *s4;
  } else if (inet_pton(AF_INET6, address.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    len = sizeof *s6;
  } else {
    return fail(EINVAL, "health: bad address " + address);
  }
  listenFd_ = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listenFd_ < 0) return sysFail(errno, "health: socket");
  int one = 1;
  setsockopt(listenFd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(listenFd_, reinterpret_cast<sockaddr*>(&ss), len) != 0)
    return sysFail(errno, fmt::format("health: bind {}:{}", address, port));
  if (listen(listenFd_, 16) != 0) return sysFail(errno, "health: listen");
  socklen_t l = sizeof ss;
  getsockname(listenFd_, reinterpret_cast<sockaddr*>(&ss), &l);
  port_ = ntohs(ss.ss_family == AF_INET ? s4->sin_port : s6->sin6_port);
  stopFd_ = eventfd(0, EFD_CLOEXEC);
  thread_ = std::thread([this] { run(); });
  return {};
}

void HealthServer::stop() {
  if (stopFd_ >= 0) {
    uint64_t one = 1;
    (void)!write(stopFd_, &one, sizeof one);
  }
  if (thread_.joinable()) thread_.join();
  if (listenFd_ >= 0) close(listenFd_);
  if (stopFd_ >= 0) close(stopFd_);
  listenFd_ = stopFd_ = -1;
}

void HealthServer::run() {
  while (true) {
    pollfd fds[2] = {{listenFd_, POLLIN, 0}, {stopFd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    int fd = accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    handle(fd);
    close(fd);
  }
}

void HealthServer::handle(int fd) {
  std::string req;
  char buf[1024];
  while (req.find("\r\n\r\n") == std::string::npos && req.find("\n\n") == std::string::npos &&
         req.size() < 8192) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    req.append(buf, size_t(n));
  }
  std::string path;
  if (req.starts_with("GET ") || req.starts_with("HEAD ")) {
    auto sp = req.find(' ');
    auto sp2 = req.find(' ', sp + 1);
    path = req.substr(sp + 1, sp2 == std::string::npos ? std::string::npos : sp2 - sp - 1);
    if (auto q = path.find('?'); q != std::string::npos) path.resize(q);
  }
  int code = 200;
  std::string body;
  if (path == "/healthz" || path == "/livez") {
    body = "ok\n";
  } else if (path == "/readyz") {
    std::string why = ready_ ? ready_() : "";
    if (why.empty()) body = "ok\n";
    else {
      code = 503;
      body = why + "\n";
    }
  } else {
    code = 404;
    body = "not found\n";
  }
  const char* text = code == 200 ? "OK" : code == 503 ? "Service Unavailable" : "Not Found";
  std::string resp = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
      code, text, body.size(), req.starts_with("HEAD ") ? "" : body);
  (void)!write(fd, resp.data(), resp.size());
}

}  // namespace kst
