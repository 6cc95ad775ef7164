// kst-tcpbulk: bulk TCP for the MSS clamping test (tests/privileged/mss_test.cpp).
//   sink PORT               accepts TCP connections (IPv4 and IPv6), reads and discards
//                           everything, closes at the peer's EOF
//   send HOST PORT BYTES    one connection: sends BYTES, half-closes, waits for the sink to
//                           close; prints "mss=M ts=T sent=N": M is the sender's MSS
//                           (TCP_INFO tcpi_snd_mss = the peer's announced MSS minus the TCP
//                           options it sends, 12 with timestamps), T 1 if timestamps are in use
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

int sink(int port) {
  int t = socket(AF_INET6, SOCK_STREAM, 0);
  int zero = 0, one = 1;
  setsockopt(t, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  if (bind(t, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(t, 64) != 0) {
    perror("bind/listen");
    return 1;
  }
  while (true) {
    int c = accept(t, nullptr, nullptr);
    if (c < 0) continue;
    std::thread([c] {
      std::vector<char> buf(1 << 16);
      while (read(c, buf.data(), buf.size()) > 0) {
      }
      close(c);
    }).detach();
  }
}

int send(const char* host, int port, long bytes) {
  sockaddr_storage ss{};
  socklen_t len;
  auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    len = sizeof *s4;
  } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    len = sizeof *s6;
  } else {
    return 2;
  }
  int s = socket(ss.ss_family, SOCK_STREAM, 0);
  timeval tv{5, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(s, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    std::printf("FAIL connect: %s\n", std::strerror(errno));
    return 1;
  }
  tcp_info ti{};
  socklen_t tl = sizeof ti;
  getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &tl);
  std::vector<char> buf(1 << 16, 'x');
  long sent = 0;
  while (sent < bytes) {
    ssize_t n = write(s, buf.data(), std::min<long>(buf.size(), bytes - sent));
    if (n <= 0) {
      std::printf("FAIL write after %ld: %s\n", sent, std::strerror(errno));
      return 1;
    }
    sent += n;
  }
  shutdown(s, SHUT_WR);
  char c;
  if (read(s, &c, 1) != 0) {  // EOF once the sink has read everything
    std::printf("FAIL no EOF from the sink\n");
    return 1;
  }
  close(s);
  std::printf("mss=%u ts=%d sent=%ld\n", ti.tcpi_snd_mss,
              (ti.tcpi_options & TCPI_OPT_TIMESTAMPS) ? 1 : 0, sent);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "sink" && argc == 3) return sink(std::atoi(argv[2]));
  if (cmd == "send" && argc == 5) return send(argv[2], std::atoi(argv[3]), std::atol(argv[4]));
  std::fprintf(stderr, "usage: kst-tcpbulk sink PORT | send HOST PORT BYTES\n");
  return 2;
}
