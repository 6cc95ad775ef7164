// Errors carry an errno (0 when not a system error) and a human message with context.
// Operating-system boundaries return Result<T> (std::expected) instead of throwing; the
// daemon decides per call site whether a failure is retried, reported or fatal.
#pragma once

#include <expected>
#include <string>

#include <fmt/format.h>

namespace kst {

struct Error {
  int code = 0;  // errno value, 0 if not a system error
  std::string message;

  std::string str() const;
  /** Same error with "context: " prepended. */
  Error wrap(const std::string& context) const { return Error{code, context + ": " + message}; }
};

template <typename T>
using Result = std::expected<T, Error>;
using Status = std::expected<void, Error>;

inline std::unexpected<Error> fail(int code, std::string message) {
  return std::unexpected(Error{code, std::move(message)});
}
inline std::unexpected<Error> fail(std::string message) {
  return std::unexpected(Error{0, std::move(message)});
}
/** errno-based failure: "<what>: <strerror(code)>". */
std::unexpected<Error> sysFail(int code, const std::string& what);

}  // namespace kst
