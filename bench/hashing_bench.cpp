// kb-hashing: bucket → endpoint assignment quality and cost, side by side:
//   rendezvous (the daemon's default), maglev (--bucket-algorithm maglev) and modulo
//   (bucket b → endpoint b mod n: the original's HMARK-only approach, where the hash modulo
//   the endpoint count picks the endpoint directly).
// For n endpoints and B buckets it prints the max/min bucket share, the fraction of buckets
// that move when one endpoint is removed or added versus the ideal 1/n (1/(n+1) for an add),
// and the table computation time (Google Benchmark) for B up to 65537.
// Output: "RESULT bench=hashing ..." lines, then Google Benchmark's own table.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "hashing/maglev.h"

namespace {

std::vector<std::string> ids(size_t n, size_t offset = 0) {
  std::vector<std::string> v;
  for (size_t i = 0; i < n; ++i)
    v.push_back(fmt::format("10.{}.{}.{}", (i + offset) >> 16 & 255, (i + offset) >> 8 & 255,
                            (i + offset) & 255));
  return v;
}

enum class Algo { Rendezvous, Maglev, Modulo };
const char* name(Algo a) {
  return a == Algo::Rendezvous ? "rendezvous" : a == Algo::Maglev ? "maglev" : "modulo";
}

/** bucket → endpoint identity. */
std::vector<std::string> assign(Algo a, const std::vector<std::string>& eps, uint32_t b) {
  std::vector<uint32_t> t;
  // Endpoints sorted by address, as the daemon passes them.
  std::vector<std::string> sorted = eps;
  std::sort(sorted.begin(), sorted.end());
  if (a == Algo::Rendezvous) t = kst::rendezvousTable(sorted, b);
  if (a == Algo::Maglev) t = kst::maglevTable(sorted, b);
  if (a == Algo::Modulo) t = kst::moduloTable(sorted.size(), b);
  std::vector<std::string> out(b);
  for (uint32_t i = 0; i < t.size(); ++i) out[i] = sorted[t[i]];
  return out;
}

double moved(const std::vector<std::string>& x, const std::vector<std::string>& y) {
  size_t m = 0;
  for (size_t i = 0; i < x.size(); ++i) m += x[i] != y[i];
  return static_cast<double>(m) / static_cast<double>(x.size());
}

void quality(Algo a, size_t n, uint32_t b) {
  auto eps = ids(n);
  auto base = assign(a, eps, b);
  std::map<std::string, size_t> share;
  for (auto& e : eps) share[e] = 0;
  for (auto& e : base) ++share[e];
  size_t mx = 0, mn = SIZE_MAX;
  for (auto& [e, c] : share) {
    mx = std::max(mx, c);
    mn = std::min(mn, c);
  }
  // Remove each endpoint in turn (averaged), add one new endpoint (averaged over 8 names).
  double rem = 0;
  size_t trials = std::min<size_t>(n, 16);
  for (size_t k = 0; k < trials; ++k) {
    auto less = eps;
    less.erase(less.begin() + static_cast<long>(k * n / trials));
    rem += moved(base, assign(a, less, b));
  }
  rem /= static_cast<double>(trials);
  double add = 0;
  for (size_t k = 0; k < 8; ++k) {
    auto more = eps;
    more.push_back(ids(1, 100000 + k * 7919)[0]);
    add += moved(base, assign(a, more, b));
  }
  add /= 8;
  double idealRem = 1.0 / static_cast<double>(n), idealAdd = 1.0 / static_cast<double>(n + 1);
  printf("RESULT bench=hashing algo=%s n=%zu B=%u max_share=%zu min_share=%zu max_over_min=%s "
         "moved_remove=%.4f ideal_remove=%.4f remove_over_ideal=%.2f moved_add=%.4f "
         "ideal_add=%.4f add_over_ideal=%.2f\n",
         name(a), n, b, mx, mn,
         mn ? fmt::format("{:.2f}", static_cast<double>(mx) / static_cast<double>(mn)).c_str()
            : "inf",
         rem, idealRem, rem / idealRem, add, idealAdd, add / idealAdd);
}

void BM_Table(benchmark::State& st, Algo a) {
  auto eps = ids(static_cast<size_t>(st.range(0)));
  uint32_t b = static_cast<uint32_t>(st.range(1));
  for (auto _ : st) {
    std::vector<uint32_t> t;
    if (a == Algo::Rendezvous) t = kst::rendezvousTable(eps, b);
    if (a == Algo::Maglev) t = kst::maglevTable(eps, b);
    if (a == Algo::Modulo) t = kst::moduloTable(eps.size(), b);
    benchmark::DoNotOptimize(t.data());
  }
  st.counters["buckets_per_s"] =
      benchmark::Counter(static_cast<double>(b), benchmark::Counter::kIsIterationInvariantRate);
}

void registerAll() {
  for (Algo a : {Algo::Rendezvous, Algo::Maglev, Algo::Modulo}) {
    auto* bm = benchmark::RegisterBenchmark(fmt::format("table/{}", name(a)).c_str(), BM_Table, a);
    for (int64_t n : {4, 64})
      for (int64_t b : {64, 256, 4099, 65537}) bm->Args({n, b});
    bm->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (Algo a : {Algo::Rendezvous, Algo::Maglev, Algo::Modulo})
    for (auto [n, b] : std::vector<std::pair<size_t, uint32_t>>{
             {4, 64}, {10, 64}, {16, 64}, {64, 64}, {4, 4099}, {100, 4099}, {1000, 65537}})
      quality(a, n, b);
  fflush(stdout);
  registerAll();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
