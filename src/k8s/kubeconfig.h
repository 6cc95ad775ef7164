// Where the Kubernetes API is and how to authenticate: kubeconfig files (kubectl's merging rules,
// current-context, bearer token, token file, client certificate/key, CA as file or inline data)
// and the in-cluster configuration (ServiceAccount token, cluster CA, KUBERNETES_SERVICE_HOST/
// PORT). Pure parsing into a ClientConfig value; files are read through an injectable reader, so
// tests need no file system. PEM material is checked with OpenSSL here, so a broken kubeconfig
// fails at start-up with a message naming the field instead of at the first TLS handshake.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/error.h"

namespace kst::k8s {

struct ClientConfig {
  std::string server;       // "https://host:port" (no trailing slash)
  std::string caPem;        // PEM bundle of trusted CAs; empty = the system trust store
  bool insecureSkipVerify = false;
  std::string token;        // static bearer token
  std::string tokenFile;    // bearer token re-read whenever the file changes (rotation)
  std::string clientCertPem;
  std::string clientKeyPem;
  std::string ns;           // namespace of the context / the pod (informational)
  std::string origin;       // "kubeconfig /path context X" or "in-cluster", for logs
  bool operator==(const ClientConfig&) const = default;
};

/** Reads a whole file; returns an Error naming the path when it cannot. */
using FileReader = std::function<Result<std::string>(const std::string& path)>;
FileReader realFileReader();

/**
 * Parses one or more kubeconfig documents (the files of a KUBECONFIG list, in order) with
 * kubectl's merging rule: the first file that defines a cluster/user/context name, and the
 * first non-empty current-context, win. Relative paths resolve against the directory of the
 * file that names them. `context` overrides current-context.
 * Unsupported authentication (exec plugins, auth-provider, username/password) is an error.
 * YAML is parsed with libyaml (source/yaml.h), bounded; a file over kMaxKubeconfigBytes is an
 * error. Never throws.
 */
inline constexpr size_t kMaxKubeconfigBytes = size_t(4) << 20;
struct KubeconfigFile {
  std::string path;  // used for relative paths and messages
  std::string text;
};
Result<ClientConfig> parseKubeconfig(const std::vector<KubeconfigFile>& files,
                                     const std::string& context = {},
                                     const FileReader& read = realFileReader());

/** Loads a kubeconfig path list ("a:b:c" as in $KUBECONFIG; missing files are skipped as
 *  kubectl does, but at least one must exist). */
Result<ClientConfig> loadKubeconfig(const std::string& pathList, const std::string& context = {},
                                    const FileReader& read = realFileReader());

inline constexpr const char* kServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";

/** In-cluster config from the environment values and the ServiceAccount directory (token,
 *  ca.crt, namespace). The token is referenced as tokenFile, so rotation is followed. */
Result<ClientConfig> inClusterConfig(const std::map<std::string, std::string>& env,
                                     const std::string& saDir = kServiceAccountDir,
                                     const FileReader& read = realFileReader());

/** True when this process looks like a pod: KUBERNETES_SERVICE_HOST set and a token file. */
bool inClusterAvailable(const std::string& saDir = kServiceAccountDir);

/** Checks PEM material with OpenSSL: at least one certificate in a CA bundle; a certificate and
 *  a private key that belong together. */
Status checkCaPem(const std::string& pem);
Status checkClientPair(const std::string& certPem, const std::string& keyPem);

/** Base64 (standard alphabet, padding optional, whitespace ignored). */
Result<std::string> base64Decode(const std::string& in);

}  // namespace kst::k8s
