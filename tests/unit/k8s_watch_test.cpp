// The watch-stream decoder and the list/watch state machine, fed with JSON recorded from a real
// kube-apiserver v1.36.3 (tests/data/k8s) through a scripted transport.
#include <gtest/gtest.h>

#include <thread>

#include "k8s/watch.h"
#include "unit/k8s_fake_transport.h"

namespace kst::k8s {
namespace {

using test::FakeApi;
using test::FakeResponse;
using test::FakeTransport;
using test::fixture;

std::vector<WatchEvent> decodeAll(const std::string& text, size_t chunk,
                                  std::vector<std::string>* errors = nullptr) {
  WatchDecoder d;
  std::vector<WatchEvent> out;
  for (size_t i = 0; i < text.size(); i += chunk)
    d.feed(std::string_view(text).substr(i, chunk), [&](Result<WatchEvent> r) {
      if (r) out.push_back(std::move(*r));
      else if (errors) errors->push_back(r.error().message);
    });
  return out;
}

TEST(WatchDecoder, RecordedServiceWatchWithBookmark) {
  auto text = fixture("watch-services.jsonl");
  ASSERT_FALSE(text.empty());
  auto ev = decodeAll(text, text.size());
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[0].type, WatchEventType::Added);
  EXPECT_EQ(ev[1].type, WatchEventType::Modified);
  EXPECT_EQ(ev[2].type, WatchEventType::Deleted);
  EXPECT_EQ(ev[3].type, WatchEventType::Bookmark);
  EXPECT_EQ(ev[0].resourceVersion(), "309");
  EXPECT_EQ(ev[1].resourceVersion(), "312");
  EXPECT_EQ(ev[2].resourceVersion(), "325");
  EXPECT_EQ(ev[3].resourceVersion(), "325");
  EXPECT_EQ(ev[1].object["metadata"]["annotations"]["cmd.nu/tunnel"], "198.51.100.21");
  // A bookmark is an otherwise empty object of the watched kind.
  EXPECT_FALSE(ev[3].object["metadata"].contains("name"));
}

TEST(WatchDecoder, AnySplitOfTheStreamGivesTheSameEvents) {
  for (auto name : {"watch-services.jsonl", "watch-endpointslices.jsonl",
                    "watchlist-endpointslices.jsonl"}) {
    auto text = fixture(name);
    auto whole = decodeAll(text, text.size());
    ASSERT_GT(whole.size(), 2u) << name;
    for (size_t chunk : {1, 2, 3, 7, 64, 1000, 4096}) {
      std::vector<std::string> errors;
      auto parts = decodeAll(text, chunk, &errors);
      EXPECT_TRUE(errors.empty()) << name << " chunk " << chunk;
      ASSERT_EQ(parts.size(), whole.size()) << name << " chunk " << chunk;
      for (size_t i = 0; i < parts.size(); ++i) {
        EXPECT_EQ(parts[i].type, whole[i].type);
        EXPECT_EQ(parts[i].object, whole[i].object);
      }
    }
  }
}

TEST(WatchDecoder, EndpointSliceStreamsIncludingNullListsAndInitialEventsEnd) {
  auto ev = decodeAll(fixture("watch-endpointslices.jsonl"), 333);
  int bookmarks = 0, deleted = 0;
  for (auto& e : ev) {
    if (e.type == WatchEventType::Bookmark) {
      ++bookmarks;
      EXPECT_TRUE(e.object["endpoints"].is_null());  // null, never []
    }
    if (e.type == WatchEventType::Deleted) ++deleted;
  }
  EXPECT_GE(bookmarks, 1);
  EXPECT_EQ(deleted, 1);
  auto wl = decodeAll(fixture("watchlist-endpointslices.jsonl"), 100);
  ASSERT_FALSE(wl.empty());
  EXPECT_EQ(wl.back().type, WatchEventType::Bookmark);
  EXPECT_EQ(wl.back().object["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
}

TEST(WatchDecoder, GoneErrorEvent) {
  auto ev = decodeAll(fixture("watch-services-410-gone.jsonl"), 5);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, WatchEventType::Error);
  EXPECT_EQ(ev[0].object["code"], 410);
  EXPECT_EQ(ev[0].object["reason"], "Expired");
  EXPECT_EQ(ev[0].resourceVersion(), "");
}

TEST(WatchDecoder, BadLinesAreReportedAndDecodingGoesOn) {
  std::string text = "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"resourceVersion\":\"1\"}}}\r\n"
                     "this is not json\n"
                     "{\"type\":\"WHATEVER\",\"object\":{}}\n"
                     "{\"type\":\"ADDED\"}\n"
                     "[1,2]\n"
                     "\n"
                     "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"resourceVersion\":\"2\"}}}\n"
                     "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"resou";
  std::vector<std::string> errors;
  WatchDecoder d;
  std::vector<WatchEvent> ev;
  d.feed(text, [&](Result<WatchEvent> r) {
    if (r) ev.push_back(*r);
    else errors.push_back(r.error().message);
  });
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[1].resourceVersion(), "2");
  ASSERT_EQ(errors.size(), 4u);
  EXPECT_NE(errors[0].find("not JSON"), std::string::npos);
  EXPECT_NE(errors[1].find("unknown event type"), std::string::npos);
  EXPECT_NE(errors[2].find("without an object"), std::string::npos);
  EXPECT_NE(errors[3].find("without a type"), std::string::npos);
  EXPECT_GT(d.pending(), 0u);  // the partial last event waits for its end
  d.feed("rceVersion\":\"3\"}}}\n", [&](Result<WatchEvent> r) {
    ASSERT_TRUE(r);
    ev.push_back(*r);
  });
  EXPECT_EQ(ev.back().resourceVersion(), "3");
  EXPECT_EQ(d.pending(), 0u);
}

TEST(WatchDecoder, OverlongEventIsSkippedUpToItsNewline) {
  WatchDecoder d(64);
  std::vector<std::string> errors;
  std::vector<WatchEvent> ev;
  auto sink = [&](Result<WatchEvent> r) {
    if (r) ev.push_back(*r);
    else errors.push_back(r.error().message);
  };
  d.feed(std::string(50, 'x'), sink);
  d.feed(std::string(50, 'y'), sink);  // exceeds 64 without a newline
  d.feed(std::string(50, 'z') + "\n{\"type\":\"BOOKMARK\",\"object\":{}}\n", sink);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("larger than"), std::string::npos);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].type, WatchEventType::Bookmark);
}

