#include "k8s/watch.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/guard.h"

namespace kst::k8s {

const char* watchEventTypeName(WatchEventType t) {
  switch (t) {
    case WatchEventType::Added: return "ADDED";
    case WatchEventType::Modified: return "MODIFIED";
    case WatchEventType::Deleted: return "DELETED";
    case WatchEventType::Bookmark: return "BOOKMARK";
    case WatchEventType::Error: return "ERROR";
  }
  return "?";
}

std::string WatchEvent::resourceVersion() const {
  if (!object.is_object()) return {};
  auto m = object.find("metadata");
  if (m == object.end() || !m->is_object()) return {};
  auto rv = m->find("resourceVersion");
  if (rv == m->end() || !rv->is_string()) return {};
  return rv->get<std::string>();
}

nlohmann::json WatchDecoder::parseObjects(std::string_view text) {
  using json = nlohmann::json;
  json::parser_callback_t dropManagedFields = [](int depth, json::parse_event_t ev, json& parsed) {
    // Any key named managedFields below the top level; the API sends it only as
    // metadata.managedFields (depth 2 in an object, 3 in a watch event, 4 in a list item). A
    // key event returning false drops the key and its value.
    return !(ev == json::parse_event_t::key && depth >= 2 && parsed.is_string() &&
             parsed.get_ref<const std::string&>() == "managedFields");
  };
  return json::parse(text, dropManagedFields, false);
}

Result<WatchEvent> WatchDecoder::decodeLine(std::string_view line) {
  auto j = parseObjects(line);
  if (j.is_discarded()) {
    std::string head(line.substr(0, 80));
    return fail(EBADMSG, fmt::format("watch: line is not JSON: {:?}", head));
  }
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    return fail(EBADMSG, "watch: event without a type");
  std::string type = j["type"].get<std::string>();
  WatchEvent ev;
  if (type == "ADDED") ev.type = WatchEventType::Added;
  else if (type == "MODIFIED") ev.type = WatchEventType::Modified;
  else if (type == "DELETED") ev.type = WatchEventType::Deleted;
  else if (type == "BOOKMARK") ev.type = WatchEventType::Bookmark;
  else if (type == "ERROR") ev.type = WatchEventType::Error;
  else return fail(EBADMSG, fmt::format("watch: unknown event type {:?}", type));
  auto obj = j.find("object");
  if (obj == j.end() || !obj->is_object())
    return fail(EBADMSG, fmt::format("watch: {} event without an object", type));
  ev.object = std::move(*obj);
  return ev;
}

void WatchDecoder::feed(std::string_view data, const Sink& sink) {
  while (!data.empty()) {
    auto nl = data.find('\n');
    if (nl == std::string_view::npos) {
      if (discarding_) return;
      if (buf_.size() + data.size() > maxLine_) {
        sink(fail(EMSGSIZE, fmt::format("watch: event larger than {} bytes; skipped", maxLine_)));
        buf_.clear();
        discarding_ = true;
        return;
      }
      buf_.append(data);
      return;
    }
    std::string_view part = data.substr(0, nl);
    data.remove_prefix(nl + 1);
    if (discarding_) {
      discarding_ = false;
      continue;
    }
    std::string_view line;
    if (buf_.empty()) {
      line = part;
    } else {
      if (buf_.size() + part.size() > maxLine_) {
        sink(fail(EMSGSIZE, fmt::format("watch: event larger than {} bytes; skipped", maxLine_)));
        buf_.clear();
        continue;
      }
      buf_.append(part);
      line = buf_;
    }
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
    if (!line.empty()) sink(decodeLine(line));
    buf_.clear();
  }
}

// ---------------------------------------------------------------------------------------------

ListWatch::ListWatch(ResourceSpec spec, HttpTransport& http, ListWatchHandler& handler,
                     ListWatchOptions opts, Sleeper sleeper)
    : spec_(std::move(spec)),
      http_(http),
      handler_(handler),
      opts_(opts),
      pageSize_(std::max<size_t>(1, opts.pageSize)),
      sleeper_(std::move(sleeper)),
      rng_(opts.seed ? opts.seed : std::random_device{}()) {}

void ListWatch::stop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  http_.shutdown();
}

