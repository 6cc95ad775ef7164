// Objects written by tenants (and anything answering in the API server's place) are hostile
// input. One test per reproduction: each crashed (uncaught nlohmann type_error → abort), ate
// gigabytes, or hung the daemon before it was fixed. Every input here is also in the fuzz
// regression corpus (tests/fuzz/corpus).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <future>
#include <thread>

#include "common/guard.h"
#include "desired/published.h"
#include "k8s/event_sink.h"
#include "k8s/kubeconfig.h"
#include "k8s/watch.h"
#include "model/model.h"
#include "source/decode.h"
#include "source/manifest_source.h"
#include "unit/k8s_fake_transport.h"

namespace kst {
namespace {

using Clock = std::chrono::steady_clock;

double msSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

/** Runs fn on another thread; false when it has not finished within `limit` (a hang; the
 *  thread is left behind, the test fails). */
template <typename F>
bool finishesWithin(F fn, std::chrono::milliseconds limit) {
  auto task = std::make_shared<std::packaged_task<void()>>(std::move(fn));
  auto fut = task->get_future();
  std::thread([task] { (*task)(); }).detach();
  return fut.wait_for(limit) == std::future_status::ready;
}

TEST(HostilePublishedTable, WronglyTypedFieldsAreRejectedNotThrown) {
  // Was: j.value("v", 0) on a string → type_error → the daemon aborted (rc 134).
  for (const char* t : {R"({"v":"1"})", R"({"v":1,"buckets":"64","endpoints":[]})",
                        R"({"v":1,"buckets":64,"seed":"x","endpoints":[]})",
                        R"({"v":1,"buckets":4,"endpoints":[{"ip":"10.0.0.1","slot":0,"draining":1,"buckets":"0"}]})",
                        R"({"v":1,"buckets":4,"endpoints":[{"ip":"10.0.0.1","slot":0,"buckets":[0,1]}]})",
                        R"({"v":1,"buckets":4,"endpoints":[{"ip":"10.0.0.1","slot":-1,"buckets":"0"}]})"}) {
    std::optional<PublishedTable> r;
    EXPECT_NO_THROW(r = decodePublished(t)) << t;
    EXPECT_FALSE(r) << t;
  }
}

TEST(HostilePublishedTable, RangesAreBoundedByTheBucketCountBeforeExpansion) {
  // Was: each "0-4194304" expanded to 4 M entries before any bound: a 2 kB table made one
  // pass allocate 4.2 GB and take 9 s.
  std::string ranges;
  while (ranges.size() < 1900) ranges += "0-4194304,";
  ranges.pop_back();
  std::string t = R"({"v":1,"buckets":64,"seed":42,"endpoints":[{"ip":"198.19.1.2","slot":0,"buckets":")" +
                  ranges + R"("}]})";
  auto start = Clock::now();
  EXPECT_FALSE(decodePublished(t));
  EXPECT_LT(msSince(start), 50.0);
  // Within B, but the same buckets twice over: rejected before expanding past B either.
  EXPECT_FALSE(decodePublished(
      R"({"v":1,"buckets":64,"endpoints":[{"ip":"10.0.0.1","slot":0,"buckets":"0-63,0-63"}]})"));
  EXPECT_FALSE(decodePublished(
      R"({"v":1,"buckets":64,"endpoints":[{"ip":"10.0.0.1","slot":0,"buckets":"0-4294967295"}]})"));
  EXPECT_FALSE(decodePublished(std::string(kMaxPublishedBytes + 1, ' ')));
  // A good table still decodes.
  auto ok = decodePublished(
      R"({"v":1,"buckets":4,"seed":42,"endpoints":[{"ip":"10.0.0.1","slot":3,"buckets":"0-1,3"},{"ip":"10.0.0.2","slot":0,"draining":true,"buckets":"2"}]})");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->table, (std::vector<int32_t>{0, 0, 1, 0}));
  EXPECT_EQ(ok->endpoints[0].slot, 3u);
  EXPECT_TRUE(ok->endpoints[1].draining);
}

TEST(HostileApiBodies, StatusWithANonStringKindIsPlainText) {
  // Was: j.value("kind", "") on a number → type_error (list/watch/lease/event error paths).
  std::string m;
  EXPECT_NO_THROW(m = k8s::statusMessage(R"({"kind":1,"message":"x"})"));
  EXPECT_EQ(m, R"({"kind":1,"message":"x"})");
  EXPECT_NO_THROW(m = k8s::statusMessage(R"({"kind":"Status","reason":[1],"message":"denied"})"));
  EXPECT_EQ(m, "denied");
}

