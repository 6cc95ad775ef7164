// CurlTransport against a tiny in-process HTTP server on 127.0.0.1: bearer token re-read when
// its file rotates, streamed chunks with the "headers arrived" signal, error bodies, shutdown()
// interrupting a watch that waits, answers over the size limit refused without being
// buffered; and against cpp-httplib TLS servers with certificates made by the openssl tool:
// with a CA configured, a server certified by any other CA (one in the system store included)
// is refused.
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
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

/** A server answering 200 with `headers`, then `piece` `times` times or until the client hangs
 *  up; counts the bytes it could write. */
struct Flood {
  std::atomic<size_t> sent{0};
  std::atomic<bool> done{false};
  MiniServer srv;
  Flood(std::string headers, std::string piece, int times)
      : srv([this, headers, piece, times](int fd, const std::string&) {
          (void)!::send(fd, headers.data(), headers.size(), MSG_NOSIGNAL);
          for (int i = 0; i < times; ++i) {
            ssize_t n = ::send(fd, piece.data(), piece.size(), MSG_NOSIGNAL);
            if (n <= 0) break;
            sent += size_t(n);
          }
          done = true;
        }) {}
  bool waitDone() {
    for (int i = 0; i < 500 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return done;
  }
};

TEST(CurlTransport, AnswerAnnouncedOverTheLimitIsRefusedBeforeItsBody) {
  Flood flood("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                  std::to_string(size_t(1) << 30) + "\r\n\r\n",
              std::string(64 << 10, 'x'), 16384);  // the announced 1 GiB
  ClientConfig cfg;
  cfg.server = flood.srv.url();
  auto t = CurlTransport::create(cfg);
  ASSERT_TRUE(t);
  auto t0 = std::chrono::steady_clock::now();
  auto r = (*t)->perform({.path = "/api/v1/services?limit=500", .maxBody = size_t(1) << 20});
  auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EMSGSIZE);
  EXPECT_NE(r.error().message.find("larger than 1 MiB"), std::string::npos) << r.error().message;
  EXPECT_LT(took, std::chrono::seconds(5));
  t->reset();  // closes the connection: the server's writes fail from now on
  ASSERT_TRUE(flood.waitDone());
  EXPECT_LT(flood.sent.load(), size_t(48) << 20) << "the 1 GiB answer was not read";
  std::cerr << "server sent " << flood.sent.load() / 1024 << " KiB of the announced 1 GiB\n";
}

TEST(CurlTransport, ChunkedAnswerOverTheLimitIsCutWhileItArrives) {
  Flood flood("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
              "10000\r\n" + std::string(0x10000, 'x') + "\r\n", 4096);  // 256 MiB
  ClientConfig cfg;
  cfg.server = flood.srv.url();
  auto t = CurlTransport::create(cfg);
  ASSERT_TRUE(t);
  auto r = (*t)->perform({.path = "/api/v1/services?limit=500", .maxBody = size_t(2) << 20});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EMSGSIZE) << r.error().message;
  ASSERT_TRUE(flood.waitDone());
  // What the client took is the limit; the rest is what the loopback socket buffers held.
  EXPECT_LT(flood.sent.load(), size_t(48) << 20) << "the transfer was cut, not read to its end";
  std::cerr << "server sent " << flood.sent.load() / 1024 << " KiB of 256 MiB\n";
  // The same answer, small enough, is collected as before.
  MiniServer ok([](int fd, const std::string&) { answer(fd, 200, std::string(1 << 20, 'y')); });
  cfg.server = ok.url();
  auto t2 = CurlTransport::create(cfg);
  auto r2 = (*t2)->perform({.path = "/api", .maxBody = size_t(1) << 20});
  ASSERT_TRUE(r2) << r2.error().message;
  EXPECT_EQ(r2->body.size(), size_t(1) << 20);
}

/** Certificates made with the openssl tool: a cluster CA, another CA (think: a public one in
 *  the system store), a server certificate for 127.0.0.1 from each, and a c_rehash directory
 *  holding only the other CA (a stand-in for /etc/ssl/certs). */
