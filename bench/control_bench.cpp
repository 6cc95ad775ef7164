// kb-control: control-plane benchmarks of the router role, each trial in a fresh private
// network namespace (bench/common.h), real kernel, real netlink and nftables.
//
//   converge V E B REPS     cold convergence of V VIPs × E endpoints × B buckets:
//                           daemon (RouterReconciler + NetlinkClientImpl + NftClientImpl,
//                           in-process) vs `ip -batch` + `nft -f` vs raw netlink loader
//   incremental V E B N     N single-endpoint changes at V VIPs: latency source change → last
//                           ack (p50/p99) through the daemon (a source delivers one changed
//                           EndpointSlice; Daemon + ModelBuilder + RouterReconciler), netlink
//                           messages per change; then the reconciler alone given the changed
//                           model and the changed VIP (cached, the daemon's steady state; with
//                           KB_INCREMENTAL_BEFORE=1 also cached without the changed VIP, i.e.
//                           every service compared, and full re-observation per pass)
//   restart V E B           a fresh reconciler on programmed state: time to reconciled and
//                           kernel objects changed (counted by `ip monitor` and `nft monitor`)
//   plan V E B REPS         the planning CPU of a cold pass alone (RouterDb update + commit,
//                           no kernel)
//   observe V E B REPS      the nft listing of a resync/restart alone: NftClientImpl::observe()
//                           on a table loaded with V VIPs × B buckets (no routes), by fresh
//                           clients (restart) and by the daemon's long-lived one (resync: after
//                           its own write, after foreign commits to another table, of a bucket
//                           element, of a VIP element)
//
// Output: one "RESULT key=value ..." line per figure (bench/run.sh builds the table from them).
#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>

#include <spdlog/spdlog.h>

#include <random>
#include <string_view>
#include <thread>

#include "bench/common.h"
#include "bench/raw_loader.h"
#include "dataplane/diff.h"
#include "daemon/daemon.h"
#include "desired/nft_render.h"
#include "desired/router.h"
#include "desired/router_db.h"
#include "linux/netlink_client.h"
#include "linux/netlink_socket.h"
#include "linux/nft_client.h"
#include "linux/nft_codec.h"
#include "reconcile/router_reconciler.h"

using namespace kst;
using namespace kb;

