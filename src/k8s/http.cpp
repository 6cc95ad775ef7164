#include "k8s/http.h"

#include <curl/curl.h>
#include <sys/stat.h>

#include <csignal>

#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace kst::k8s {

std::string urlEncode(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') out.push_back(char(c));
    else out += fmt::format("%{:02X}", c);
  }
  return out;
}

std::string statusMessage(const std::string& body) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  // Any field may have any type (the body is whatever answered): look, never convert.
  auto text = [&](const char* key) -> std::string {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>().substr(0, 512) : "";
  };
  if (j.is_object() && text("kind") == "Status") {
    std::string reason = text("reason"), msg = text("message");
    return reason.empty() ? msg : reason + ": " + msg;
  }
  std::string b = body.substr(0, 200);
  for (auto& c : b)
    if (c == '\n' || c == '\r') c = ' ';
  return b;
}

namespace {

std::once_flag gCurlInit;

struct Transfer {
  const ChunkFn* onChunk = nullptr;
  CURL* easy = nullptr;
  long status = 0;
  HttpResponse* resp = nullptr;
  bool aborted = false;
  size_t maxBody = 0;
  bool tooLarge = false;  // a collected 2xx body went over maxBody: the transfer was cut
};

constexpr size_t kMaxErrorBody = size_t(1) << 20;

size_t onWrite(char* ptr, size_t size, size_t nmemb, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t n = size * nmemb;
  if (t->status == 0) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
  bool ok2xx = t->status >= 200 && t->status < 300;
  if (ok2xx && t->onChunk && *t->onChunk) {
    if (!(*t->onChunk)(std::string_view(ptr, n))) {
      t->aborted = true;
      return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    }
    return n;
  }
  if (!ok2xx) {  // an error body: its beginning says enough (statusMessage)
    if (t->resp->body.size() < kMaxErrorBody)
      t->resp->body.append(ptr, std::min(n, kMaxErrorBody - t->resp->body.size()));
    return n;
  }
  if (t->maxBody && t->resp->body.size() + n > t->maxBody) {
    t->tooLarge = true;
    return 0;  // aborts the transfer before the body grows past the limit
  }
  t->resp->body.append(ptr, n);
  return n;
}

// End of a response's headers: a final 2xx status with a chunk callback is announced to it with
// an empty chunk (a watch is established before its first event arrives).
size_t onHeader(char* ptr, size_t size, size_t nmemb, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t n = size * nmemb;
  if (n == 2 && ptr[0] == '\r' && ptr[1] == '\n') {
    long code = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 200 && code < 300) {
      t->status = code;
      // A body to collect that announces more than the limit is refused before it arrives.
      curl_off_t len = -1;
      bool collected = !(t->onChunk && *t->onChunk);
      if (collected && t->maxBody &&
          curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len) == CURLE_OK &&
          len > 0 && curl_off_t(t->maxBody) < len) {
        t->tooLarge = true;
        return 0;
      }
      if (t->onChunk && *t->onChunk && !(*t->onChunk)(std::string_view())) {
        t->aborted = true;
        return 0;
      }
    }
  }
  return n;
}

curl_blob blob(const std::string& s) {
  return curl_blob{const_cast<char*>(s.data()), s.size(), CURL_BLOB_COPY};
}

}  // namespace

CurlTransport::CurlTransport(ClientConfig cfg, CurlTransportOptions opts)
    : cfg_(std::move(cfg)), opts_(std::move(opts)) {}

Result<std::unique_ptr<CurlTransport>> CurlTransport::create(const ClientConfig& cfg,
                                                             CurlTransportOptions opts) {
  std::call_once(gCurlInit, [] {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    // A server that closes a connection while we write must give an error, not kill the
    // daemon (libcurl leaves SIGPIPE alone with CURLOPT_NOSIGNAL; OpenSSL may still raise it).
    std::signal(SIGPIPE, SIG_IGN);
  });
  std::unique_ptr<CurlTransport> t(new CurlTransport(cfg, std::move(opts)));
  t->multi_ = curl_multi_init();
  t->easy_ = curl_easy_init();
  if (!t->multi_ || !t->easy_) return fail(ENOMEM, "curl: cannot create a handle");
  return t;
}

CurlTransport::~CurlTransport() {
  std::lock_guard lk(wakeMu_);
  if (easy_) curl_easy_cleanup(static_cast<CURL*>(easy_));
  if (multi_) curl_multi_cleanup(static_cast<CURLM*>(multi_));
  easy_ = multi_ = nullptr;
}

void CurlTransport::shutdown() {
  shutdown_ = true;
  std::lock_guard lk(wakeMu_);
  if (multi_) curl_multi_wakeup(static_cast<CURLM*>(multi_));
}

