// /metrics scrape time at V VIPs × E endpoints (daemon/metrics.h): a counter snapshot of that
// size (what the router's nft counters give: one counter per VIP, per (VIP, endpoint), per
// refusal reason and refused VIP) and the VIPs' names, through the scrape path the health
// server calls: Metrics::render() = the registry's families (prometheus-cpp's TextSerializer)
// + the snapshot's series and the announcement state, written directly (appendCounterText,
// appendAnnounceText). Reading the counters from the kernel is not part of it (the source
// returns a prepared snapshot; it is copied per scrape as a real reader's result would be
// built).
//   kb-metrics V E REPS
// Side by side in the same run (interleaved), the earlier scrape path ("before"): every family
// as prometheus-cpp MetricFamily objects (counterFamilies, announceFamilies) serialized by its
// TextSerializer; and the snapshot's part alone both ways: families_ms + serialize_ms (library)
// against write_ms (direct).
// Then the scrape through the health server as Prometheus asks for it (GET /metrics on
// 127.0.0.1 with Accept-Encoding: gzip, read until the server closes): wall time and bytes on
// the wire.
// Output: RESULT bench=metrics V=… E=… series=… bytes=… render_ms_p50=… render_ms_max=…
//         render_before_ms_p50=… render_before_ms_max=… families_ms_p50=… serialize_ms_p50=…
//         write_ms_p50=… http_gzip_ms_p50=… http_gzip_bytes=… same_text=… load=…
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/health.h"
#include "daemon/metrics.h"

namespace {

using Clock = std::chrono::steady_clock;

double ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

kst::IpAddress v4(uint32_t base, uint32_t i) {
  uint32_t a = base + i;
  return *kst::IpAddress::parse(std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) +
                                "." + std::to_string((a >> 8) & 255) + "." +
                                std::to_string(a & 255));
}