namespace {

struct Daemonish {
  explicit Daemonish(const DataplaneConfig& cfg) : Daemonish(std::move(*nl::Socket::open()), cfg) {}
  /** Netlink requests sent so far (dumps and changes), counted by the client's socket. */
  uint64_t requestsSent() const { return sock->requestsSent(); }
  Daemonish(std::unique_ptr<nl::Socket> s, const DataplaneConfig& cfg)
      : sock(s.get()), nl(std::move(s), cfg), nft(cfg), rr(cfg, nl, nft) {}
  nl::Socket* sock;  // owned by nl
  NetlinkClientImpl nl;
  NftClientImpl nft;
  RouterReconciler rr;
};

/** The kernel objects the daemon would program on an empty namespace (for the baselines). */
dp::RouterState desiredOf(const Model& m, const DataplaneConfig& cfg) {
  Allocations none;
  auto plan = planRouter(m, cfg, none);
  return routerState(plan, cfg, none);
}

/** A fresh reconciler's pass must find nothing to do: the objects loaded are the daemon's. */
size_t verifyChanges(const Model& m, const DataplaneConfig& cfg) {
  Daemonish d(cfg);
  if (getenv("KB_VERBOSE")) {  // what differs, by kind
    auto o = d.rr.observe();
    if (!o) return SIZE_MAX;
    RouterDb db(cfg);
    db.seed(std::move(*o));
    auto x = db.update(m);
    auto& e = x.elements;
    fprintf(stderr,
            "verify: netlink %zu, table step %d, elements: vips -%zu +%zu buckets -%zu +%zu "
            "endpoints -%zu +%zu counts -%zu +%zu live -%zu +%zu\n",
            x.changes.size(), static_cast<int>(x.table), e.vipDeletes.size(), e.vipAdds.size(),
            e.bucketDeletes.size(), e.bucketAdds.size(), e.endpointDeletes.size(),
            e.endpointAdds.size(), e.countDeletes.size(), e.countAdds.size(),
            e.liveDeletes.size(), e.liveAdds.size());
  }
  auto r = d.rr.reconcile(m);
  if (!r) {
    fprintf(stderr, "verify: %s\n", r.error().message.c_str());
    return SIZE_MAX;
  }
  return r->changes;
}

std::string ipBatch(const dp::RouterState& st) {
  std::string s;
  for (auto& l : st.links) {
    std::string mtu = l.mtu ? fmt::format(" mtu {}", l.mtu) : "";  // --underlay-mtu − overhead
    s += fmt::format("link add {}{} type vxlan external gpe dstport {}\n", l.name, mtu, l.port);
    s += fmt::format("link set {} up\n", l.name);
  }
  for (auto& nh : st.nexthops)
    s += fmt::format("nexthop add id {} encap ip id 0 dst {} ttl {} dev {} proto 211\n", nh.id,
                     nh.encapDst->str(), nh.ttl, nh.dev);
  for (auto& r : st.routes)
    s += fmt::format("route add {}/{} nhid {} table {} proto 211\n", r.key.dst.str(),
                     r.key.prefixLen, r.nhid, r.key.table);
  for (auto& r : st.rules)
    s += fmt::format("rule add pref {} fwmark {} table {} proto 211\n", r.priority, r.fwmark,
                     r.table);
  return s;
}

int trialDaemon(uint32_t v, uint32_t e, uint32_t b) {
  auto cfg = benchConfig(b);
  auto model = benchModel(v, e);
  Daemonish d(cfg);
  d.rr.setCaching(true);  // as in the daemon: the pass also keeps its result
  auto t0 = Clock::now();
  auto r = d.rr.reconcile(model);
  double t = secondsSince(t0);
  if (!r || !r->ok()) {
    fprintf(stderr, "daemon pass failed: %s\n",
            r ? (r->failures.empty() ? "?" : r->failures[0].c_str()) : r.error().message.c_str());
    return 1;
  }
  auto& ph = r->timings;
  printf("t=%.6f changes=%zu requests=%lu observe=%.6f plan=%.6f diff=%.6f netlink=%.6f "
         "nft=%.6f verify=%zu\n",
         t, r->changes, static_cast<unsigned long>(d.requestsSent()), ph.observe, ph.plan,
         ph.diff, ph.netlink, ph.nft, verifyChanges(model, cfg));
  return 0;
}

int trialIproute(uint32_t v, uint32_t e, uint32_t b) {
  auto cfg = benchConfig(b);
  auto model = benchModel(v, e);
  auto st = desiredOf(model, cfg);
  std::string dir = fmt::format("/tmp/kb-{}", getpid());
  run("mkdir -p " + dir);
  std::ofstream(dir + "/routes.batch") << ipBatch(st);
  std::ofstream(dir + "/nft.nft") << renderNftChanges(cfg, st.nft, dp::NftState{});
  auto t0 = Clock::now();
  int rc1 = run("ip -4 -batch " + dir + "/routes.batch");
  double tip = secondsSince(t0);
  int rc2 = run("nft -f " + dir + "/nft.nft");
  double t = secondsSince(t0);
  run("rm -rf " + dir);
  if (rc1 || rc2) return 1;
  printf("t=%.6f ip=%.6f nft=%.6f verify=%zu\n", t, tip, t - tip, verifyChanges(model, cfg));
  return 0;
}

int trialRawLoad(uint32_t v, uint32_t e, uint32_t b, bool naive) {
  auto cfg = benchConfig(b);
  auto model = benchModel(v, e);
  auto st = desiredOf(model, cfg);
  dp::NftState skeleton = st.nft;
  skeleton.vips.clear();
  skeleton.buckets.clear();
  skeleton.live.clear();
  skeleton.vipBuckets.clear();  // (the raw loader sends the bucket counts itself)
  skeleton.endpoints.clear();   // and the endpoint counters
  std::string skel = renderNftChanges(cfg, skeleton, dp::NftState{});
  NftClientImpl nft(cfg);
  auto t0 = Clock::now();
  int e1 = rawLoadRoutes(st, naive);
  double tnl = secondsSince(t0);
  auto s = nft.run(skel);
  int e2 = rawLoadNftElements(cfg.nftTable, st.nft, naive ? 1 : 16);
  double t = secondsSince(t0);
  if (e1 || e2 || !s) {
    fprintf(stderr, "raw loader: %d %d %s\n", e1, e2, s ? "" : s.error().message.c_str());
    return 1;
  }
  printf("t=%.6f netlink=%.6f nft=%.6f verify=%zu\n", t, tnl, t - tnl, verifyChanges(model, cfg));
  return 0;
}

/** The raw loader as the honest baseline: ack-last route batches, 16 element transactions. */
int trialRaw(uint32_t v, uint32_t e, uint32_t b) { return trialRawLoad(v, e, b, false); }
/** The earlier baseline: every route acked, all elements in one transaction. */
int trialRawNaive(uint32_t v, uint32_t e, uint32_t b) { return trialRawLoad(v, e, b, true); }

int converge(uint32_t v, uint32_t e, uint32_t b, int reps) {
  struct M {
    const char* name;
    int (*fn)(uint32_t, uint32_t, uint32_t);
    std::vector<double> t;
    std::string last;
  };
  std::vector<M> ms{{"daemon", trialDaemon, {}, {}}, {"iproute", trialIproute, {}, {}},
                    {"raw", trialRaw, {}, {}}, {"raw1", trialRawNaive, {}, {}}};
  // KB_NO_IPROUTE=1: skip the text baseline (≈ 25 s a repetition at V = 50k).
  if (getenv("KB_NO_IPROUTE")) ms.erase(ms.begin() + 1);
  // KB_NO_RAW1=1: skip the earlier one-transaction baseline (minutes at V = 50k).
  if (getenv("KB_NO_RAW1")) ms.pop_back();
  // Interleaved repetitions: a burst of load from other users hits every method alike.
  for (int r = 0; r < reps; ++r) {
    for (auto& m : ms) {
      auto out = inFreshNetns([&] { return m.fn(v, e, b); });
      if (out.empty()) return 1;
      if (field(out, "verify") != 0) {
        fprintf(stderr, "%s: loaded state differs from the daemon's (%s)\n", m.name, out.c_str());
        return 1;
      }
      m.t.push_back(field(out, "t"));
      m.last = out;
      fprintf(stderr, "  converge V=%u %s rep %d: %s", v, m.name, r, out.c_str());
    }
  }
  auto med = [&](const char* name) {
    for (auto& m : ms)
      if (std::string_view(m.name) == name) return median(m.t);
    return std::nan("");
  };
  double daemon = med("daemon"), ipr = med("iproute"), raw = med("raw"), raw1 = med("raw1");
  printf("RESULT bench=converge V=%u E=%u B=%u reps=%d routes=%u elements=%u daemon_s=%.4f "
         "iproute_s=%.4f raw_s=%.4f raw1_s=%.4f daemon_over_raw=%.2f daemon_over_raw1=%.2f "
         "iproute_over_raw=%.2f daemon_over_iproute=%.2f load=%.2f\n",
         v, e, b, reps, v * e, v * b, daemon, ipr, raw, raw1, daemon / raw, daemon / raw1,
         ipr / raw, daemon / ipr, loadAverage1());
  printf("DETAIL converge V=%u daemon: %s", v, ms[0].last.c_str());
  return 0;
}

// ---- incremental ----

/** One endpoint change of service i: replace its endpoint j by a fresh address.
 *  @return the VIP of the changed service. */
IpAddress changeEndpoint(Model& m, std::mt19937& rng, uint32_t e, uint32_t& fresh) {
  auto& svc = m.services[rng() % m.services.size()];
  auto& ep = svc.endpoints[rng() % svc.endpoints.size()];
  ep.ip = IpAddress::fromV4(htonl(0x0b000000u + ++fresh));  // 11.0.0.0/8: never used before
  std::sort(svc.endpoints.begin(), svc.endpoints.end(), [](auto& a, auto& b) { return a.ip < b.ip; });
  (void)e;
  return svc.vip;
}

/** Kernel slab memory in bytes (/proc/meminfo Slab), for the flow table's cost per element. */
double slabBytes() {
  std::ifstream f("/proc/meminfo");
  std::string k;
  double v = 0;
  std::string unit;
  while (f >> k >> v >> unit)
    if (k == "Slab:") return v * 1024;
  return 0;
}

/** KB_PINNED_FLOWS=N (default 0): N flow4 elements pinned to the model's (VIP, slot) pairs, as
 *  the first packets of N flows would leave them (nfnetlink batches of 50k elements; the map's
 *  own timeout, --flow-timeout, applies). Prints the slab growth per element to stderr.
 *  @return false when the kernel refused some. */
bool pinFlows(const DataplaneConfig& cfg, const Model& model, uint32_t e) {
  const char* env = getenv("KB_PINNED_FLOWS");
  const size_t n = env ? std::strtoull(env, nullptr, 10) : 0;
  if (n == 0 || model.services.empty()) return true;
  const double slab0 = slabBytes();
  const auto t0 = Clock::now();
  RawNetlink nl(NETLINK_NETFILTER);
  uint32_t seq = static_cast<uint32_t>(time(nullptr));
  constexpr size_t kPerBatch = 50000;
  for (size_t i = 0; i < n; i += kPerBatch) {
    nft::BatchEncoder enc(cfg.nftTable, seq);
    for (size_t j = i; j < std::min(n, i + kPerBatch); ++j) {
      // saddr . sport . daddr . dport, each field in its own 32-bit word, ports zero-padded.
      uint8_t key[16] = {};
      uint32_t saddr = htonl(0x0a800000u + static_cast<uint32_t>(j / 50000));
      uint16_t sport = htons(static_cast<uint16_t>(1024 + j % 50000)), dport = htons(80);
      const auto& svc = model.services[j % model.services.size()];
      std::memcpy(key, &saddr, 4);
      std::memcpy(key + 4, &sport, 2);
      std::memcpy(key + 8, svc.vip.data(), 4);
      std::memcpy(key + 12, &dport, 2);
      const uint32_t mark = cfg.tableOffset + static_cast<uint32_t>((j / model.services.size()) % e);
      enc.element(true, "flow4", {key, sizeof key}, &mark);
    }
    auto buf = enc.finish();
    if (nl.sendAndAck(buf, enc.acked().size()) != 0) return false;
  }
  fprintf(stderr, "  pinned %zu flows in %.2f s; slab +%.1f MiB (%.0f bytes per flow)\n", n,
          secondsSince(t0), (slabBytes() - slab0) / (1 << 20), (slabBytes() - slab0) / n);
  return true;
}

/** caching: the daemon's cached passes; hinted: given the changed VIP, as the daemon does. */
int trialIncremental(uint32_t v, uint32_t e, uint32_t b, int n, bool caching, bool hinted) {
  auto cfg = benchConfig(b);
  auto model = benchModel(v, e);
  Daemonish d(cfg);
  d.rr.setCaching(caching);
  auto r0 = d.rr.reconcile(model);
  if (!r0 || !r0->ok()) return 1;
  if (!pinFlows(cfg, model, e)) return 1;
  std::mt19937 rng(42);
  uint32_t fresh = 0;
  std::vector<double> lat, msgs, nftMsgs, changes, tplan, tdiff, tnl, tnft;
  int whole = 0;  // passes that planned every VIP
  for (int k = 0; k < n; ++k) {
    std::set<IpAddress> changed{changeEndpoint(model, rng, e, fresh)};
    uint64_t before = d.requestsSent(), nftBefore = d.nft.messagesSent();
    auto t0 = Clock::now();
    auto r = d.rr.reconcile(model, hinted ? &changed : nullptr);
    lat.push_back(secondsSince(t0) * 1e3);
    if (!r || !r->ok()) return 1;
    msgs.push_back(static_cast<double>(d.requestsSent() - before));
    nftMsgs.push_back(static_cast<double>(d.nft.messagesSent() - nftBefore));
    changes.push_back(static_cast<double>(r->changes));
    whole += r->vipsPlanned >= model.services.size();
    if (lat.back() > 10 && getenv("KB_VERBOSE"))
      fprintf(stderr, "slow pass %.1f ms: full=%d observe=%.1f plan=%.1f diff=%.1f nl=%.1f nft=%.1f\n",
              lat.back(), r->fullObserve, r->timings.observe * 1e3, r->timings.plan * 1e3,
              r->timings.diff * 1e3, r->timings.netlink * 1e3, r->timings.nft * 1e3);
    tplan.push_back(r->timings.plan * 1e3);
    tdiff.push_back(r->timings.diff * 1e3);
    tnl.push_back(r->timings.netlink * 1e3);
    tnft.push_back(r->timings.nft * 1e3);
  }
  size_t verify = verifyChanges(model, cfg);
  printf("p50_ms=%.3f p99_ms=%.3f max_ms=%.3f rtnl_msgs=%.1f nft_msgs=%.1f changes=%.1f "
         "plan_ms=%.3f diff_ms=%.3f netlink_ms=%.3f nft_ms=%.3f whole=%d verify=%zu\n",
         percentile(lat, 50), percentile(lat, 99), percentile(lat, 100), median(msgs),
         median(nftMsgs), median(changes), median(tplan), median(tdiff), median(tnl),
         median(tnft), whole, verify);
  return verify == 0 ? 0 : 1;
}

/** A source driven by the benchmark: the complete set at start, then one delivery per push. */
class ScriptedSource : public Source {
 public:
  explicit ScriptedSource(ClusterObjects o) : objs_(std::move(o)) {}
  Status start(Callback cb) override {
    cb_ = std::move(cb);
    cb_(ObjectChanges::all(objs_));
    return {};
  }
  void push(ObjectChanges c) { cb_(std::move(c)); }
  void stop() override {}
  std::string name() const override { return "scripted"; }

