// kb-load: traffic for the dataplane benchmark (bench/dataplane.sh).
//   udp HOST PORT SECONDS [FLOWS]  small UDP datagrams (18-byte payload: 64-byte frames) as
//                                  fast as one thread can, sendmmsg() 64 at a time, from
//                                  FLOWS sockets (distinct source ports, round robin);
//                                  prints "sent=N pps=X"
//   tcp-sink PORT                  accepts TCP connections and discards what they send
//   tcp HOST PORT SECONDS          one connection, 128 KiB writes; prints "bytes=N gbps=X"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

sockaddr_in addr(const char* host, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
    fprintf(stderr, "bad IPv4 address %s\n", host);
    exit(2);
  }
  return a;
}

int udp(const char* host, int port, double seconds, int flows) {
  auto dst = addr(host, port);
  std::vector<int> socks;
  for (int i = 0; i < flows; ++i) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (connect(s, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0) {
      perror("connect");
      return 1;
    }
    socks.push_back(s);
  }
  constexpr int kBatch = 64;
  char payload[18] = "kube-service-tun";
  iovec iov{payload, sizeof payload};
  mmsghdr msgs[kBatch]{};
  for (auto& m : msgs) {
    m.msg_hdr.msg_iov = &iov;
    m.msg_hdr.msg_iovlen = 1;
  }
  uint64_t sent = 0;
  auto t0 = Clock::now();
  auto end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  size_t k = 0;
  while (Clock::now() < end) {
    for (int i = 0; i < 16; ++i) {
      int n = sendmmsg(socks[k++ % socks.size()], msgs, kBatch, 0);
      if (n > 0) sent += static_cast<uint64_t>(n);
    }
  }
  double t = std::chrono::duration<double>(Clock::now() - t0).count();
  printf("sent=%llu pps=%.0f\n", static_cast<unsigned long long>(sent), static_cast<double>(sent) / t);
  return 0;
}

int tcpSink(int port) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(s, 16) != 0) {
    perror("bind/listen");
    return 1;
  }
  while (true) {
    int c = accept(s, nullptr, nullptr);
    if (c < 0) continue;
    std::thread([c] {
      std::vector<char> buf(1 << 18);
      while (read(c, buf.data(), buf.size()) > 0) {
      }
      close(c);
    }).detach();
  }
}

int tcp(const char* host, int port, double seconds) {
  auto dst = addr(host, port);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{3, 0};
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(s, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0) {
    perror("connect");
    return 1;
  }
  std::vector<char> buf(128 * 1024, 'x');
  uint64_t bytes = 0;
  auto t0 = Clock::now();
  auto end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  while (Clock::now() < end) {
    ssize_t n = write(s, buf.data(), buf.size());
    if (n <= 0) break;
    bytes += static_cast<uint64_t>(n);
  }
  double t = std::chrono::duration<double>(Clock::now() - t0).count();
  close(s);
  printf("bytes=%llu gbps=%.3f\n", static_cast<unsigned long long>(bytes),
         static_cast<double>(bytes) * 8 / t / 1e9);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "udp" && argc >= 5)
    return udp(argv[2], std::atoi(argv[3]), std::atof(argv[4]), argc > 5 ? std::atoi(argv[5]) : 16);
  if (cmd == "tcp-sink" && argc == 3) return tcpSink(std::atoi(argv[2]));
  if (cmd == "tcp" && argc == 5) return tcp(argv[2], std::atoi(argv[3]), std::atof(argv[4]));
  fprintf(stderr, "usage: kb-load udp HOST PORT SECONDS [FLOWS] | tcp-sink PORT | tcp HOST PORT SECONDS\n");
  return 2;
}
