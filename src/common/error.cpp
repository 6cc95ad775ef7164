#include "common/error.h"

#include <cstring>

namespace kst {

std::string Error::str() const { return message; }

std::unexpected<Error> sysFail(int code, const std::string& what) {
  return std::unexpected(Error{code, fmt::format("{}: {}", what, std::strerror(code))});
}

}  // namespace kst
