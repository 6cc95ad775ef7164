#include "linux/netlink_socket.h"

#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <unordered_map>

#include <fmt/format.h>

namespace kst::nl {

namespace {
constexpr long kReceiveTimeoutSeconds = 30;
constexpr size_t kSendChunk = 60 * 1024;
constexpr size_t kRxBuffer = 256 * 1024;
}  // namespace

Socket::Socket(mnl_socket* s)
    : sock_(s), portId_(mnl_socket_get_portid(s)), seq_(static_cast<uint32_t>(time(nullptr))),
      rx_(kRxBuffer) {}

Socket::~Socket() { mnl_socket_close(sock_); }

Result<std::unique_ptr<Socket>> Socket::open() {
  mnl_socket* s = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
  if (!s) return sysFail(errno, "netlink socket");
  if (mnl_socket_bind(s, 0, MNL_SOCKET_AUTOPID) < 0) {
    int e = errno;
    mnl_socket_close(s);
    return sysFail(e, "netlink bind");
  }
  int one = 1;
  mnl_socket_setsockopt(s, NETLINK_EXT_ACK, &one, sizeof one);
  mnl_socket_setsockopt(s, NETLINK_CAP_ACK, &one, sizeof one);
  int rcvbuf = 8 * 1024 * 1024;
  setsockopt(mnl_socket_get_fd(s), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
  // A reply that never comes (an ack lost to a receive-buffer overrun, a stuck kernel path)
  // must become an error the daemon retries, not a reconcile thread blocked forever.
  timeval tv{kReceiveTimeoutSeconds, 0};
  setsockopt(mnl_socket_get_fd(s), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return std::unique_ptr<Socket>(new Socket(s));
}

namespace {

std::string extAckMessage(const nlmsghdr* h) {
  // With NETLINK_EXT_ACK and NETLINK_CAP_ACK the error message is followed by TLVs.
  if (!(h->nlmsg_flags & NLM_F_ACK_TLVS)) return {};
  size_t off = sizeof(nlmsgerr);
  std::string msg;
  for (auto* a = static_cast<const nlattr*>(mnl_nlmsg_get_payload_offset(h, off));
       mnl_attr_ok(a, static_cast<int>(static_cast<const char*>(mnl_nlmsg_get_payload_tail(h)) - reinterpret_cast<const char*>(a)));
       a = mnl_attr_next(a)) {
    if (mnl_attr_get_type(a) == NLMSGERR_ATTR_MSG) msg = mnl_attr_get_str(a);
  }
  return msg;
}

}  // namespace

Result<std::vector<RequestError>> Socket::transact(std::vector<Message>& requests) {
  std::vector<RequestError> errors;
  size_t next = 0;
  while (next < requests.size()) {
    // Pack a chunk of requests into one send.
    std::vector<uint8_t> out;
    std::unordered_map<uint32_t, size_t> pending;  // seq → index
    size_t first = next;
    // NOTE Performance: only the last request of a send asks for an ack. The kernel handles
    // the requests of one send in order and answers every failed one with an error whether or
    // not it asked for an ack, so the last request's ack means every earlier one was handled,
    // and the errors that came before it are all there are (≈ 1.3× the route rate of reading
    // one ack per request, bench/README.md `converge`).
    nlmsghdr* lastHdr = nullptr;
    while (next < requests.size() &&
           (out.empty() || out.size() + requests[next].size() <= kSendChunk)) {
      auto& m = requests[next];
      auto* h = reinterpret_cast<nlmsghdr*>(m.data());
      h->nlmsg_seq = ++seq_;
      h->nlmsg_flags &= static_cast<uint16_t>(~NLM_F_ACK);
      pending.emplace(h->nlmsg_seq, next);
      out.insert(out.end(), m.begin(), m.end());
      lastHdr = reinterpret_cast<nlmsghdr*>(out.data() + out.size() - m.size());
      ++next;
    }
    lastHdr->nlmsg_flags |= NLM_F_ACK;
    const uint32_t lastSeq = lastHdr->nlmsg_seq;
    if (mnl_socket_sendto(sock_, out.data(), out.size()) < 0)
      return sysFail(errno, fmt::format("netlink send of {} requests", next - first));
    sent_ += next - first;
    bool done = false;
    while (!done) {
      ssize_t n = mnl_socket_recvfrom(sock_, rx_.data(), rx_.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          return fail(ETIMEDOUT, fmt::format("netlink: no answer from the kernel within {} s",
                                             kReceiveTimeoutSeconds));
        return sysFail(errno, "netlink receive");
      }
      int len = static_cast<int>(n);
      for (auto* h = reinterpret_cast<const nlmsghdr*>(rx_.data()); mnl_nlmsg_ok(h, len);
           h = mnl_nlmsg_next(h, &len)) {
        if (h->nlmsg_type != NLMSG_ERROR) continue;
        auto it = pending.find(h->nlmsg_seq);
        if (it == pending.end()) continue;
        auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h));
        if (err->error != 0) {
          int code = -err->error;
          std::string text = std::strerror(code);
          std::string ext = extAckMessage(h);
          if (!ext.empty()) text += " (" + ext + ")";
          errors.push_back({it->second, code,
                            fmt::format("{}: {}", describe(requests[it->second]), text)});
        }
        if (h->nlmsg_seq == lastSeq) done = true;
        pending.erase(it);
      }
    }
  }
  return errors;
}

Status Socket::dump(Message request, const std::function<void(const nlmsghdr*)>& onMessage) {
  auto* h = reinterpret_cast<nlmsghdr*>(request.data());
  h->nlmsg_seq = ++seq_;
  uint32_t seq = h->nlmsg_seq;
  if (mnl_socket_sendto(sock_, request.data(), request.size()) < 0)
    return sysFail(errno, "netlink dump send");
  ++sent_;
  struct Ctx {
    const std::function<void(const nlmsghdr*)>* fn;
  } ctx{&onMessage};
  auto cb = [](const nlmsghdr* m, void* data) -> int {
    (*static_cast<Ctx*>(data)->fn)(m);
    return MNL_CB_OK;
  };
  while (true) {
    ssize_t n = mnl_socket_recvfrom(sock_, rx_.data(), rx_.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return fail(ETIMEDOUT, fmt::format("netlink dump: no answer from the kernel within {} s",
                                           kReceiveTimeoutSeconds));
      return sysFail(errno, "netlink dump receive");
    }
    int ret = mnl_cb_run(rx_.data(), static_cast<size_t>(n), seq, portId_, cb, &ctx);
    if (ret == MNL_CB_STOP) return {};
    if (ret < 0) {
      if (errno == EINTR) continue;  // NLM_F_DUMP_INTR: caller retries on next reconcile
      return sysFail(errno, "netlink dump");
    }
  }
}

}  // namespace kst::nl
