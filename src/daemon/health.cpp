#include "daemon/health.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>

namespace kst {

namespace {

using Clock = std::chrono::steady_clock;

std::string addressOf(const sockaddr_storage& ss, int& port) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    port = ntohs(a->sin6_port);
  }
  return buf;
}

/** httplib::Stream over an accepted socket where every read and write waits at most until the
 *  current request's deadline, and a request reads at most maxBytes. Bytes read ahead (a
 *  pipelined next request) stay buffered for the next request. */
class DeadlineStream : public httplib::Stream {
 public:
  DeadlineStream(int fd, size_t maxBytes) : fd_(fd), maxBytes_(maxBytes) {}
  void beginRequest(Clock::time_point deadline) {
    deadline_ = deadline;
    requestBytes_ = 0;
  }
  /** The request's headers are in: from now on its answer has until `deadline`. */
  void beginAnswer(Clock::time_point deadline) { deadline_ = deadline; }
  /** Waits (until the deadline) for the first byte of the next request; false: none came. */
  bool awaitRequest() { return pos_ < buf_.size() || wait(POLLIN); }

  bool is_readable() const override { return pos_ < buf_.size() || wait(POLLIN); }
  bool is_writable() const override { return wait(POLLOUT); }
  ssize_t read(char* ptr, size_t size) override {
    if (pos_ == buf_.size()) {
      if (!wait(POLLIN)) return -1;
      buf_.resize(4096);
      ssize_t n = ::recv(fd_, buf_.data(), buf_.size(), 0);
      buf_.resize(n > 0 ? size_t(n) : 0);
      pos_ = 0;
      if (n <= 0) return n;
    }
    size_t n = std::min(size, buf_.size() - pos_);
    if (requestBytes_ + n > maxBytes_) return -1;  // an oversized request is cut
    std::memcpy(ptr, buf_.data() + pos_, n);
    pos_ += n;
    requestBytes_ += n;
    return ssize_t(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!wait(POLLOUT)) return -1;
    return ::send(fd_, ptr, size, MSG_NOSIGNAL);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage ss{};
    socklen_t l = sizeof ss;
    if (getpeername(fd_, reinterpret_cast<sockaddr*>(&ss), &l) == 0) ip = addressOf(ss, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage ss{};
    socklen_t l = sizeof ss;
    if (getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &l) == 0) ip = addressOf(ss, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  bool wait(short events) const {
    while (true) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, events, 0};
      int r = ::poll(&p, 1, int(left.count()));
      if (r > 0) return true;  // ready, or an error/hangup the next recv/send reports
      if (r == 0 || errno != EINTR) return false;
    }
  }
  int fd_;
  size_t maxBytes_;
  std::string buf_;
  size_t pos_ = 0;
  size_t requestBytes_ = 0;
  Clock::time_point deadline_{};
};

}  // namespace

/** httplib::Server whose connections are served by DeadlineStream: httplib's own socket
 *  timeouts apply to each read separately, so a client sending a byte now and then would hold
 *  a worker for good. */
class HealthServer::Server : public httplib::Server {
 public:
  explicit Server(HealthServerOptions o) : opts_(o) {}
  std::thread thread;
  std::atomic<bool> exited{false};  // listen_after_bind returned

  /** Closes every open connection (their workers then finish at once). */
  void closeConnections() {
    std::lock_guard lk(mu_);
    stopping_ = true;
    for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
  }

 private:
  bool process_and_close_socket(socket_t sock) override {
    {
      std::lock_guard lk(mu_);
      if (stopping_) {
        ::close(sock);
        return false;
      }
      open_.insert(sock);
    }
    DeadlineStream strm(sock, opts_.maxRequestBytes);
    bool ret = false;
    for (size_t served = 0; served < opts_.keepAliveMax && is_running(); ++served) {
      strm.beginRequest(Clock::now() + opts_.requestTimeout);
      if (!strm.awaitRequest()) break;  // idle until the deadline, or closed by the client
      bool closed = false;
      bool last = served + 1 == opts_.keepAliveMax;
      // httplib calls this once the request line and headers are read, before routing.
      ret = process_request(strm, last, closed, [&](httplib::Request& req) {
        strm.get_remote_ip_and_port(req.remote_addr, req.remote_port);
        strm.beginAnswer(Clock::now() + opts_.responseTimeout);
      });
      if (!ret || closed) break;
    }
    {
      std::lock_guard lk(mu_);
      open_.erase(sock);
    }
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return ret;
  }