// ---------------------------------------------------------------------------------------------

struct Recorder : ListWatchHandler {
  std::vector<std::string> log;
  std::mutex mu;
  void beginList() override { add("begin"); }
  std::atomic<int> withManagedFields{0};
  void listItem(const nlohmann::json& o) override {
    if (o["metadata"].contains("managedFields")) ++withManagedFields;
    add("item " + o["metadata"].value("name", std::string("?")));
  }
  void endList(const std::string& rv) override { add("end " + rv); }
  void abortList() override { add("abort"); }
  void event(WatchEventType t, const nlohmann::json& o) override {
    add(std::string(watchEventTypeName(t)) + " " + o["metadata"].value("name", std::string("?")));
  }
  void add(const std::string& s) {
    std::lock_guard lk(mu);
    log.push_back(s);
  }
  std::vector<std::string> get() {
    std::lock_guard lk(mu);
    return log;
  }
};

const std::string kList = "/api/v1/services?limit=500";
const std::string kPage2 = "/api/v1/services?limit=500&continue=";
const std::string kWatch = "/api/v1/services?watch=1";

struct Harness {
  FakeApi api;
  FakeTransport http{api};
  Recorder rec;
  std::vector<std::chrono::milliseconds> slept;
  ListWatchOptions opts;
  std::unique_ptr<ListWatch> lw;
  std::thread t;
  explicit Harness(ListWatchOptions o = {}) : opts(o) {
    opts.seed = 42;
  }
  void start() {
    lw = std::make_unique<ListWatch>(ResourceSpec{"services", "/api/v1/services", "", ""}, http,
                                     rec, opts, [this](std::chrono::milliseconds d) {
                                       slept.push_back(d);
                                       return true;
                                     });
    t = std::thread([this] { lw->run(); });
  }
  ~Harness() {
    if (lw) lw->stop();
    if (t.joinable()) t.join();
  }
  std::string param(size_t i, const std::string& key) {
    auto reqs = api.requests();
    if (i >= reqs.size()) return "<none>";
    auto& p = reqs[i].path;
    auto pos = p.find(key + "=");
    if (pos == std::string::npos) return "<absent>";
    auto end = p.find('&', pos);
    return p.substr(pos + key.size() + 1, end == std::string::npos ? std::string::npos : end - pos - key.size() - 1);
  }
};

