// List + watch of one Kubernetes resource, the way client-go's reflector does it, over the
// HttpTransport seam:
//   list (limit/continue pages) → watch from the list's resourceVersion with
//   allowWatchBookmarks=true&timeoutSeconds=… → when the server ends the watch, watch again from
//   the last resourceVersion seen (event or BOOKMARK) → on 410 Gone / Expired (HTTP status or an
//   ERROR event) relist → on transport/HTTP errors retry with capped exponential backoff and
//   jitter. No polling: between events nothing is sent but the server's bookmarks.
// The decoder of the newline-delimited watch stream is pure and incremental (chunks may split a
// line anywhere, also inside a UTF-8 sequence).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "k8s/http.h"

namespace kst::k8s {

enum class WatchEventType { Added, Modified, Deleted, Bookmark, Error };
const char* watchEventTypeName(WatchEventType t);

struct WatchEvent {
  WatchEventType type;
  nlohmann::json object;
  /** metadata.resourceVersion of the object ("" for ERROR events). */
  std::string resourceVersion() const;
};

/** Splits a watch stream into events. feed() may be given any split of the byte stream. */
class WatchDecoder {
 public:
  explicit WatchDecoder(size_t maxLine = size_t(64) << 20) : maxLine_(maxLine) {}
  using Sink = std::function<void(Result<WatchEvent>)>;
  /** Decodes every complete line in data (plus what was buffered before). A line that is not a
   *  watch event (bad JSON, unknown type, no object) yields an Error and decoding goes on with
   *  the next line; an overlong line is discarded up to its newline. */
  void feed(std::string_view data, const Sink& sink);
  /** Bytes of an incomplete last line kept for the next feed(). */
  size_t pending() const { return buf_.size(); }
  void reset() {
    buf_.clear();
    discarding_ = false;
  }
  static Result<WatchEvent> decodeLine(std::string_view line);
  /** nlohmann::json::parse of an API answer without the objects' metadata.managedFields (the
   *  server-side-apply bookkeeping, often the largest part of an object, never read here):
   *  they are dropped while parsing, never built as JSON values. Discarded on bad JSON. */
  static nlohmann::json parseObjects(std::string_view text);

 private:
  size_t maxLine_;
  std::string buf_;
  bool discarding_ = false;
};

struct ResourceSpec {
  std::string name;  // for logs: "services"
  std::string path;  // collection path: "/api/v1/services"
  std::string labelSelector;
  std::string fieldSelector;
};

/** Receives what a ListWatch learns. Called from the ListWatch's thread. */
class ListWatchHandler {
 public:
  virtual ~ListWatchHandler() = default;
  /** A (re)list starts; listItem() for every object of every page follows, then endList().
   *  A list that fails half-way is followed by abortList() (the handler keeps its old state). */
  virtual void beginList() = 0;
  virtual void listItem(const nlohmann::json& obj) = 0;
  virtual void endList(const std::string& resourceVersion) = 0;
  virtual void abortList() {}
  /** ADDED, MODIFIED or DELETED. */
  virtual void event(WatchEventType type, const nlohmann::json& obj) = 0;
};

struct ListWatchOptions {
  size_t pageSize = 500;
  /** Largest list page and largest watch event accepted (bytes); nothing longer is buffered.
   *  A longer list page starts the list again at once with half as many objects per page
   *  (down to 1; the smaller size is kept); a single object over it fails the list (retried
   *  with backoff; the cache keeps its state). A longer watch event fails that watch, which
   *  resumes from the last good resourceVersion after a backoff. */
  size_t maxResponseBytes = HttpRequest::kDefaultMaxBody;
  /** Server-side watch timeout; each watch asks for a random value in [t, 2t) (as client-go) so
   *  that many clients do not reconnect together. */
  std::chrono::seconds watchTimeout{300};
  std::chrono::seconds requestTimeout{60};  // one list page
  std::chrono::milliseconds backoffInitial{200};
  std::chrono::milliseconds backoffMax{30000};
  uint32_t seed = 0;  // 0 = random
};

class ListWatch {
 public:
  /** sleeper(d) waits d or until stop(); returns false when stopping. Tests inject one that
   *  does not sleep. */
  using Sleeper = std::function<bool(std::chrono::milliseconds)>;
  ListWatch(ResourceSpec spec, HttpTransport& http, ListWatchHandler& handler,
            ListWatchOptions opts = {}, Sleeper sleeper = {});
  /** Runs until stop(). */
  void run();
  /** Thread-safe; also interrupts the transport. */
  void stop();
  bool stopping() const { return stop_; }

  struct Stats {
    int lists = 0;       // completed lists
    int pages = 0;       // list pages fetched
    int watches = 0;     // watch requests started
    int gone = 0;        // 410 Gone / Expired seen
    int errors = 0;      // failed requests
    int events = 0;      // ADDED/MODIFIED/DELETED delivered
    int bookmarks = 0;
    bool synced = false; // a list has completed
    bool healthy = false;
  };
  Stats stats() const;
  std::string resourceVersion() const;
  /** The delays the last run() waited, in order (tests check the backoff). */
  std::vector<std::chrono::milliseconds> delays() const;

 private:
  enum class Outcome { Ok, Gone, Error, Stopped };
  void loop();
  Outcome list();
  Outcome watch();
  std::string query(const std::vector<std::pair<std::string, std::string>>& params) const;
  std::chrono::milliseconds nextBackoff();
  void failed(const std::string& what);
  void succeeded();
  bool sleep(std::chrono::milliseconds d);

  ResourceSpec spec_;
  HttpTransport& http_;
  ListWatchHandler& handler_;
  ListWatchOptions opts_;
  size_t pageSize_;  // opts_.pageSize, halved for each list page over maxResponseBytes
  Sleeper sleeper_;
  std::mt19937 rng_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string rv_;
  Stats stats_;
  int attempt_ = 0;
  std::chrono::steady_clock::time_point downSince_{};
  bool down_ = false;
  std::vector<std::chrono::milliseconds> delays_;
};

}  // namespace kst::k8s
