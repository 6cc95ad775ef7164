// libFuzzer target: the published bucket table decoder (desired/published.h). Its input is
// stored where only the tunnel tier writes, but is decoded as untrusted: any bytes must yield
// nullopt or a table that satisfies the invariants the planner relies on.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "desired/published.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto t = kst::decodePublished(text);
  if (!t) return 0;
  if (t->buckets == 0 || t->table.size() != t->buckets) std::abort();
  for (int32_t i : t->table)
    if (i < -1 || i >= static_cast<int32_t>(t->endpoints.size())) std::abort();
  return 0;
}