TEST(ListWatch, PagedListThenWatchFollowsEventsAndBookmarks) {
  Harness h;
  h.api.push(kList, {200, fixture("services-list-limit1-page1.json")});
  h.api.push(kPage2, {200, fixture("services-list-limit1-page2-last.json")});
  h.api.push(kWatch, {200, fixture("watch-services.jsonl")});
  h.start();
  // list page 1, page 2, watch, then a second watch from the bookmark's resourceVersion.
  ASSERT_TRUE(h.api.waitRequests(kWatch, 2));
  auto log = h.rec.get();
  std::vector<std::string> want{"begin",        "item bad",    "item plain",  "item web",
                                "item web6",    "end 305",     "ADDED tmp",   "MODIFIED tmp",
                                "DELETED tmp"};
  EXPECT_EQ(log, want);
  EXPECT_EQ(h.param(0, "limit"), "500");
  EXPECT_EQ(h.param(0, "continue"), "<absent>");
  EXPECT_EQ(h.param(1, "continue"), "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MzA1LCJzdGFydCI6Ii9iYWRcdTAwMDAifQ");
  EXPECT_EQ(h.param(2, "resourceVersion"), "305");
  EXPECT_EQ(h.param(2, "allowWatchBookmarks"), "true");
  int timeout = std::stoi(h.param(2, "timeoutSeconds"));
  EXPECT_GE(timeout, 300);
  EXPECT_LT(timeout, 600);
  EXPECT_EQ(h.param(3, "resourceVersion"), "325") << "resumes from the BOOKMARK";
  auto st = h.lw->stats();
  EXPECT_EQ(st.lists, 1);
  EXPECT_EQ(st.pages, 2);
  EXPECT_EQ(st.events, 3);
  EXPECT_EQ(st.bookmarks, 1);
  EXPECT_TRUE(st.synced);
  EXPECT_TRUE(h.slept.empty()) << "a normal end of a watch is resumed at once";
}

/** A Service list page as the apiserver sends it (managedFields included). */
std::string servicePage(const std::vector<std::string>& names, const std::string& cont,
                        const std::string& rv, size_t annotationBytes = 0) {
  nlohmann::json items = nlohmann::json::array();
  for (auto& n : names)
    items.push_back({{"metadata",
                      {{"name", n},
                       {"namespace", "default"},
                       {"resourceVersion", "100"},
                       {"annotations", {{"big", std::string(annotationBytes, 'x')}}},
                       {"managedFields",
                        {{{"manager", "kubectl"},
                          {"operation", "Update"},
                          {"fieldsV1", {{"f:spec", {{"f:ports", nlohmann::json::object()}}}}}}}}}},
                     {"spec", {{"type", "ClusterIP"}}}});
  nlohmann::json meta = {{"resourceVersion", rv}};
  if (!cont.empty()) meta["continue"] = cont;
  return nlohmann::json{{"kind", "ServiceList"}, {"apiVersion", "v1"}, {"metadata", meta},
                        {"items", items}}
      .dump();
}

