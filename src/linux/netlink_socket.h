// The only owner of rtnetlink sockets. One socket per network namespace: a socket created
// while a thread is inside a namespace keeps talking to that namespace afterwards, so the
// agent programs pod namespaces without ever moving the daemon's main thread (netns.h).
//
// NOTE Performance: requests are packed many per sendmsg() (up to ~64 KiB per send), the last
// of each send carries NLM_F_ACK (the kernel answers every failed request with an error anyway),
// and every error is matched by sequence number so that it is reported against the exact
// request that caused it (docs/dataplane-notes.md "Batching
// rtnetlink": batching is the difference between ~1k and ~300k changes/s).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "linux/netlink_codec.h"

struct mnl_socket;

namespace kst::nl {

struct RequestError {
  size_t index;  // position in the batch
  int code;      // positive errno
  std::string message;  // with the kernel's extended ack text when present
};

class Socket {
 public:
  /** Opens a NETLINK_ROUTE socket in the calling thread's current network namespace. */
  static Result<std::unique_ptr<Socket>> open();
  ~Socket();
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  /**
   * Sends all requests (batched) and waits until the kernel has handled each of them.
   * @return per-request failures (empty when all succeeded), or an Error when the socket
   *   itself failed.
   */
  Result<std::vector<RequestError>> transact(std::vector<Message>& requests);

  /** Runs a dump request; calls onMessage for every message of the reply. */
  Status dump(Message request, const std::function<void(const nlmsghdr*)>& onMessage);

  /** Number of requests sent through this socket so far (for tests and benchmarks). */
  uint64_t requestsSent() const { return sent_; }

 private:
  explicit Socket(mnl_socket* s);
  mnl_socket* sock_;
  uint32_t portId_;
  uint32_t seq_;
  uint64_t sent_ = 0;
  std::vector<uint8_t> rx_;
};

}  // namespace kst::nl