ListWatch::Stats ListWatch::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

std::string ListWatch::resourceVersion() const {
  std::lock_guard lk(mu_);
  return rv_;
}

std::vector<std::chrono::milliseconds> ListWatch::delays() const {
  std::lock_guard lk(mu_);
  return delays_;
}

bool ListWatch::sleep(std::chrono::milliseconds d) {
  {
    std::lock_guard lk(mu_);
    delays_.push_back(d);
  }
  if (sleeper_) return sleeper_(d) && !stop_;
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, d, [&] { return stop_.load(); });
  return !stop_;
}

std::chrono::milliseconds ListWatch::nextBackoff() {
  // Capped exponential backoff with "equal jitter": a random value in [base/2, base].
  auto base = opts_.backoffInitial;
  for (int i = 0; i < attempt_ && base < opts_.backoffMax; ++i) base *= 2;
  base = std::min(base, opts_.backoffMax);
  ++attempt_;
  auto half = base.count() / 2;
  std::uniform_int_distribution<long long> dist(0, half);
  return std::chrono::milliseconds(base.count() - half + dist(rng_));
}

void ListWatch::failed(const std::string& what) {
  std::lock_guard lk(mu_);
  ++stats_.errors;
  stats_.healthy = false;
  if (!down_) {
    down_ = true;
    downSince_ = std::chrono::steady_clock::now();
    spdlog::warn("kubernetes: {}: {}; API server unreachable or failing: keeping the last known "
                 "state and retrying with backoff",
                 spec_.name, what);
  } else {
    spdlog::warn("kubernetes: {}: still failing ({} attempts): {}", spec_.name, attempt_, what);
  }
}

void ListWatch::succeeded() {
  std::lock_guard lk(mu_);
  attempt_ = 0;
  stats_.healthy = true;
  if (down_) {
    down_ = false;
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - downSince_).count();
    spdlog::info("kubernetes: {}: API server reachable again after {:.1f} s", spec_.name, s);
  }
}

std::string ListWatch::query(
    const std::vector<std::pair<std::string, std::string>>& params) const {
  std::string q = spec_.path;
  char sep = '?';
  auto add = [&](const std::string& k, const std::string& v) {
    q += sep + k + "=" + urlEncode(v);
    sep = '&';
  };
  for (auto& [k, v] : params) add(k, v);
  if (!spec_.labelSelector.empty()) add("labelSelector", spec_.labelSelector);
  if (!spec_.fieldSelector.empty()) add("fieldSelector", spec_.fieldSelector);
  return q;
}