TEST(ListWatch, ThreePageListIsAssembledAndAnOversizedPageIsListedAgainInSmallerPages) {
  ListWatchOptions o;
  o.maxResponseBytes = 4096;
  Harness h(o);
  const std::string pages = "/api/v1/services?limit=";
  h.api.push(pages, {200, servicePage({"a", "b"}, "c1", "")});
  h.api.push(pages, {200, servicePage({"c", "d"}, "c2", "", 8192)});  // over the 4 KiB cap
  h.api.push(pages, {200, servicePage({"a", "b"}, "c1", "")});
  h.api.push(pages, {200, servicePage({"c", "d"}, "c2", "")});
  h.api.push(pages, {200, servicePage({"e"}, "", "900")});
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kWatch, 1));
  std::vector<std::string> want{"begin",  "item a", "item b", "abort",  "begin",  "item a",
                                "item b", "item c", "item d", "item e", "end 900"};
  EXPECT_EQ(h.rec.get(), want) << "the refused list changed nothing; the next one has 3 pages";
  EXPECT_EQ(h.param(0, "limit"), "500");
  EXPECT_EQ(h.param(1, "continue"), "c1");
  EXPECT_EQ(h.param(2, "limit"), "250") << "listed again at once with half the page size";
  EXPECT_EQ(h.param(2, "continue"), "<absent>");
  EXPECT_EQ(h.param(3, "continue"), "c1");
  EXPECT_EQ(h.param(4, "continue"), "c2");
  EXPECT_EQ(h.param(4, "limit"), "250");
  EXPECT_EQ(h.param(5, "resourceVersion"), "900");
  for (auto& r : h.api.requests())
    if (!r.path.starts_with(kWatch)) EXPECT_EQ(r.maxBody, 4096u) << r.path;
  auto st = h.lw->stats();
  EXPECT_EQ(st.lists, 1);
  EXPECT_EQ(st.pages, 4);
  EXPECT_EQ(st.errors, 0);
  EXPECT_TRUE(h.slept.empty());
  EXPECT_EQ(h.rec.withManagedFields, 0) << "managedFields are dropped while parsing";
}

TEST(ListWatch, ObjectOverTheCapAtPageSizeOneFailsTheListAndBacksOff) {
  ListWatchOptions o;
  o.maxResponseBytes = 4096;
  o.pageSize = 2;
  Harness h(o);
  const std::string pages = "/api/v1/services?limit=";
  h.api.push(pages, {200, servicePage({"a", "b"}, "", "5", 8192)});
  h.api.push(pages, {200, servicePage({"a"}, "c1", "", 8192)});
  h.api.push(pages, {200, servicePage({"a"}, "", "6")});  // the object shrank: the retry works
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kWatch, 1));
  EXPECT_EQ(h.param(0, "limit"), "2");
  EXPECT_EQ(h.param(1, "limit"), "1");
  EXPECT_EQ(h.param(2, "limit"), "1");
  EXPECT_EQ(h.lw->stats().errors, 1);
  EXPECT_EQ(h.slept.size(), 1u);
  auto log = h.rec.get();
  EXPECT_EQ(log.back(), "end 6");
}

TEST(ListWatch, WatchEventOverTheCapFailsTheWatchWhichResumesFromTheLastGoodVersion) {
  ListWatchOptions o;
  o.maxResponseBytes = 1024;
  Harness h(o);
  h.api.push(kList, {200, servicePage({"a"}, "", "10")});
  nlohmann::json big = {{"type", "ADDED"},
                        {"object", {{"metadata", {{"name", "big"}, {"resourceVersion", "11"},
                                                  {"annotations", {{"x", std::string(4096, 'x')}}}}}}}};
  nlohmann::json small = {{"type", "ADDED"},
                          {"object", {{"metadata", {{"name", "small"}, {"resourceVersion", "12"}}}}}};
  h.api.push(kWatch, {200, big.dump() + "\n" + small.dump() + "\n"});
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kWatch, 2));
  auto log = h.rec.get();
  EXPECT_EQ(std::count(log.begin(), log.end(), "ADDED big"), 0);
  EXPECT_EQ(h.param(2, "resourceVersion"), "10") << "resumes from the last good resourceVersion";
  EXPECT_EQ(h.lw->stats().errors, 1);
}