  HealthServerOptions opts_;
  std::mutex mu_;
  std::set<int> open_;
  bool stopping_ = false;
};

HealthServer::HealthServer(std::function<std::string()> ready, HealthServerOptions opts)
    : server_(std::make_unique<Server>(opts)) {
  auto& s = *server_;
  size_t threads = std::max<size_t>(1, opts.threads);
  s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // Only SO_REUSEADDR (httplib's default adds SO_REUSEPORT: a second daemon could then bind
  // the same port silently).
  s.set_socket_options([](socket_t fd) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  });
  // The Keep-Alive header httplib sends announces these; DeadlineStream enforces them.
  s.set_keep_alive_max_count(std::max<size_t>(1, opts.keepAliveMax));
  s.set_keep_alive_timeout(std::max<time_t>(1, time_t(opts.requestTimeout.count() / 1000)));
  s.set_payload_max_length(opts.maxRequestBytes);
  httplib::Server::HandlerWithResponse plainErrors = [](const httplib::Request&,
                                                        httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // e.g. 503 why
    res.set_content(res.status == 404   ? "not found\n"
                    : res.status == 400 ? "bad request\n"
                                        : "error\n",
                    "text/plain; charset=utf-8");
    return httplib::Server::HandlerResponse::Handled;
  };
  s.set_error_handler(std::move(plainErrors));
  auto alive = [] { return Reply{200, "ok\n"}; };
  handle("/healthz", alive);
  handle("/livez", alive);
  handle("/readyz", [ready = std::move(ready)] {
    std::string why = ready ? ready() : "";
    return why.empty() ? Reply{200, "ok\n"} : Reply{503, why + "\n"};
  });
}

HealthServer::~HealthServer() { stop(); }

void HealthServer::handle(const std::string& path, Handler h) {
  // httplib routes by regular expression: the path is matched literally.
  std::string pattern;
  for (char c : path) {
    if (std::strchr("\\^$.|?*+()[]{}", c)) pattern += '\\';
    pattern += c;
  }
  server_->Get(pattern, [h = std::move(h)](const httplib::Request&, httplib::Response& res) {
    Reply r = h();
    res.status = r.status;
    res.set_content(r.body, r.contentType);
  });
}

Status HealthServer::start(const std::string& address, uint16_t port) {
  in6_addr probe{};
  if (inet_pton(AF_INET, address.c_str(), &probe) != 1 &&
      inet_pton(AF_INET6, address.c_str(), &probe) != 1)
    return fail(EINVAL, "health: bad address " + address);
  auto& s = *server_;
  errno = 0;
  int bound = port == 0 ? s.bind_to_any_port(address) : (s.bind_to_port(address, port) ? port : -1);
  if (bound <= 0) {
    int e = errno ? errno : EADDRINUSE;
    return sysFail(e, fmt::format("health: bind {}:{}", address, port));
  }
  port_ = uint16_t(bound);
  s.thread = std::thread([&s] {
    s.listen_after_bind();
    s.exited = true;
  });
  // stop() right after start() must find the server running (httplib's stop() does nothing
  // before its loop has started).
  while (!s.is_running() && !s.exited) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return {};
}

void HealthServer::stop() {
  if (!server_ || !server_->thread.joinable()) return;
  server_->stop();  // closes the listening socket: no new connections
  server_->closeConnections();
  server_->thread.join();  // the pool's workers are joined when listen_after_bind returns
}

}  // namespace kst