ListWatch::Outcome ListWatch::list() {
  handler_.beginList();
  std::string cont, rv;
  int pages = 0;
  size_t items = 0;
  auto start = std::chrono::steady_clock::now();
  while (true) {
    if (stop_) {
      handler_.abortList();
      return Outcome::Stopped;
    }
    std::vector<std::pair<std::string, std::string>> params{
        {"limit", std::to_string(pageSize_)}};
    if (!cont.empty()) params.push_back({"continue", cont});
    HttpRequest req;
    req.path = query(params);
    req.timeout = opts_.requestTimeout;
    req.maxBody = opts_.maxResponseBytes;
    auto resp = http_.perform(req);
    if (stop_) {
      handler_.abortList();
      return Outcome::Stopped;
    }
    if (!resp && resp.error().code == EMSGSIZE && pageSize_ > 1) {
      // Big objects: fewer per page. The list starts over (a continue token belongs to its
      // list); the handler keeps its old state until a list completes.
      handler_.abortList();
      pageSize_ /= 2;
      spdlog::warn("kubernetes: {}: {}; listing again with {} objects per page", spec_.name,
                   resp.error().message, pageSize_);
      handler_.beginList();
      cont.clear();
      pages = 0;
      items = 0;
      continue;
    }
    if (!resp) {
      handler_.abortList();
      failed("list: " + resp.error().message);
      return Outcome::Error;
    }
    if (resp->status == 410) {
      // The continue token expired (the list took longer than etcd keeps history): start over.
      handler_.abortList();
      {
        std::lock_guard lk(mu_);
        ++stats_.gone;
      }
      spdlog::warn("kubernetes: {}: list continuation expired ({}); listing again", spec_.name,
                   statusMessage(resp->body));
      return Outcome::Gone;
    }
    if (resp->status != 200) {
      handler_.abortList();
      failed(fmt::format("list: HTTP {}: {}", resp->status, statusMessage(resp->body)));
      return Outcome::Error;
    }
    auto j = WatchDecoder::parseObjects(resp->body);
    resp->body.clear();
    resp->body.shrink_to_fit();
    if (!j.is_object() || !j.contains("metadata") || !j["metadata"].is_object()) {
      handler_.abortList();
      failed("list: the answer is not a Kubernetes list");
      return Outcome::Error;
    }
    {
      std::lock_guard lk(mu_);
      ++stats_.pages;
    }
    ++pages;
    if (j.contains("items") && j["items"].is_array())
      for (const auto& item : j["items"]) {
        // One object the decoders did not expect costs that object only (not the list: a
        // relist would meet it again).
        try {
          handler_.listItem(item);
        } catch (const std::exception& e) {
          spdlog::error("kubernetes: {}: list item skipped: {}", spec_.name, e.what());
        }
        ++items;
      }
    const auto& m = j["metadata"];
    rv = m.contains("resourceVersion") && m["resourceVersion"].is_string()
             ? m["resourceVersion"].get<std::string>()
             : "";
    cont = m.contains("continue") && m["continue"].is_string() ? m["continue"].get<std::string>()
                                                               : "";
    if (cont.empty()) break;
  }
  handler_.endList(rv);
  {
    std::lock_guard lk(mu_);
    rv_ = rv;
    ++stats_.lists;
    stats_.synced = true;
  }
  succeeded();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::steady_clock::now() - start).count();
  spdlog::info("kubernetes: {}: listed {} objects in {} page(s), resourceVersion {} ({} ms)",
               spec_.name, items, pages, rv, ms);
  return Outcome::Ok;
}