struct Pki {
  std::string dir;
  bool ok = false;
  Pki() {
    dir = std::filesystem::temp_directory_path() / ("kst-pki-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir + "/system");
    std::string script = "set -e; cd '" + dir + "'; "
        "ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "  -keyout $1.key -out $1.crt -days 2 -subj /CN=$1 2>/dev/null; }; "
        "leaf() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "  -keyout $1.key -out $1.csr -subj /CN=127.0.0.1 2>/dev/null; "
        "  printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext; "
        "  openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -days 2 "
        "  -extfile san.ext -out $1.crt 2>/dev/null; }; "
        "ca cluster-ca; ca other-ca; leaf by-cluster cluster-ca; leaf by-other other-ca; "
        "cp other-ca.crt system/; openssl rehash system >/dev/null 2>&1";
    std::ofstream(dir + "/make.sh") << script << "\n";
    ok = std::system(("bash '" + dir + "/make.sh'").c_str()) == 0;
  }
  ~Pki() { std::filesystem::remove_all(dir); }
  std::string read(const std::string& f) const {
    std::ifstream in(dir + "/" + f);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
};

/** An HTTPS server (cpp-httplib) presenting cert/key; records the bearer tokens it receives. */
class TlsServer {
 public:
  TlsServer(const std::string& cert, const std::string& key) : srv_(cert.c_str(), key.c_str()) {
    srv_.Get("/api", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard lk(mu_);
      tokens_.push_back(req.get_header_value("Authorization"));
      res.set_content("{}", "application/json");
    });
    port_ = srv_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { srv_.listen_after_bind(); });
    while (port_ > 0 && !srv_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~TlsServer() {
    srv_.stop();
    thread_.join();
  }
  bool ok() const { return srv_.is_valid() && port_ > 0; }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_); }
  std::vector<std::string> tokens() {
    std::lock_guard lk(mu_);
    return tokens_;
  }

 private:
  httplib::SSLServer srv_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> tokens_;
};

TEST(CurlTransport, ConfiguredCaIsTheOnlyTrustedOneTheSystemStoreIsNotConsulted) {
  Pki pki;
  ASSERT_TRUE(pki.ok) << "openssl failed in " << pki.dir;
  TlsServer byCluster(pki.dir + "/by-cluster.crt", pki.dir + "/by-cluster.key");
  TlsServer byOther(pki.dir + "/by-other.crt", pki.dir + "/by-other.key");
  ASSERT_TRUE(byCluster.ok() && byOther.ok());
  CurlTransportOptions system{.systemCaPath = pki.dir + "/system"};
  auto get = [&](const std::string& server, const std::string& caPem) {
    ClientConfig cfg;
    cfg.server = server;
    cfg.caPem = caPem;
    cfg.token = "secret-token";
    auto t = CurlTransport::create(cfg, system);
    EXPECT_TRUE(t);
    return (*t)->perform({.path = "/api"});
  };
  // Without a configured CA the system store decides: the other CA is in it, the cluster CA not.
  auto sys = get(byOther.url(), "");
  ASSERT_TRUE(sys) << sys.error().message;
  EXPECT_EQ(sys->status, 200);
  EXPECT_FALSE(get(byCluster.url(), "")) << "the cluster CA is not in the system store";
  // With the cluster CA configured: only it. A server certified by the other CA is refused
  // although that CA is in the system store, and never sees the token.
  size_t otherTokens = byOther.tokens().size();
  auto refused = get(byOther.url(), pki.read("cluster-ca.crt"));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("certificate"), std::string::npos)
      << refused.error().message;
  EXPECT_EQ(byOther.tokens().size(), otherTokens);
  auto accepted = get(byCluster.url(), pki.read("cluster-ca.crt"));
  ASSERT_TRUE(accepted) << accepted.error().message;
  EXPECT_EQ(accepted->status, 200);
  EXPECT_EQ(byCluster.tokens(), std::vector<std::string>{"Bearer secret-token"});
}

TEST(UrlEncode, EncodesReservedCharacters) {
  EXPECT_EQ(urlEncode("a=b&c d/é"), "a%3Db%26c%20d%2F%C3%A9");
  EXPECT_EQ(urlEncode("eyJ2Ijo-_.~"), "eyJ2Ijo-_.~");
}

}  // namespace
}  // namespace kst::k8s
