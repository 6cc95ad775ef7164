#include "k8s/kubeconfig.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <nlohmann/json.hpp>

#include "source/yaml.h"

namespace kst::k8s {

FileReader realFileReader() {
  return [](const std::string& path) -> Result<std::string> {
    std::ifstream f(path, std::ios::binary);
    if (!f) return sysFail(errno ? errno : ENOENT, "read " + path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
}

Result<std::string> base64Decode(const std::string& in) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  bool padding = false;
  for (char c : in) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      padding = true;
      continue;
    }
    int v = val(c);
    if (v < 0 || padding) return fail(EINVAL, "invalid base64");
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((acc >> bits) & 0xff));
    }
  }
  if (bits >= 6) return fail(EINVAL, "invalid base64 (truncated)");
  return out;
}

namespace {

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

std::unique_ptr<BIO, BioDeleter> memBio(const std::string& s) {
  return std::unique_ptr<BIO, BioDeleter>(BIO_new_mem_buf(s.data(), int(s.size())));
}

std::string opensslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (!e) return "no PEM data";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

std::string dirOf(const std::string& path) {
  auto p = path.rfind('/');
  if (p == std::string::npos) return ".";
  if (p == 0) return "/";
  return path.substr(0, p);
}

std::string resolve(const std::string& file, const std::string& origin) {
  if (file.empty() || file[0] == '/') return file;
  return dirOf(origin) + "/" + file;
}

/** A scalar field as text (YAML typed `true` or `443` as bool/number; kubeconfig reads them as
 *  text), "" when absent or not a scalar. */
std::string scalar(const nlohmann::json& n, const char* key) {
  if (!n.is_object()) return {};
  auto it = n.find(key);
  if (it == n.end() || it->is_null() || it->is_structured()) return {};
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

bool has(const nlohmann::json& n, const char* key) {
  if (!n.is_object()) return false;
  auto it = n.find(key);
  return it != n.end() && !it->is_null();
}

// One named entry (cluster, user or context) with the file that defined it.
struct Entry {
  nlohmann::json body;
  std::string file;
};

}  // namespace

Status checkCaPem(const std::string& pem) {
  auto bio = memBio(pem);
  int n = 0;
  ERR_clear_error();
  while (true) {
    std::unique_ptr<X509, X509Deleter> x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!x) break;
    ++n;
  }
  ERR_clear_error();
  if (n == 0) return fail(EINVAL, "no PEM certificate found");
  return {};
}

