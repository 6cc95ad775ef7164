#include "linux/bpf_util.h"

#include <algorithm>
#include <cstdio>
#include <string_view>

#include <spdlog/spdlog.h>

namespace kst::bpf {

namespace {

int libbpfLog(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG || !spdlog::should_log(spdlog::level::debug)) return 0;
  char buf[512];
  int n = std::vsnprintf(buf, sizeof(buf), fmt, args);
  std::string_view msg(buf, n > 0 ? std::min<size_t>(size_t(n), sizeof(buf) - 1) : 0);
  while (!msg.empty() && msg.back() == '\n') msg.remove_suffix(1);
  spdlog::debug("libbpf: {}", msg);
  return 0;
}

}  // namespace

void logLibbpfAtDebug() {
  static const bool once = (libbpf_set_print(libbpfLog), true);
  (void)once;
}

}  // namespace kst::bpf