TEST(WatchDecoder, ManagedFieldsAreDroppedWhileParsing) {
  auto e = WatchDecoder::decodeLine(
      R"({"type":"MODIFIED","object":{"metadata":{"name":"web","resourceVersion":"7",)"
      R"("annotations":{"cmd.nu/tunnel":"203.0.113.10"},"managedFields":[{"manager":"m",)"
      R"("fieldsV1":{"f:metadata":{}}}]},"spec":{"ports":[{"port":80}]}}})");
  ASSERT_TRUE(e) << e.error().message;
  EXPECT_FALSE(e->object["metadata"].contains("managedFields"));
  EXPECT_EQ(e->resourceVersion(), "7");
  EXPECT_EQ(e->object["metadata"]["annotations"]["cmd.nu/tunnel"], "203.0.113.10");
  EXPECT_EQ(e->object["spec"]["ports"][0]["port"], 80);
  auto list = WatchDecoder::parseObjects(servicePage({"a", "b"}, "", "5"));
  ASSERT_TRUE(list.is_object());
  ASSERT_EQ(list["items"].size(), 2u);
  for (auto& i : list["items"]) {
    EXPECT_FALSE(i["metadata"].contains("managedFields"));
    EXPECT_EQ(i["metadata"]["namespace"], "default");
  }
  EXPECT_TRUE(WatchDecoder::parseObjects("{not json").is_discarded());
}

TEST(ListWatch, GoneErrorEventRelistsAtOnce) {
  Harness h;
  h.api.push(kList, {200, fixture("services-list.json")});
  h.api.push(kWatch, {200, fixture("watch-services-410-gone.jsonl")});
  h.api.push(kList, {200, fixture("services-list.json")});
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kWatch, 2));
  auto st = h.lw->stats();
  EXPECT_EQ(st.gone, 1);
  EXPECT_EQ(st.lists, 2);
  EXPECT_TRUE(h.slept.empty());
  auto log = h.rec.get();
  EXPECT_EQ(std::count(log.begin(), log.end(), "end 304"), 2);
  EXPECT_EQ(h.param(1, "resourceVersion"), "304");
  EXPECT_EQ(h.param(3, "resourceVersion"), "304");
}

TEST(ListWatch, Http410OnWatchRelists) {
  Harness h;
  h.api.push(kList, {200, fixture("services-list.json")});
  h.api.push(kWatch, {410, fixture("services-list-410-gone.json")});
  h.api.push(kList, {200, fixture("services-list.json")});
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kWatch, 2));
  EXPECT_EQ(h.lw->stats().gone, 1);
  EXPECT_EQ(h.lw->stats().lists, 2);
}

TEST(ListWatch, ExpiredContinueTokenRestartsTheListAndKeepsTheOldState) {
  Harness h;
  h.api.push(kList, {200, fixture("services-list-limit1-page1.json")});
  h.api.push(kPage2, {410, fixture("services-list-410-gone.json")});
  h.api.push(kList, {200, fixture("services-list.json")});
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kWatch, 1));
  auto log = h.rec.get();
  ASSERT_GE(log.size(), 3u);
  EXPECT_EQ(log[0], "begin");
  EXPECT_EQ(log[1], "item bad");
  EXPECT_EQ(log[2], "abort");
  EXPECT_EQ(log[3], "begin");
  EXPECT_EQ(log.back(), "end 304");
  EXPECT_EQ(h.param(3, "resourceVersion"), "304");
}