ListWatch::Outcome ListWatch::watch() {
  auto t = opts_.watchTimeout.count();
  std::uniform_int_distribution<long long> dist(t, std::max(t, 2 * t - 1));
  long long timeout = dist(rng_);
  std::string rv = resourceVersion();
  HttpRequest req;
  req.path = query({{"watch", "1"},
                    {"allowWatchBookmarks", "true"},
                    {"resourceVersion", rv},
                    {"timeoutSeconds", std::to_string(timeout)}});
  req.timeout = std::chrono::seconds(timeout + 30);
  {
    std::lock_guard lk(mu_);
    ++stats_.watches;
  }
  spdlog::debug("kubernetes: {}: watching from resourceVersion {} (timeout {} s)", spec_.name, rv,
                timeout);
  WatchDecoder dec(opts_.maxResponseBytes);
  Outcome outcome = Outcome::Ok;
  std::string problem;
  bool connected = false;
  int lines = 0;
  auto start = std::chrono::steady_clock::now();
  auto onEvent = [&](Result<WatchEvent> r) {
    if (outcome != Outcome::Ok) return;
    ++lines;
    if (!r) {
      // Resume from the last good resourceVersion: the server sends the skipped events again.
      outcome = Outcome::Error;
      problem = r.error().message;
      return;
    }
    switch (r->type) {
      case WatchEventType::Added:
      case WatchEventType::Modified:
      case WatchEventType::Deleted: {
        try {
          handler_.event(r->type, r->object);
        } catch (const std::exception& e) {
          spdlog::error("kubernetes: {}: {} event skipped: {}", spec_.name,
                        watchEventTypeName(r->type), e.what());
        }
        std::string erv = r->resourceVersion();
        std::lock_guard lk(mu_);
        if (!erv.empty()) rv_ = erv;
        ++stats_.events;
        break;
      }
      case WatchEventType::Bookmark: {
        std::string erv = r->resourceVersion();
        std::lock_guard lk(mu_);
        if (!erv.empty()) rv_ = erv;
        ++stats_.bookmarks;
        break;
      }
      case WatchEventType::Error: {
        const auto& o = r->object;
        int code = o.contains("code") && o["code"].is_number_integer() ? o["code"].get<int>() : 0;
        std::string reason = o.contains("reason") && o["reason"].is_string()
                                 ? o["reason"].get<std::string>()
                                 : "";
        problem = statusMessage(o.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
        if (code == 410 || reason == "Expired" || reason == "Gone") outcome = Outcome::Gone;
        else outcome = Outcome::Error;
        break;
      }
    }
  };
  auto resp = http_.perform(req, [&](std::string_view data) {
    if (!connected) {
      connected = true;
      succeeded();  // headers of a 2xx answer: the watch is established
    }
    dec.feed(data, onEvent);
    return outcome == Outcome::Ok && !stop_;
  });
  if (stop_) return Outcome::Stopped;
  if (!resp) {
    failed("watch: " + resp.error().message);
    return Outcome::Error;
  }
  if (resp->status == 410) {
    outcome = Outcome::Gone;
    problem = statusMessage(resp->body);
  } else if (resp->status != 200) {
    failed(fmt::format("watch: HTTP {}: {}", resp->status, statusMessage(resp->body)));
    return Outcome::Error;
  }
  if (outcome == Outcome::Gone) {
    {
      std::lock_guard lk(mu_);
      ++stats_.gone;
    }
    spdlog::warn("kubernetes: {}: watch from resourceVersion {} expired (410 Gone: {}); "
                 "relisting",
                 spec_.name, rv, problem);
    return Outcome::Gone;
  }
  if (outcome == Outcome::Error) {
    failed("watch: " + problem);
    return Outcome::Error;
  }
  if (!connected) succeeded();
  if (dec.pending())
    spdlog::debug("kubernetes: {}: watch ended inside an event ({} bytes dropped)", spec_.name,
                  dec.pending());
  auto took = std::chrono::steady_clock::now() - start;
  if (lines == 0 && took < std::chrono::seconds(1)) {
    // A server (or proxy) that ends watches at once would otherwise make us spin.
    failed("watch: the server ended the watch immediately");
    return Outcome::Error;
  }
  spdlog::debug("kubernetes: {}: watch ended after {} events, resuming", spec_.name, lines);
  return Outcome::Ok;
}

void ListWatch::run() {
  // An exception (one object the decoders did not expect) costs a relist, not the daemon.
  keepRunning(
      "kubernetes", [&] { loop(); }, [&] { return stop_.load(); }, opts_.backoffInitial);
}

void ListWatch::loop() {
  bool needList = true;
  int goneInRow = 0;
  while (!stop_) {
    if (needList) {
      auto o = list();
      if (o == Outcome::Stopped) return;
      if (o != Outcome::Ok) {
        if (!sleep(nextBackoff())) return;
        continue;
      }
      needList = false;
    }
    int eventsBefore = stats().events;
    auto o = watch();
    switch (o) {
      case Outcome::Stopped: return;
      case Outcome::Gone:
        needList = true;
        // Relist at once; but a server that answers 410 again straight after a fresh list
        // gets the backoff.
        if (stats().events == eventsBefore && ++goneInRow > 1) {
          if (!sleep(nextBackoff())) return;
        }
        break;
      case Outcome::Error:
        goneInRow = 0;
        if (!sleep(nextBackoff())) return;
        break;
      case Outcome::Ok: goneInRow = 0; break;
    }
  }
}

}  // namespace kst::k8s