/** GET /metrics as Prometheus asks for it; the whole answer (headers + body), "" on failure. */
std::string scrape(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    std::string req = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n"
                      "Connection: close\r\n\r\n";
    if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) == ssize_t(req.size())) {
      char buf[65536];
      for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) out.append(buf, size_t(n));
    }
  }
  close(fd);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s VIPS ENDPOINTS_PER_VIP REPS\n", argv[0]);
    return 2;
  }
  uint32_t v = uint32_t(std::atoi(argv[1])), e = uint32_t(std::atoi(argv[2]));
  int reps = std::max(1, std::atoi(argv[3]));
  kst::Model model;
  kst::dp::NftCounterSnapshot snap;
  std::set<kst::IpAddress> announced;
  for (uint32_t i = 0; i < v; ++i) {
    auto vip = v4(0xC6120000u, i);  // 198.18.0.0/15
    kst::TunnelService s{{"ns-" + std::to_string(i % 100), "svc-" + std::to_string(i)}, vip, {}};
    model.services.push_back(s);
    // Realistic magnitudes: counters of a busy node (many digits to print).
    snap.vip[vip] = {1000003ull * (i + 1), 1400000042ull * (i + 1)};
    snap.refusedByVip[vip] = {uint64_t(i % 7), uint64_t(i % 7) * 60};
    for (uint32_t j = 0; j < e; ++j)
      snap.endpoint[{vip, v4(0x0A000000u, i * e + j)}] = {250001ull * (i + j + 1),
                                                          350000011ull * (i + j + 1)};
    if (i % 2 == 0) announced.insert(vip);
  }
  snap.refused = {{"no_bucket", {12, 720}}, {"source_range", {3456, 207360}}};
  snap.flows4 = 123456;
  snap.flowLimit = 1 << 20;
  std::sort(model.services.begin(), model.services.end(),
            [](auto& a, auto& b) { return a.vip < b.vip; });
  std::set<kst::IpAddress> all;
  for (auto& s : model.services) all.insert(s.vip);

  kst::Metrics m;
  for (auto r : {kst::Reconciler::Router, kst::Reconciler::Announce}) m.enable(r);
  m.pass(kst::Reconciler::Router, 0.01, 10);
  m.vipsChanged(model, all);
  m.announced(announced, false);
  m.setCounterSource([&snap] { return std::optional(snap); });

  kst::VipNames names;
  for (auto& s : model.services) names[s.vip] = s.key;
  std::vector<double> render, before, families, serialize, write;
  size_t bytes = 0, series = 0;
  bool same = true;
  // The earlier render(): the registry's families, the snapshot's (copied, as the source
  // does) and the announcement state's as MetricFamily objects, one TextSerializer pass.
  auto renderBefore = [&] {
    auto copy = snap;
    auto fams = m.registry().Collect();
    for (auto& f : kst::counterFamilies(copy, names)) fams.push_back(std::move(f));
    for (auto& f : kst::announceFamilies(announced, false, names)) fams.push_back(std::move(f));
    return kst::serializeText(fams);
  };
  for (int r = 0; r < reps; ++r) {
    // Alternating which path goes first (a drift of the machine's load hits both alike).
    std::string text, old;
    for (int k = 0; k < 2; ++k) {
      if ((k + r) % 2 == 0) {
        auto t0 = Clock::now();
        text = m.render();
        render.push_back(ms(t0, Clock::now()));
      } else {
        auto t0 = Clock::now();
        old = renderBefore();
        before.push_back(ms(t0, Clock::now()));
      }
    }
    bytes = text.size();
    same = same && text == old;
    // The snapshot's part: the library's two halves, then the direct writer.
    auto t2 = Clock::now();
    auto fams = kst::counterFamilies(snap, names);
    auto t3 = Clock::now();
    std::string t = kst::serializeText(fams);
    auto t4 = Clock::now();
    std::string w;
    kst::appendCounterText(w, snap, names);
    auto t5 = Clock::now();
    families.push_back(ms(t2, t3));
    serialize.push_back(ms(t3, t4));
    write.push_back(ms(t4, t5));
    same = same && t == w;
  }
  // Lines of the text that are not comments = series.
  {
    std::string text = m.render();
    series = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      if (text[pos] != '#') ++series;
      pos = nl == std::string::npos ? text.size() : nl + 1;
    }
  }
  // Through the health server (its default options, as the daemon runs it).
  kst::HealthServer server([] { return std::string(); });
  m.serve(server);
  if (auto st = server.start("127.0.0.1", 0); !st) {
    fprintf(stderr, "health server: %s\n", st.error().message.c_str());
    return 1;
  }
  std::vector<double> http;
  size_t wire = 0;
  bool complete = true;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    std::string answer = scrape(server.port());
    http.push_back(ms(t0, Clock::now()));
    wire = answer.size();
    complete = complete && answer.rfind("HTTP/1.1 200", 0) == 0 &&
               answer.find("Content-Encoding: gzip") != std::string::npos;
  }
  server.stop();
  if (!complete) fprintf(stderr, "a scrape through the server failed or was not gzip\n");
  std::string load;
  std::ifstream("/proc/loadavg") >> load;
  printf("RESULT bench=metrics V=%u E=%u reps=%d series=%zu bytes=%zu render_ms_p50=%.1f "
         "render_ms_max=%.1f render_before_ms_p50=%.1f render_before_ms_max=%.1f "
         "families_ms_p50=%.1f serialize_ms_p50=%.1f write_ms_p50=%.1f http_gzip_ms_p50=%.1f "
         "http_gzip_ms_max=%.1f http_gzip_bytes=%zu http_ok=%d same_text=%d load=%s\n",
         v, e, reps, series, bytes, median(render),
         *std::max_element(render.begin(), render.end()), median(before),
         *std::max_element(before.begin(), before.end()), median(families), median(serialize),
         median(write), median(http), *std::max_element(http.begin(), http.end()), wire,
         complete ? 1 : 0, same ? 1 : 0, load.c_str());
  if (!same) fprintf(stderr, "the written text differs from the serializer's\n");
  return complete && same ? 0 : 1;
}