TEST(ListWatch, FailuresBackOffExponentiallyWithJitterUpTo30s) {
  Harness h;
  for (int i = 0; i < 12; ++i) h.api.push(kList, {0, "", "connection refused"});
  h.api.push(kList, {403, R"({"kind":"Status","apiVersion":"v1","status":"Failure","message":"services is forbidden: User \"system:serviceaccount:x:y\" cannot list resource \"services\"","reason":"Forbidden","code":403})"});
  h.api.push(kList, {200, fixture("services-list.json")});
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kWatch, 1));
  ASSERT_EQ(h.slept.size(), 13u);
  long long base = 200;
  for (size_t i = 0; i < h.slept.size(); ++i) {
    long long d = h.slept[i].count();
    EXPECT_GE(d, base / 2) << i;
    EXPECT_LE(d, base) << i;
    base = std::min<long long>(base * 2, 30000);
  }
  EXPECT_GE(h.slept.back().count(), 15000);
  EXPECT_LE(h.slept.back().count(), 30000);
  EXPECT_EQ(h.lw->stats().errors, 13);
  EXPECT_TRUE(h.lw->stats().healthy);
  // After success the backoff starts again from the beginning.
  h.api.push(kWatch, {0, "", "connection reset"});
  ASSERT_TRUE(h.api.waitRequests(kWatch, 2));
  h.api.push(kWatch, {200, "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"999\"}}}\n"});
  ASSERT_TRUE(h.api.waitRequests(kWatch, 3));
  EXPECT_LE(h.slept.back().count(), 200);
  EXPECT_EQ(h.param(h.api.requests().size() - 1, "resourceVersion"), "999");
  EXPECT_EQ(h.lw->stats().lists, 1) << "a broken connection resumes the watch, it does not relist";
}

TEST(ListWatch, MalformedEventResumesFromTheLastGoodResourceVersion) {
  Harness h;
  h.api.push(kList, {200, fixture("services-list.json")});
  auto lines = fixture("watch-services.jsonl");
  auto first = lines.substr(0, lines.find('\n') + 1);  // ADDED tmp @309
  h.api.push(kWatch, {200, first + "{\"type\":\"MODIFIED\",\"object\":{broken\n"});
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kWatch, 2));
  EXPECT_EQ(h.param(2, "resourceVersion"), "309");
  EXPECT_EQ(h.slept.size(), 1u);
  EXPECT_EQ(h.lw->stats().lists, 1);
}

TEST(ListWatch, NonGoneErrorEventBacksOffAndResumesWatch) {
  Harness h;
  h.api.push(kList, {200, fixture("services-list.json")});
  h.api.push(kWatch, {200, R"({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Too large resource version","reason":"Timeout","code":504}})" "\n"});
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kWatch, 2));
  EXPECT_EQ(h.lw->stats().lists, 1);
  EXPECT_EQ(h.lw->stats().gone, 0);
  EXPECT_EQ(h.slept.size(), 1u);
}

TEST(ListWatch, StopInterruptsABlockedWatch) {
  Harness h;
  h.api.push(kList, {200, fixture("services-list.json")});
  h.start();
  ASSERT_TRUE(h.api.waitRequests(kWatch, 1));
  auto t0 = std::chrono::steady_clock::now();
  h.lw->stop();
  h.t.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
}

TEST(ListWatch, SelectorsAreSentOnListAndWatch) {
  FakeApi api;
  FakeTransport http(api);
  Recorder rec;
  ListWatch lw({"slices", "/apis/discovery.k8s.io/v1/endpointslices", "app=web", "a.b=c d"}, http,
               rec, {}, [](auto) { return true; });
  api.push("/apis/discovery.k8s.io/v1/endpointslices?limit", {200, fixture("endpointslices-list.json")});
  std::thread t([&] { lw.run(); });
  ASSERT_TRUE(api.waitRequests("/apis/discovery.k8s.io/v1/endpointslices?watch", 1));
  lw.stop();
  t.join();
  auto reqs = api.requests();
  EXPECT_NE(reqs[0].path.find("labelSelector=app%3Dweb"), std::string::npos) << reqs[0].path;
  EXPECT_NE(reqs[1].path.find("fieldSelector=a.b%3Dc%20d"), std::string::npos) << reqs[1].path;
}

}  // namespace
}  // namespace kst::k8s