 private:
  ClusterObjects objs_;
  Callback cb_;
};

/** Through the daemon: a source delivers one changed EndpointSlice (an endpoint of a random
 *  Service replaced) → Daemon (ModelBuilder, RouterReconciler, netlink, nft) → the pass ends
 *  after the last ack. Timed from the delivery to the end of the pass. */
int trialSource(uint32_t v, uint32_t e, uint32_t b, int n) {
  auto cfg = benchConfig(b);
  auto objs = benchObjects(v, e);
  if (buildModel(objs, {}).services != benchModel(v, e).services) {
    fprintf(stderr, "benchObjects and benchModel disagree\n");
    return 1;
  }
  Daemonish d(cfg);
  ScriptedSource src(objs);
  DaemonOptions o;
  o.agent = false;
  o.resyncInterval = std::chrono::hours(1);
  Daemon daemon(o, src, &d.rr, nullptr, nullptr);
  std::thread t([&] { daemon.run(); });
  auto waitPasses = [&](int k) {
    while (daemon.passes() < k) std::this_thread::sleep_for(std::chrono::microseconds(20));
  };
  waitPasses(1);
  if (!daemon.lastPassOk()) return 1;
  if (!pinFlows(cfg, buildModel(objs, {}), e)) return 1;
  std::mt19937 rng(42);
  std::vector<double> lat, msgs, nftMsgs;
  for (int k = 0; k < n; ++k) {
    uint32_t i = rng() % v;
    ObjectChanges c;
    auto sl = benchSlice(i, e, IpAddress::fromV4(htonl(0x0b000000u + static_cast<uint32_t>(k) + 1)));
    objs.slices.insert_or_assign(sl.key, sl);
    c.slices.emplace(sl.key, std::move(sl));
    uint64_t before = d.requestsSent(), nftBefore = d.nft.messagesSent();
    auto t0 = Clock::now();
    src.push(std::move(c));
    waitPasses(k + 2);
    lat.push_back(secondsSince(t0) * 1e3);
    if (!daemon.lastPassOk()) return 1;
    msgs.push_back(static_cast<double>(d.requestsSent() - before));
    nftMsgs.push_back(static_cast<double>(d.nft.messagesSent() - nftBefore));
  }
  daemon.stop();
  t.join();
  size_t verify = verifyChanges(buildModel(objs, {}), cfg);
  printf("p50_ms=%.3f p99_ms=%.3f max_ms=%.3f rtnl_msgs=%.1f nft_msgs=%.1f changes=0 verify=%zu\n",
         percentile(lat, 50), percentile(lat, 99), percentile(lat, 100), median(msgs),
         median(nftMsgs), verify);
  return verify == 0 ? 0 : 1;
}

int incremental(uint32_t v, uint32_t e, uint32_t b, int n) {
  spdlog::set_level(spdlog::level::warn);  // the daemon logs every pass at info
  {
    auto out = inFreshNetns([&] { return trialSource(v, e, b, n); });
    if (out.empty()) return 1;
    fprintf(stderr, "  incremental source->kernel: %s", out.c_str());
    printf("RESULT bench=incremental V=%u E=%u B=%u mode=source changes=%d p50_ms=%.3f "
           "p99_ms=%.3f max_ms=%.3f rtnl_msgs_per_change=%.0f nft_msgs_per_change=%.0f load=%.2f\n",
           v, e, b, n, field(out, "p50_ms"), field(out, "p99_ms"), field(out, "max_ms"),
           field(out, "rtnl_msgs"), field(out, "nft_msgs"), loadAverage1());
    fflush(stdout);
  }
  bool before = getenv("KB_INCREMENTAL_BEFORE") != nullptr;  // also the slower passes
  struct Mode {
    const char* name;
    bool caching, hinted;
  };
  for (auto [name, caching, hinted] : {Mode{"cached", true, true}, Mode{"cached-compare", true, false},
                                       Mode{"full-observe", false, false}}) {
    if (!hinted && !before) break;
    int count = caching ? n : 3;
    auto out = inFreshNetns([&] { return trialIncremental(v, e, b, count, caching, hinted); });
    if (out.empty()) return 1;
    fprintf(stderr, "  incremental %s: %s", name, out.c_str());
    printf("RESULT bench=incremental V=%u E=%u B=%u mode=%s changes=%d p50_ms=%.3f p99_ms=%.3f "
           "max_ms=%.3f rtnl_msgs_per_change=%.0f nft_msgs_per_change=%.0f "
           "objects_per_change=%.0f whole_passes=%.0f load=%.2f\n",
           v, e, b, name, count, field(out, "p50_ms"),
           field(out, "p99_ms"), field(out, "max_ms"), field(out, "rtnl_msgs"),
           field(out, "nft_msgs"), field(out, "changes"), field(out, "whole"), loadAverage1());
    fflush(stdout);
  }
  return 0;
}

// ---- restart ----

int trialRestart(uint32_t v, uint32_t e, uint32_t b) {
  auto cfg = benchConfig(b);
  auto model = benchModel(v, e);
  {
    Daemonish d(cfg);
    auto r = d.rr.reconcile(model);
    if (!r || !r->ok()) return 1;
  }
  std::string dir = fmt::format("/tmp/kb-{}", getpid());
  run("mkdir -p " + dir);
  // Monitors in this namespace (inherited by the children), started before the restart.
  pid_t ipmon = fork();
  if (ipmon == 0) {
    freopen((dir + "/ip.mon").c_str(), "w", stdout);
    execlp("ip", "ip", "-o", "monitor", "link", "nexthop", "route", "rule", "address", nullptr);
    _exit(127);
  }
  pid_t nftmon = fork();
  if (nftmon == 0) {
    freopen((dir + "/nft.mon").c_str(), "w", stdout);
    execlp("nft", "nft", "monitor", nullptr);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  Daemonish d(cfg);
  double tl, tn, tr, tru, tnft;
  {
    auto t1 = Clock::now();
    (void)d.nl.links();
    tl = secondsSince(t1);
    t1 = Clock::now();
    (void)d.nl.nexthops();
    tn = secondsSince(t1);
    t1 = Clock::now();
    (void)d.nl.routes(cfg.tableOffset, cfg.tableOffset + cfg.maxSlots);
    tr = secondsSince(t1);
    t1 = Clock::now();
    (void)d.nl.rules(cfg.rulePriority, cfg.rulePriority + cfg.maxSlots);
    tru = secondsSince(t1);
    // A client of its own: d.nft observing here would let the reconciler's observation below
    // answer from its ruleset-generation check instead of reading the table as a restart does.
    NftClientImpl probe(cfg);
    t1 = Clock::now();
    (void)probe.observe();
    tnft = secondsSince(t1);
  }
  auto t0 = Clock::now();
  auto r = d.rr.reconcile(model);
  double t = secondsSince(t0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  kill(ipmon, SIGTERM);
  kill(nftmon, SIGTERM);
  waitpid(ipmon, nullptr, 0);
  waitpid(nftmon, nullptr, 0);
  auto count = [&](const std::string& f) {
    return std::atol(capture("grep -c . " + f + " || true").c_str());
  };
  long ipEvents = count(dir + "/ip.mon"), nftEvents = count(dir + "/nft.mon");
  run("rm -rf " + dir);
  if (!r || !r->ok()) return 1;
  auto& ph = r->timings;
  printf("t=%.6f changes=%zu ip_events=%ld nft_events=%ld observe=%.6f plan=%.6f diff=%.6f "
         "dump_links=%.6f dump_nexthops=%.6f dump_routes=%.6f dump_rules=%.6f list_nft=%.6f\n",
         t, r->changes, ipEvents, nftEvents, ph.observe, ph.plan, ph.diff, tl, tn, tr, tru, tnft);
  return 0;
}

int restart(uint32_t v, uint32_t e, uint32_t b, int reps) {
  std::vector<double> t;
  std::string last;
  for (int i = 0; i < reps; ++i) {
    auto out = inFreshNetns([&] { return trialRestart(v, e, b); });
    if (out.empty()) return 1;
    t.push_back(field(out, "t"));
    last = out;
    fprintf(stderr, "  restart rep %d: %s", i, out.c_str());
  }
  printf("RESULT bench=restart V=%u E=%u B=%u reps=%d reconciled_s=%.4f changes=%.0f "
         "ip_monitor_events=%.0f nft_monitor_events=%.0f observe_s=%.4f load=%.2f\n",
         v, e, b, reps, median(t), field(last, "changes"), field(last, "ip_events"),
         field(last, "nft_events"), field(last, "observe"), loadAverage1());
  return 0;
}

// ---- the real daemon binary: RSS, CPU, restart, reaction through the manifest source ----

std::string sliceYaml(uint32_t i, uint32_t e, uint32_t shift) {
  std::string y = fmt::format(
      "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{0}-a\n"
      "  namespace: bench\n  labels:\n    kubernetes.io/service-name: svc-{0}\naddressType: IPv4\n"
      "endpoints:\n", i);
  for (uint32_t j = 0; j < e; ++j)
    y += fmt::format("- addresses: [\"{}\"]\n  nodeName: n1\n  conditions: {{ready: true}}\n",
                     endpointOf(i, j, e, j == 0 ? shift : 0).str());
  return y;
}

/** Service i and its EndpointSlice in their own file (one file per application, as a GitOps
 *  directory holds them); written aside and renamed into place. */
void writeManifestFile(const std::string& dir, uint32_t i, uint32_t e, uint32_t shift = 0) {
  std::string y = fmt::format(
      "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{}\n  namespace: bench\n"
      "  creationTimestamp: \"2026-01-01T00:00:00Z\"\n  annotations:\n"
      "    cmd.nu/tunnel: \"{}\"\n---\n",
      i, vipOf(i).str());
  y += sliceYaml(i, e, shift);
  std::string tmp = fmt::format("{}/.f{}.tmp", dir, i);
  std::ofstream(tmp) << y;
  std::rename(tmp.c_str(), fmt::format("{}/svc-{:05}.yaml", dir, i).c_str());
}

/** Counts lines containing a word in a growing log file, reading only what was appended
 *  (no process per poll: the poll interval is part of the measured latency). */
class LogFollower {
 public:
  LogFollower(std::string path, std::string word) : path_(std::move(path)), word_(std::move(word)) {}
  long count() {
    if (fd_ < 0) fd_ = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return 0;
    char buf[65536];
    ssize_t n;
    while ((n = read(fd_, buf, sizeof buf)) > 0) {
      partial_.append(buf, static_cast<size_t>(n));
      size_t start = 0, nl;
      while ((nl = partial_.find('\n', start)) != std::string::npos) {
        if (std::string_view(partial_).substr(start, nl - start).find(word_) != std::string_view::npos)
          ++count_;
        start = nl + 1;
      }
      partial_.erase(0, start);
    }
    return count_;
  }
  ~LogFollower() {
    if (fd_ >= 0) close(fd_);
  }

 private:
  std::string path_, word_, partial_;
  int fd_ = -1;
  long count_ = 0;
};

struct Spawned {
  pid_t pid;
};

pid_t spawn(const std::vector<std::string>& argv, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    FILE* f = fopen(log.c_str(), "a");
    if (f) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    execv(a[0], a.data());
    _exit(127);
  }
  return pid;
}

long statusKb(pid_t pid, const char* key) {
  std::ifstream f(fmt::format("/proc/{}/status", pid));
  for (std::string l; std::getline(f, l);)
    if (l.starts_with(key)) return std::atol(l.c_str() + std::strlen(key) + 1);
  return -1;
}

int trialDaemonBinary(uint32_t v, uint32_t e, uint32_t b, const std::string& bin, int changes) {
  std::string dir = fmt::format("/tmp/kb-{}", getpid()), m = dir + "/manifests";
  run("mkdir -p " + m);
  for (uint32_t i = 0; i < v; ++i) writeManifestFile(m, i, e);
  // vipOf(): 100.64.0.0 + i, inside the pool (the daemon is default-deny).
  std::vector<std::string> base{bin, "run", "--role", "router", "--manifests", m, "--buckets",
                                std::to_string(b), "--vip-pool", "100.64.0.0/10"};
  auto once = [&](const std::string& log, double& wall, rusage& ru) {
    auto argv = base;
    for (auto* x : {"--once", "--log-level", "warn"}) argv.push_back(x);
    auto t0 = Clock::now();
    pid_t pid = spawn(argv, log);
    int st = 0;
    wait4(pid, &st, 0, &ru);
    wall = secondsSince(t0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  };
  double coldWall, restartWall;
  rusage coldRu{}, restartRu{};
  if (int rc = once(dir + "/cold.log", coldWall, coldRu); rc != 0) {
    fprintf(stderr, "cold --once exited %d\n", rc);
    run("cat " + dir + "/cold.log >&2");
    return 1;
  }
  // Restart: the same binary again on the programmed namespace, kernel changes counted.
  pid_t ipmon = spawn({"/usr/sbin/ip", "-o", "monitor", "link", "nexthop", "route", "rule"},
                      dir + "/ip.mon");
  pid_t nftmon = spawn({"/usr/sbin/nft", "monitor"}, dir + "/nft.mon");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  int rrc = once(dir + "/restart.log", restartWall, restartRu);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  kill(ipmon, SIGTERM);
  kill(nftmon, SIGTERM);
  waitpid(ipmon, nullptr, 0);
  waitpid(nftmon, nullptr, 0);
  long ipEvents = std::atol(capture("grep -c . " + dir + "/ip.mon || true").c_str());
  long nftEvents = std::atol(capture("grep -c . " + dir + "/nft.mon || true").c_str());
  if (rrc != 0) return 1;
  // Steady state: the daemon follows the directory; one endpoint change at a time.
  auto argv = base;
  // debug: passes without changes are logged too ("reconciled N services: no changes").
  for (auto* x : {"--log-level", "debug", "--resync-interval", "3600"}) argv.push_back(x);
  std::string log = dir + "/steady.log";
  pid_t pid = spawn(argv, log);
  LogFollower follower(log, "reconciled");
  auto lines = [&] { return follower.count(); };
  for (int i = 0; i < 2400 && lines() == 0; ++i)  // the first pass: adoption, no changes
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  long rssIdle = statusKb(pid, "VmRSS:");
  std::vector<double> wall, pass;
  std::mt19937 rng(7);
  for (int k = 0; k < changes; ++k) {
    long before = lines();
    uint32_t svc = rng() % v;
    auto t0 = Clock::now();
    writeManifestFile(m, svc, e, 0x100000 + static_cast<uint32_t>(k));
    while (lines() == before && secondsSince(t0) < 60)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    wall.push_back(secondsSince(t0) * 1e3);
    auto last = capture("grep reconciled " + log + " | tail -1");
    auto pos = last.find(" in ");
    if (pos != std::string::npos) pass.push_back(std::atof(last.c_str() + pos + 4) / 1e3);
  }
  long rss = statusKb(pid, "VmRSS:"), hwm = statusKb(pid, "VmHWM:");
  kill(pid, SIGTERM);
  rusage ru{};
  wait4(pid, nullptr, 0, &ru);
  auto cpu = [](const rusage& r) {
    return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
  };
  run("rm -rf " + dir);
  printf("cold_s=%.3f cold_cpu_s=%.3f cold_maxrss_mib=%.1f restart_s=%.3f restart_cpu_s=%.3f "
         "restart_maxrss_mib=%.1f restart_ip_events=%ld restart_nft_events=%ld "
         "steady_rss_idle_mib=%.1f steady_rss_mib=%.1f steady_hwm_mib=%.1f steady_cpu_s=%.3f "
         "change_wall_p50_ms=%.1f change_wall_p99_ms=%.1f change_pass_p50_ms=%.1f "
         "change_pass_p99_ms=%.1f\n",
         coldWall, cpu(coldRu), coldRu.ru_maxrss / 1024.0, restartWall, cpu(restartRu),
         restartRu.ru_maxrss / 1024.0, ipEvents, nftEvents, rssIdle / 1024.0, rss / 1024.0,
         hwm / 1024.0, cpu(ru), percentile(wall, 50), percentile(wall, 99), percentile(pass, 50),
         percentile(pass, 99));
  return 0;
}

// ---- observe: the nft half of a resync ----

/** The table programmed with V VIPs × B buckets (skeleton by text, elements by nfnetlink
 *  batches of 5000 VIPs), then REPS observations by the daemon's client, each checked against
 *  what was loaded: a resync's (or a restart's) nft listing. No routes: their dumps are the
 *  cheap part of a resync. */
int trialObserve(uint32_t v, uint32_t e, uint32_t b, int reps) {
  auto cfg = benchConfig(b);
  auto st = desiredOf(benchModel(v, e), cfg);
  dp::NftState skeleton = st.nft;
  skeleton.vips.clear();
  skeleton.buckets.clear();
  skeleton.live.clear();
  NftClientImpl loader(cfg);
  if (auto s = loader.run(renderNftChanges(cfg, skeleton, dp::NftState{})); !s) {
    fprintf(stderr, "observe: skeleton: %s\n", s.error().message.c_str());
    return 1;
  }
  std::vector<IpAddress> vips(st.nft.vips.begin(), st.nft.vips.end());
  for (size_t i = 0; i < vips.size(); i += 5000) {
    dp::NftState part;
    for (size_t j = i; j < std::min(vips.size(), i + 5000); ++j) {
      part.vips.insert(vips[j]);
      if (auto* marks = st.nft.buckets.marksOf(vips[j])) part.buckets.setVip(vips[j], *marks);
    }
    if (auto s = loader.applyElements(nftElementChanges(part, dp::NftState{})); !s) {
      fprintf(stderr, "observe: load: %s\n", s.error().message.c_str());
      return 1;
    }
  }
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    NftClientImpl nft(cfg);  // a fresh client, as after a restart (a resync reuses one)
    auto t0 = Clock::now();
    auto got = nft.observe();
    t.push_back(secondsSince(t0));
    if (!got || got->vips != st.nft.vips || !(got->buckets == st.nft.buckets) ||
        got->skeletonId != st.nft.skeletonId) {
      if (got)
        fprintf(stderr, "observe: observed state differs from the loaded one: %zu VIPs, %zu "
                "buckets, skeleton %s (loaded %zu, %zu, %s)\n", got->vips.size(),
                got->buckets.size(), got->skeletonId.c_str(), st.nft.vips.size(),
                st.nft.buckets.size(), st.nft.skeletonId.c_str());
      else
        fprintf(stderr, "observe: %s\n", got.error().message.c_str());
      return 1;
    }
    fprintf(stderr, "  observe rep %d: %.4f s (%zu messages)\n", i, t.back(),
            static_cast<size_t>(nft.messagesSent()));
  }
  // A resync: the daemon's long-lived client, which observed once and has written since (one
  // bucket moved, conditioned on the generation it knew); then the same after commits by
  // someone else, followed from their announcements: (a) another table (kube-proxy's, a
  // firewall's), (b) an element deleted from the daemon's bucket map (applied as announced),
  // (c) a VIP deleted from its VIP set (the small sets read again, no bucket looked up).
  NftClientImpl daemon(cfg);
  auto check = [&](const char* what, double& secs) {
    auto t0 = Clock::now();
    auto got = daemon.observe();
    secs = secondsSince(t0);
    if (!got || got->vips != st.nft.vips || !(got->buckets == st.nft.buckets)) {
      fprintf(stderr, "observe (%s): %s\n", what,
              got ? "observed state differs from the kernel's" : got.error().message.c_str());
      return false;
    }
    return true;
  };
  double tFirst = 0, tResync = 0, tForeign = 0, tElement = 0, tVip = 0;
  if (!check("first", tFirst)) return 1;
  const IpAddress& vip0 = vips.at(0);
  uint32_t was = st.nft.buckets.at({vip0, 0}), now = was + 1;
  dp::NftElementChanges move;
  move.bucketDeletes = {{vip0, 0, was}};
  move.bucketAdds = {{vip0, 0, now}};
  if (auto s = daemon.applyElements(move); !s) {
    fprintf(stderr, "observe: move: %s\n", s.error().message.c_str());
    return 1;
  }
  st.nft.buckets.set(vip0, 0, now);
  if (!check("resync", tResync)) return 1;
  if (run("nft add table inet kb_other") != 0) return 1;
  if (!check("after a foreign commit", tForeign)) return 1;
  const std::string table = "inet " + cfg.nftTable;
  if (run(fmt::format("nft delete element {} {} '{{ {} . {:#x} }}'", table,
                      vip0.isV4() ? "b2s4" : "b2s6", vip0.str(), kBucketMarkBase + 1)) != 0)
    return 1;
  st.nft.buckets.erase(vip0, 1);
  if (!check("after a foreign element deletion", tElement)) return 1;
  const IpAddress& vip1 = vips.at(1);
  if (run(fmt::format("nft delete element {} {} '{{ {} }}'", table,
                      vip1.isV4() ? "vip4" : "vip6", vip1.str())) != 0)
    return 1;
  st.nft.vips.erase(vip1);
  st.nft.buckets.eraseVip(vip1);
  if (!check("after a foreign VIP deletion", tVip)) return 1;
  fprintf(stderr, "  long-lived client: first %.4f s, resync after its own write %.4f s, after "
          "a foreign commit to another table %.4f s, a foreign bucket deletion %.4f s, a "
          "foreign VIP deletion %.4f s\n", tFirst, tResync, tForeign, tElement, tVip);
  printf("t=%.6f elements=%zu resync=%.6f foreign=%.6f foreign_element=%.6f foreign_vip=%.6f\n",
         median(t), st.nft.buckets.size() + st.nft.vips.size(), tResync, tForeign, tElement,
         tVip);
  return 0;
}

int observe(uint32_t v, uint32_t e, uint32_t b, int reps) {
  auto out = inFreshNetns([&] { return trialObserve(v, e, b, reps); });
  if (out.empty()) return 1;
  printf("RESULT bench=observe V=%u E=%u B=%u reps=%d observe_s=%.4f elements=%.0f "
         "resync_s=%.4f resync_foreign_table_s=%.4f resync_foreign_element_s=%.4f "
         "resync_foreign_vip_s=%.4f load=%.2f\n",
         v, e, b, reps, field(out, "t"), field(out, "elements"), field(out, "resync"),
         field(out, "foreign"), field(out, "foreign_element"), field(out, "foreign_vip"),
         loadAverage1());
  return 0;
}

int daemonBinary(uint32_t v, uint32_t e, uint32_t b, const std::string& bin, int changes) {
  auto out = inFreshNetns([&] { return trialDaemonBinary(v, e, b, bin, changes); });
  if (out.empty()) return 1;
  fprintf(stderr, "  daemon binary: %s", out.c_str());
  printf("RESULT bench=daemon V=%u E=%u endpoints=%u B=%u %s", v, e, v * e, b, out.c_str());
  return 0;
}

// ---- the planning CPU of a cold pass, no kernel ----

/** RouterDb's cold pass alone (update against an empty kernel, then commit), REPS times: the
 *  CPU the daemon spends before and after the kernel work of a cold convergence. */
int planOnly(uint32_t v, uint32_t e, uint32_t b, int reps) {
  auto cfg = benchConfig(b);
  auto model = benchModel(v, e);
  std::vector<double> t, tplan, tdiff, tcommit;
  size_t changes = 0, elements = 0;
  for (int r = 0; r < reps; ++r) {
    RouterDb db(cfg);
    db.seed({});
    auto t0 = Clock::now();
    auto d = db.update(model);
    auto t1 = Clock::now();
    db.commit(model);
    tcommit.push_back(secondsSince(t1));
    t.push_back(secondsSince(t0));
    tplan.push_back(d.planSeconds);
    tdiff.push_back(d.diffSeconds);
    changes = d.changes.size();
    elements = d.elements.size();
  }
  printf("RESULT bench=plan V=%u E=%u B=%u reps=%d changes=%zu elements=%zu total_s=%.4f "
         "plan_s=%.4f diff_s=%.4f commit_s=%.4f load=%.2f\n",
         v, e, b, reps, changes, elements, median(t), median(tplan), median(tdiff),
         median(tcommit), loadAverage1());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  std::string cmd = argc > 1 ? argv[1] : "";
  auto arg = [&](int i, uint32_t dflt) {
    return argc > i ? static_cast<uint32_t>(std::strtoul(argv[i], nullptr, 10)) : dflt;
  };
  if (cmd == "converge") return converge(arg(2, 1000), arg(3, 4), arg(4, 64), arg(5, 3));
  if (cmd == "incremental") return incremental(arg(2, 10000), arg(3, 4), arg(4, 64), arg(5, 200));
  if (cmd == "restart") return restart(arg(2, 10000), arg(3, 4), arg(4, 64), arg(5, 3));
  if (cmd == "plan") return planOnly(arg(2, 10000), arg(3, 4), arg(4, 64), arg(5, 5));
  if (cmd == "observe") return observe(arg(2, 10000), arg(3, 4), arg(4, 64), arg(5, 3));
  if (cmd == "daemon" && argc >= 6)
    return daemonBinary(arg(2, 10000), arg(3, 4), arg(4, 64), argv[5], arg(6, 20));
  fprintf(stderr,
          "usage: kb-control converge V E B REPS | incremental V E B N | restart V E B REPS |\n"
          "       observe V E B REPS | plan V E B REPS | daemon V E B BINARY [CHANGES]\n");
  return 2;
}