std::string CurlTransport::bearerToken() {
  if (!cfg_.token.empty()) return cfg_.token;
  if (cfg_.tokenFile.empty()) return {};
  struct stat st{};
  if (stat(cfg_.tokenFile.c_str(), &st) == 0) {
    long long mt = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    if (forceTokenReload_ || mt != tokenStat_.mtimeNs || st.st_size != tokenStat_.size ||
        st.st_ino != tokenStat_.ino) {
      std::ifstream f(cfg_.tokenFile);
      std::stringstream ss;
      ss << f.rdbuf();
      std::string t = ss.str();
      while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ')) t.pop_back();
      if (!t.empty()) {
        if (!fileToken_.empty() && t != fileToken_)
          spdlog::info("kubernetes: token file {} changed; using the new token", cfg_.tokenFile);
        fileToken_ = t;
      }
      tokenStat_ = {mt, (long long)st.st_size, (unsigned long)st.st_ino};
      forceTokenReload_ = false;
    }
  }
  return fileToken_;
}

Result<HttpResponse> CurlTransport::perform(const HttpRequest& req, const ChunkFn& onChunk) {
  if (shutdown_) return fail(ECANCELED, "shutting down");
  auto* easy = static_cast<CURL*>(easy_);
  auto* multi = static_cast<CURLM*>(multi_);
  curl_easy_reset(easy);
  HttpResponse resp;
  Transfer tr{&onChunk, easy, 0, &resp, false, req.maxBody, false};
  std::string url = cfg_.server + req.path;
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, long(req.timeout.count()) * 1000L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPIDLE, 30L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPINTVL, 10L);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, onWrite);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &tr);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, onHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &tr);
  curl_easy_setopt(easy, CURLOPT_USERAGENT, "kube-service-tunnel/0.1.0");
  curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");  // gzip if the server offers it
  // Trust: the system store (libcurl's default CA file and path, or the configured
  // directory) unless the configuration names a CA; then that CA alone. CURLOPT_CAINFO_BLOB
  // replaces only the CA *file*: libcurl (7.88, OpenSSL) still loads the default CA *path*
  // beside it, so a certificate from any public CA would be accepted and receive the token.
  if (!opts_.systemCaPath.empty()) {
    curl_easy_setopt(easy, CURLOPT_CAINFO, nullptr);
    curl_easy_setopt(easy, CURLOPT_CAPATH, opts_.systemCaPath.c_str());
  }
  if (!cfg_.caPem.empty()) {
    auto b = blob(cfg_.caPem);
    curl_easy_setopt(easy, CURLOPT_CAINFO_BLOB, &b);
    curl_easy_setopt(easy, CURLOPT_CAINFO, nullptr);
    curl_easy_setopt(easy, CURLOPT_CAPATH, nullptr);
  }
  if (cfg_.insecureSkipVerify) {
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (!cfg_.clientCertPem.empty()) {
    auto c = blob(cfg_.clientCertPem), k = blob(cfg_.clientKeyPem);
    curl_easy_setopt(easy, CURLOPT_SSLCERT_BLOB, &c);
    curl_easy_setopt(easy, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(easy, CURLOPT_SSLKEY_BLOB, &k);
    curl_easy_setopt(easy, CURLOPT_SSLKEYTYPE, "PEM");
  }
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Accept: application/json");
  std::string token = bearerToken();
  std::string auth = "Authorization: Bearer " + token;
  if (!token.empty()) headers = curl_slist_append(headers, auth.c_str());
  std::string ctype = "Content-Type: " + req.contentType;
  if (!req.contentType.empty()) headers = curl_slist_append(headers, ctype.c_str());
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
  if (req.method == "GET") {
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req.body.c_str());
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, long(req.body.size()));
  }

  curl_multi_add_handle(multi, easy);
  CURLcode result = CURLE_OK;
  bool done = false;
  while (!done) {
    int running = 0;
    CURLMcode mc = curl_multi_perform(multi, &running);
    if (mc != CURLM_OK) {
      result = CURLE_FAILED_INIT;
      break;
    }
    int left = 0;
    while (CURLMsg* m = curl_multi_info_read(multi, &left)) {
      if (m->msg == CURLMSG_DONE) {
        result = m->data.result;
        done = true;
      }
    }
    if (done) break;
    if (shutdown_) {
      result = CURLE_ABORTED_BY_CALLBACK;
      break;
    }
    curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
    if (shutdown_) {
      result = CURLE_ABORTED_BY_CALLBACK;
      break;
    }
  }
  curl_multi_remove_handle(multi, easy);
  curl_slist_free_all(headers);
  if (tr.status == 0) curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &tr.status);
  resp.status = int(tr.status);
  if (tr.aborted) {
    resp.aborted = true;
    return resp;
  }
  if (shutdown_) return fail(ECANCELED, "shutting down");
  if (tr.tooLarge)
    return fail(EMSGSIZE, fmt::format("{} {}: the answer is larger than {} MiB; refused (not "
                                      "buffered)",
                                      req.method, url, double(req.maxBody) / (1 << 20)));
  if (result != CURLE_OK)
    return fail(EIO, fmt::format("{} {}: {}", req.method, url, curl_easy_strerror(result)));
  if (resp.status == 401 && !cfg_.tokenFile.empty()) forceTokenReload_ = true;
  return resp;
}

}  // namespace kst::k8s