Status checkClientPair(const std::string& certPem, const std::string& keyPem) {
  ERR_clear_error();
  auto cb = memBio(certPem);
  std::unique_ptr<X509, X509Deleter> x(PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
  if (!x) return fail(EINVAL, "client certificate: " + opensslError());
  auto kb = memBio(keyPem);
  std::unique_ptr<EVP_PKEY, PkeyDeleter> k(
      PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
  if (!k) return fail(EINVAL, "client key: " + opensslError());
  if (X509_check_private_key(x.get(), k.get()) != 1) {
    ERR_clear_error();
    return fail(EINVAL, "client key does not match the client certificate");
  }
  return {};
}

Result<ClientConfig> parseKubeconfig(const std::vector<KubeconfigFile>& files,
                                     const std::string& contextOverride, const FileReader& read) {
  std::map<std::string, Entry> clusters, users, contexts;
  std::string current;
  for (const auto& f : files) {
    if (f.text.size() > kMaxKubeconfigBytes)
      return fail(EFBIG, fmt::format("kubeconfig {}: larger than {} bytes", f.path,
                                     kMaxKubeconfigBytes));
    auto docs = yamlDocuments(f.text);
    if (!docs) return fail(EINVAL, fmt::format("kubeconfig {}: {}", f.path, docs.error().message));
    if (docs->empty() || docs->front().is_null()) continue;  // an empty file is allowed (kubectl too)
    const nlohmann::json& doc = docs->front();
    if (!doc.is_object()) return fail(EINVAL, fmt::format("kubeconfig {}: not a mapping", f.path));
    auto collect = [&](const char* listKey, const char* bodyKey,
                       std::map<std::string, Entry>& into) -> Status {
      if (!has(doc, listKey)) return {};
      const auto& list = doc[listKey];
      if (!list.is_array())
        return fail(EINVAL, fmt::format("kubeconfig {}: {} is not a list", f.path, listKey));
      for (const auto& item : list) {
        std::string name = scalar(item, "name");
        if (name.empty())
          return fail(EINVAL, fmt::format("kubeconfig {}: an entry of {} has no name", f.path,
                                          listKey));
        if (!item.is_object() || !item.contains(bodyKey) || !item[bodyKey].is_object())
          return fail(EINVAL, fmt::format("kubeconfig {}: {} {:?} has no {} mapping", f.path,
                                          listKey, name, bodyKey));
        into.try_emplace(name, Entry{item[bodyKey], f.path});  // first definition wins
      }
      return {};
    };
    if (auto s = collect("clusters", "cluster", clusters); !s) return std::unexpected(s.error());
    if (auto s = collect("users", "user", users); !s) return std::unexpected(s.error());
    if (auto s = collect("contexts", "context", contexts); !s) return std::unexpected(s.error());
    if (current.empty()) current = scalar(doc, "current-context");
  }
  std::string ctxName = contextOverride.empty() ? current : contextOverride;
  if (ctxName.empty()) return fail(EINVAL, "kubeconfig: no current-context and no context given");
  auto ctxIt = contexts.find(ctxName);
  if (ctxIt == contexts.end())
    return fail(EINVAL, fmt::format("kubeconfig: context {:?} not found", ctxName));
  const auto& ctx = ctxIt->second.body;
  std::string clusterName = scalar(ctx, "cluster"), userName = scalar(ctx, "user");
  auto clIt = clusters.find(clusterName);
  if (clIt == clusters.end())
    return fail(EINVAL, fmt::format("kubeconfig: context {:?} names cluster {:?}, which is not "
                                    "defined",
                                    ctxName, clusterName));

  ClientConfig cfg;
  cfg.ns = scalar(ctx, "namespace");
  cfg.origin = fmt::format("kubeconfig {} context {}", ctxIt->second.file, ctxName);

  // Cluster.
  const auto& cl = clIt->second.body;
  cfg.server = scalar(cl, "server");
  while (cfg.server.ends_with("/")) cfg.server.pop_back();
  if (cfg.server.empty())
    return fail(EINVAL, fmt::format("kubeconfig: cluster {:?} has no server", clusterName));
  if (!cfg.server.starts_with("https://") && !cfg.server.starts_with("http://"))
    return fail(EINVAL, fmt::format("kubeconfig: cluster {:?}: server {:?} is not an http(s) URL",
                                    clusterName, cfg.server));
  cfg.insecureSkipVerify = scalar(cl, "insecure-skip-tls-verify") == "true";
  if (auto data = scalar(cl, "certificate-authority-data"); !data.empty()) {
    auto pem = base64Decode(data);
    if (!pem)
      return fail(EINVAL, fmt::format("kubeconfig: cluster {:?}: certificate-authority-data: {}",
                                      clusterName, pem.error().message));
    cfg.caPem = *pem;
  } else if (auto file = scalar(cl, "certificate-authority"); !file.empty()) {
    auto pem = read(resolve(file, clIt->second.file));
    if (!pem)
      return fail(EINVAL, fmt::format("kubeconfig: cluster {:?}: certificate-authority: {}",
                                      clusterName, pem.error().message));
    cfg.caPem = *pem;
  }
  if (!cfg.caPem.empty())
    if (auto s = checkCaPem(cfg.caPem); !s)
      return fail(EINVAL, fmt::format("kubeconfig: cluster {:?}: certificate authority: {}",
                                      clusterName, s.error().message));
  if (!scalar(cl, "proxy-url").empty())
    return fail(EINVAL, fmt::format("kubeconfig: cluster {:?}: proxy-url is not supported",
                                    clusterName));

  // User (a context may name no user: anonymous).
  if (!userName.empty()) {
    auto uIt = users.find(userName);
    if (uIt == users.end())
      return fail(EINVAL, fmt::format("kubeconfig: context {:?} names user {:?}, which is not "
                                      "defined",
                                      ctxName, userName));
    const auto& u = uIt->second.body;
    const std::string& ufile = uIt->second.file;
    if (has(u, "exec"))
      return fail(EINVAL, fmt::format("kubeconfig: user {:?} uses an exec credential plugin, "
                                      "which is not supported; use a token or a client "
                                      "certificate",
                                      userName));
    if (has(u, "auth-provider"))
      return fail(EINVAL, fmt::format("kubeconfig: user {:?} uses an auth-provider, which is not "
                                      "supported",
                                      userName));
    if (!scalar(u, "username").empty() || !scalar(u, "password").empty())
      return fail(EINVAL, fmt::format("kubeconfig: user {:?}: basic authentication is not "
                                      "supported by Kubernetes any more",
                                      userName));
    cfg.token = scalar(u, "token");
    if (auto tf = scalar(u, "tokenFile"); !tf.empty() && cfg.token.empty()) {
      cfg.tokenFile = resolve(tf, ufile);
      auto t = read(cfg.tokenFile);
      if (!t)
        return fail(EINVAL, fmt::format("kubeconfig: user {:?}: tokenFile: {}", userName,
                                        t.error().message));
    }
    auto material = [&](const char* dataKey, const char* fileKey,
                        std::string& out) -> Status {
      if (auto data = scalar(u, dataKey); !data.empty()) {
        auto pem = base64Decode(data);
        if (!pem) return fail(EINVAL, std::string(dataKey) + ": " + pem.error().message);
        out = *pem;
      } else if (auto file = scalar(u, fileKey); !file.empty()) {
        auto pem = read(resolve(file, ufile));
        if (!pem) return fail(EINVAL, std::string(fileKey) + ": " + pem.error().message);
        out = *pem;
      }
      return {};
    };
    if (auto s = material("client-certificate-data", "client-certificate", cfg.clientCertPem); !s)
      return fail(EINVAL, fmt::format("kubeconfig: user {:?}: {}", userName, s.error().message));
    if (auto s = material("client-key-data", "client-key", cfg.clientKeyPem); !s)
      return fail(EINVAL, fmt::format("kubeconfig: user {:?}: {}", userName, s.error().message));
    if (cfg.clientCertPem.empty() != cfg.clientKeyPem.empty())
      return fail(EINVAL, fmt::format("kubeconfig: user {:?}: a client certificate needs a client "
                                      "key and vice versa",
                                      userName));
    if (!cfg.clientCertPem.empty())
      if (auto s = checkClientPair(cfg.clientCertPem, cfg.clientKeyPem); !s)
        return fail(EINVAL, fmt::format("kubeconfig: user {:?}: {}", userName, s.error().message));
  }
  return cfg;
}

Result<ClientConfig> loadKubeconfig(const std::string& pathList, const std::string& context,
                                    const FileReader& read) {
  std::vector<KubeconfigFile> files;
  std::vector<std::string> tried;
  std::stringstream ss(pathList);
  for (std::string p; std::getline(ss, p, ':');) {
    if (p.empty()) continue;
    tried.push_back(p);
    auto text = read(p);
    if (!text) continue;  // kubectl skips missing files of a KUBECONFIG list
    files.push_back({p, *text});
  }
  if (files.empty())
    return fail(ENOENT, fmt::format("kubeconfig: cannot read {}", tried.empty() ? "(empty path)"
                                                                                  : pathList));
  return parseKubeconfig(files, context, read);
}

Result<ClientConfig> inClusterConfig(const std::map<std::string, std::string>& env,
                                     const std::string& saDir, const FileReader& read) {
  auto get = [&](const char* k) {
    auto it = env.find(k);
    return it == env.end() ? std::string() : it->second;
  };
  std::string host = get("KUBERNETES_SERVICE_HOST"), port = get("KUBERNETES_SERVICE_PORT");
  if (host.empty() || port.empty())
    return fail(EINVAL, "in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be "
                        "set");
  for (char c : port)
    if (c < '0' || c > '9') return fail(EINVAL, fmt::format("in-cluster: bad port {:?}", port));
  ClientConfig cfg;
  cfg.server = host.find(':') != std::string::npos ? fmt::format("https://[{}]:{}", host, port)
                                                   : fmt::format("https://{}:{}", host, port);
  cfg.tokenFile = saDir + "/token";
  auto token = read(cfg.tokenFile);
  if (!token) return fail(EINVAL, "in-cluster: " + token.error().message);
  if (token->find_first_not_of(" \t\r\n") == std::string::npos)
    return fail(EINVAL, "in-cluster: " + cfg.tokenFile + " is empty");
  auto ca = read(saDir + "/ca.crt");
  if (!ca) return fail(EINVAL, "in-cluster: " + ca.error().message);
  if (auto s = checkCaPem(*ca); !s)
    return fail(EINVAL, "in-cluster: " + saDir + "/ca.crt: " + s.error().message);
  cfg.caPem = *ca;
  if (auto ns = read(saDir + "/namespace")) {
    cfg.ns = *ns;
    while (!cfg.ns.empty() && (cfg.ns.back() == '\n' || cfg.ns.back() == ' ')) cfg.ns.pop_back();
  }
  cfg.origin = "in-cluster (" + saDir + ")";
  return cfg;
}

bool inClusterAvailable(const std::string& saDir) {
  const char* h = std::getenv("KUBERNETES_SERVICE_HOST");
  if (!h || !*h) return false;
  struct stat st{};
  return stat((saDir + "/token").c_str(), &st) == 0;
}

}  // namespace kst::k8s
