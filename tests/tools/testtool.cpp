// kst-testtool: the traffic side of the end-to-end tests and the demo.
//   serve NAME [PORT [plain]]  TCP+UDP server; answers every request with "NAME <peer-ip>\n".
//                              UDP replies leave from the address the request was sent to
//                              (IP_PKTINFO), so a VIP request is answered from the VIP; with
//                              "plain" it answers like most servers bound to 0.0.0.0 (no
//                              IP_PKTINFO: the kernel picks the pod's own address).
//   tcp HOST PORT COUNT [SPORT] COUNT connections (distinct source ports, SPORT+i if given),
//                              prints each answer ("FAIL" for none)
//   udp HOST PORT COUNT [SIZE [SPORT]]
//                              COUNT datagrams from distinct sockets, prints each answer; with
//                              SIZE > 0, each datagram carries SIZE bytes and must not be
//                              fragmented on the way (DF / IPV6_DONTFRAG); with SPORT, socket i
//                              sends from source port SPORT+i
//   udpstream HOST PORT SPORT SECONDS MS
//                              one UDP flow (fixed source port SPORT, like a QUIC or DNS client)
//                              sending a datagram every MS ms for SECONDS; prints
//                              "<ms since start> <answer>" for each answer; errors (ICMP
//                              unreachable) are ignored, the flow keeps sending
//   hold HOST PORT SECONDS N [POD]
//                              N long-lived TCP connections (only ones answered by POD, if
//                              given) exchanging a line every 50 ms; a connection fails when an
//                              answer is missing (reset, stall > 3 s) or comes from another pod;
//                              prints "ok N" or "failed K" at the end (exit 1 on any failure),
//                              after "stall MS END LAST" when an exchange took over 100 ms: the
//                              longest one's duration and end, and the end of the last such
//                              one (ms since the epoch; bench/announce_failover.sh)
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

bool resolve(const char* host, int port, sockaddr_storage& ss, socklen_t& len) {
  std::memset(&ss, 0, sizeof ss);
  auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    len = sizeof *s4;
    return true;
  }
  if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    len = sizeof *s6;
    return true;
  }
  return false;
}

std::string peerString(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof buf);
  else {
    auto* a = &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a)) inet_ntop(AF_INET, &a->s6_addr[12], buf, sizeof buf);
    else inet_ntop(AF_INET6, a, buf, sizeof buf);
  }
  return buf;
}

int serve(const std::string& name, int port, bool plain) {
  int t = socket(AF_INET6, SOCK_STREAM, 0);
  int u = socket(AF_INET6, SOCK_DGRAM, 0);
  int zero = 0, one = 1;
  for (int s : {t, u}) {
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      perror("bind");
      return 1;
    }
  }
  if (!plain) {
    setsockopt(u, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
    setsockopt(u, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
  }
  listen(t, 1024);
  std::thread([u, name] {
    static char buf[65536];  // whole datagrams, also jumbo ones (tests/privileged/mss_test.cpp)
    char cbuf[256];
    while (true) {
      sockaddr_storage peer{};
      iovec iov{buf, sizeof buf};
      msghdr m{};
      m.msg_name = &peer;
      m.msg_namelen = sizeof peer;
      m.msg_iov = &iov;
      m.msg_iovlen = 1;
      m.msg_control = cbuf;
      m.msg_controllen = sizeof cbuf;
      ssize_t n = recvmsg(u, &m, 0);
      if (n < 0) continue;
      std::string reply = name + " " + peerString(peer) + "\n";
      // Answer from the destination address of the request (the VIP): echo the pktinfo back.
      iovec riov{reply.data(), reply.size()};
      msghdr r{};
      r.msg_name = &peer;
      r.msg_namelen = m.msg_namelen;
      r.msg_iov = &riov;
      r.msg_iovlen = 1;
      char rc[256] = {};
      size_t clen = 0;
      for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) ||
            (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO)) {
          std::memcpy(rc + clen, c, c->cmsg_len);
          auto* rcm = reinterpret_cast<cmsghdr*>(rc + clen);
          if (rcm->cmsg_type == IP_PKTINFO) {
            auto* pi = reinterpret_cast<in_pktinfo*>(CMSG_DATA(rcm));
            pi->ipi_spec_dst = pi->ipi_addr;
            pi->ipi_ifindex = 0;
          } else {
            reinterpret_cast<in6_pktinfo*>(CMSG_DATA(rcm))->ipi6_ifindex = 0;
          }
          clen += CMSG_SPACE(c->cmsg_len - CMSG_LEN(0));
        }
      }
      r.msg_control = clen ? rc : nullptr;
      r.msg_controllen = clen;
      sendmsg(u, &r, 0);
    }
  }).detach();
  while (true) {
    sockaddr_storage peer{};
    socklen_t pl = sizeof peer;
    int c = accept(t, reinterpret_cast<sockaddr*>(&peer), &pl);
    if (c < 0) continue;
    std::thread([c, peer, name] {
      std::string reply = name + " " + peerString(peer) + "\n";
      char buf[512];
      while (true) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n <= 0) break;
        if (write(c, reply.data(), reply.size()) < 0) break;
      }
      close(c);
    }).detach();
  }
}