TEST(HostileApiBodies, WatchErrorEventWithANonStringKindRelists) {
  // An ERROR event whose object has a numeric kind went through statusMessage: the watch thread
  // threw and the daemon aborted. Now: a 410 code still means relist, nothing throws.
  k8s::test::FakeApi api;
  k8s::test::FakeTransport http(api);
  struct Nop : k8s::ListWatchHandler {
    std::atomic<int> lists{0};
    void beginList() override {}
    void listItem(const nlohmann::json&) override {}
    void endList(const std::string&) override { ++lists; }
    void event(k8s::WatchEventType, const nlohmann::json&) override {}
  } handler;
  const std::string list = R"({"kind":"ServiceList","metadata":{"resourceVersion":"5"},"items":[]})";
  api.push("/api/v1/services?limit", {200, list});
  api.push("/api/v1/services?watch", {200, R"({"type":"ERROR","object":{"kind":1,"code":410}})" "\n"});
  api.push("/api/v1/services?limit", {200, list});
  k8s::ListWatchOptions o;
  o.seed = 1;
  k8s::ListWatch lw({"services", "/api/v1/services", "", ""}, http, handler, o,
                    [](auto) { return true; });
  std::thread t([&] { lw.run(); });
  EXPECT_TRUE(api.waitRequests("/api/v1/services?limit", 2));
  for (int i = 0; i < 200 && handler.lists < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(handler.lists, 2);
  EXPECT_EQ(lw.stats().gone, 1);
  lw.stop();
  t.join();
}

TEST(HostileManifest, YamlCppHangIsAnErrorAtOnce) {
  // Was: yaml-cpp 0.7's LoadAll never returned on these 3 bytes (the manifest thread hung).
  Result<ClusterObjects> r = ClusterObjects{};
  ASSERT_TRUE(finishesWithin([&] { r = parseManifestText(",{z", "evil.yaml"); },
                             std::chrono::seconds(5)));
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.error().message.starts_with("evil.yaml: YAML error at line 1")) << r.error().message;
  // The same bytes as a kubeconfig.
  Result<k8s::ClientConfig> k = k8s::ClientConfig{};
  ASSERT_TRUE(finishesWithin([&] { k = k8s::parseKubeconfig({{"/k", ",{z"}}); },
                             std::chrono::seconds(5)));
  EXPECT_FALSE(k);
}

TEST(HostileManifest, InvalidUtf8InAnnotationsNeverThrows) {
  // Was: a non-string annotation holding invalid UTF-8 was stored as dump(), which throws.
  Result<ClusterObjects> r = ClusterObjects{};
  EXPECT_NO_THROW(r = parseManifestText("apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n"
                                        "  annotations:\n    x: [\"\xff\xfe\"]\n",
                                        "utf8.yaml"));
  EXPECT_FALSE(r);  // libyaml refuses invalid UTF-8: the file keeps its last good content
  // A decoded value with invalid UTF-8 (as another source could build it) is replaced, not thrown.
  nlohmann::json svc = {{"metadata", {{"name", "a"}, {"annotations", {{"x", {std::string("\xff\xfe")}}}}}}};
  Result<ServiceObject> s = ServiceObject{};
  EXPECT_NO_THROW(s = decodeService(svc));
  ASSERT_TRUE(s);
  EXPECT_EQ(s->annotations.at("x"), "[\"\xEF\xBF\xBD\xEF\xBF\xBD\"]");
}

TEST(HostileManifest, AliasBombAndDeepNestingAreBounded) {
  std::string laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  char prev = 'a';
  for (char c = 'b'; c <= 'j'; ++c) {
    laughs += fmt::format("{}: &{} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n", c,
                          c, fmt::arg("p", prev));
    prev = c;
  }
  auto start = Clock::now();
  auto r = parseManifestText(laughs, "laughs.yaml");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("aliases expanded"), std::string::npos) << r.error().message;
  EXPECT_LT(msSince(start), 5000.0);
  auto deep = parseManifestText(std::string(100000, '[') + std::string(100000, ']'), "deep.yaml");
  ASSERT_FALSE(deep);
  EXPECT_NE(deep.error().message.find("nested deeper"), std::string::npos) << deep.error().message;
}

TEST(HostileManifest, OversizedFileIsRefused) {
  auto r = parseManifestText(std::string(kMaxManifestBytes + 1, '#'), "big.yaml");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EFBIG);
}

TEST(HostileEvents, ANoteCutInsideAUtf8SequenceIsPosted) {
  // The Event note is cut at 1 kB; cut inside "é" it was invalid UTF-8 and dump() threw in the
  // Event thread (abort).
  k8s::test::FakeApi api;
  api.push("/apis/events.k8s.io/v1/namespaces/web/events", {201, "{}"});
  k8s::EventSinkOptions eo;
  k8s::KubeEventSink sink(std::make_unique<k8s::test::FakeTransport>(api), eo);
  sink.report({Problem::Kind::InvalidAnnotation, {"web", "svc"}, std::string(1023, 'a') + "\xC3\xA9"});
  EXPECT_TRUE(api.waitRequests("/apis/events.k8s.io/v1/namespaces/web/events", 1));
  EXPECT_TRUE(sink.flush(std::chrono::seconds(5)));
  EXPECT_EQ(sink.posted(), 1);
  auto reqs = api.requests();
  ASSERT_FALSE(reqs.empty());
  auto body = nlohmann::json::parse(reqs.back().body, nullptr, false);
  ASSERT_FALSE(body.is_discarded());
  EXPECT_TRUE(body["note"].get<std::string>().ends_with("\xEF\xBF\xBD"));
}

TEST(ThreadTops, AnExceptionRestartsTheLoopInsteadOfEndingTheProcess) {
  int runs = 0;
  keepRunning(
      "test",
      [&] {
        if (++runs < 3) throw std::runtime_error("bad object");
      },
      [] { return false; }, std::chrono::milliseconds(1));
  EXPECT_EQ(runs, 3);
  int more = 0;
  keepRunning("test", [&] { ++more; throw 7; }, [] { return true; }, std::chrono::milliseconds(1));
  EXPECT_EQ(more, 1) << "stopping ends the loop";
}

}  // namespace
}  // namespace kst