int connectTo(const char* host, int port, int timeoutMs, int srcPort = 0) {
  sockaddr_storage ss;
  socklen_t len;
  if (!resolve(host, port, ss, len)) return -1;
  int s = socket(ss.ss_family, SOCK_STREAM, 0);
  if (srcPort) {
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_storage src{};
    src.ss_family = ss.ss_family;
    if (ss.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&src)->sin_port = htons(srcPort);
    else reinterpret_cast<sockaddr_in6*>(&src)->sin6_port = htons(srcPort);
    if (bind(s, reinterpret_cast<sockaddr*>(&src), len) != 0) {
      close(s);
      return -1;
    }
  }
  timeval tv{timeoutMs / 1000, (timeoutMs % 1000) * 1000};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(s, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    close(s);
    return -1;
  }
  return s;
}

std::string exchange(int s) {
  if (write(s, "hi\n", 3) != 3) return {};
  char buf[512];
  ssize_t n = read(s, buf, sizeof buf - 1);
  if (n <= 0) return {};
  buf[n] = 0;
  std::string r(buf);
  while (!r.empty() && r.back() == '\n') r.pop_back();
  return r;
}

int tcp(const char* host, int port, int count, int srcBase) {
  int fails = 0;
  for (int i = 0; i < count; ++i) {
    int s = connectTo(host, port, 2000, srcBase ? srcBase + i : 0);
    std::string r = s >= 0 ? exchange(s) : "";
    if (s >= 0) {
      // Reset instead of TIME_WAIT so that fixed source ports can be reused at once.
      linger lg{1, 0};
      setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    if (r.empty()) {
      ++fails;
      std::printf("FAIL\n");
    } else {
      std::printf("%s\n", r.c_str());
    }
    if (s >= 0) close(s);
  }
  return fails ? 1 : 0;
}

int udp(const char* host, int port, int count, int size, int srcBase) {
  sockaddr_storage ss;
  socklen_t len;
  if (!resolve(host, port, ss, len)) return 2;
  std::string payload = size > 0 ? std::string(static_cast<size_t>(size), 'x') : "hi\n";
  int fails = 0;
  for (int i = 0; i < count; ++i) {
    int s = socket(ss.ss_family, SOCK_DGRAM, 0);
    timeval tv{1, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (srcBase) {
      int one = 1;
      setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      sockaddr_storage src{};
      src.ss_family = ss.ss_family;
      if (ss.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&src)->sin_port = htons(srcBase + i);
      else reinterpret_cast<sockaddr_in6*>(&src)->sin6_port = htons(srcBase + i);
      if (bind(s, reinterpret_cast<sockaddr*>(&src), len) != 0) {
        close(s);
        ++fails;
        std::printf("FAIL\n");
        continue;
      }
    }
    if (size > 0) {
      int dont = IP_PMTUDISC_PROBE, one = 1;  // DF, but never refused locally from a cached PMTU
      if (ss.ss_family == AF_INET) setsockopt(s, IPPROTO_IP, IP_MTU_DISCOVER, &dont, sizeof dont);
      else setsockopt(s, IPPROTO_IPV6, IPV6_DONTFRAG, &one, sizeof one);
    }
    // connect(): only a reply from the VIP itself is accepted, as a real client would.
    connect(s, reinterpret_cast<sockaddr*>(&ss), len);
    char buf[512];
    ssize_t n = -1;
    for (int attempt = 0; attempt < 3 && n <= 0; ++attempt) {
      send(s, payload.data(), payload.size(), 0);
      n = recv(s, buf, sizeof buf - 1, 0);
    }
    close(s);
    if (n <= 0) {
      ++fails;
      std::printf("FAIL\n");
      continue;
    }
    buf[n] = 0;
    std::string r(buf);
    while (!r.empty() && r.back() == '\n') r.pop_back();
    std::printf("%s\n", r.c_str());
  }
  return fails ? 1 : 0;
}

int udpstream(const char* host, int port, int sport, int seconds, int intervalMs) {
  sockaddr_storage ss;
  socklen_t len;
  if (!resolve(host, port, ss, len)) return 2;
  int s = socket(ss.ss_family, SOCK_DGRAM, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_storage local{};
  local.ss_family = ss.ss_family;
  if (ss.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&local)->sin_port = htons(sport);
  else reinterpret_cast<sockaddr_in6*>(&local)->sin6_port = htons(sport);
  if (bind(s, reinterpret_cast<sockaddr*>(&local), len) != 0) {
    perror("bind");
    return 1;
  }
  // connect(): only answers from the VIP itself count.
  connect(s, reinterpret_cast<sockaddr*>(&ss), len);
  const auto start = std::chrono::steady_clock::now();
  const auto end = start + std::chrono::seconds(seconds);
  auto next = start;
  char buf[512];
  while (std::chrono::steady_clock::now() < end) {
    auto now = std::chrono::steady_clock::now();
    if (now >= next) {
      send(s, "hi\n", 3, 0);  // an error here is a queued ICMP error: keep sending
      next += std::chrono::milliseconds(intervalMs);
      continue;
    }
    pollfd p{s, POLLIN, 0};
    int wait = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count());
    if (poll(&p, 1, std::max(wait, 1)) <= 0) continue;
    ssize_t n = recv(s, buf, sizeof buf - 1, 0);
    if (n <= 0) continue;  // ECONNREFUSED/EHOSTUNREACH from an ICMP error
    buf[n] = 0;
    std::string r(buf);
    while (!r.empty() && r.back() == '\n') r.pop_back();
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - start).count();
    std::printf("%lld %s\n", static_cast<long long>(ms), r.c_str());
  }
  close(s);
  return 0;
}

int hold(const char* host, int port, int seconds, int n, const std::string& pod) {
  std::vector<int> socks;
  std::vector<std::string> first;
  for (int attempts = 0; static_cast<int>(socks.size()) < n; ++attempts) {
    if (attempts > 100 * n) {
      std::printf("could not get %d connections to %s\n", n, pod.c_str());
      return 1;
    }
    int s = connectTo(host, port, 3000);
    if (s < 0) {
      std::printf("connect failed\n");
      return 1;
    }
    std::string r = exchange(s);
    if (!pod.empty() && r.rfind(pod + " ", 0) != 0) {  // only keep connections to POD
      close(s);
      continue;
    }
    socks.push_back(s);
    first.push_back(r);
  }
  std::printf("established %d\n", n);
  std::fflush(stdout);
  int failed = 0;
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  std::vector<bool> dead(n, false);
  long long longestMs = 0, longestEnd = 0, lastStallEnd = 0;
  while (std::chrono::steady_clock::now() < end) {
    for (int i = 0; i < n; ++i) {
      if (dead[i]) continue;
      auto t0 = std::chrono::steady_clock::now();
      std::string r = exchange(socks[i]);
      auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - t0).count();
      if (took > 100) {
        lastStallEnd = std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch()).count();
        if (took > longestMs) {
          longestMs = took;
          longestEnd = lastStallEnd;
        }
      }
      if (r != first[i]) {
        dead[i] = true;
        ++failed;
        std::printf("connection %d broke: %s -> %s\n", i, first[i].c_str(), r.c_str());
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (int s : socks) close(s);
  if (longestMs) std::printf("stall %lld %lld %lld\n", longestMs, longestEnd, lastStallEnd);
  if (failed) {
    std::printf("failed %d\n", failed);
    return 1;
  }
  std::printf("ok %d\n", n);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "serve" && argc >= 3)
    return serve(argv[2], argc > 3 ? std::atoi(argv[3]) : 8080,
                 argc > 4 && std::string(argv[4]) == "plain");
  if (cmd == "tcp" && (argc == 5 || argc == 6))
    return tcp(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), argc == 6 ? std::atoi(argv[5]) : 0);
  if (cmd == "udp" && argc >= 5 && argc <= 7)
    return udp(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), argc >= 6 ? std::atoi(argv[5]) : 0,
               argc == 7 ? std::atoi(argv[6]) : 0);
  if (cmd == "udpstream" && argc == 7)
    return udpstream(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]),
                     std::atoi(argv[6]));
  if (cmd == "hold" && (argc == 6 || argc == 7))
    return hold(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]),
                argc == 7 ? argv[6] : "");
  std::fprintf(stderr, "usage: kst-testtool serve NAME [PORT] | tcp HOST PORT COUNT [SPORT] | udp HOST PORT COUNT [SIZE [SPORT]] | "
               "udpstream HOST PORT SPORT SECONDS MS | hold HOST PORT SECONDS N\n");
  return 2;
}
