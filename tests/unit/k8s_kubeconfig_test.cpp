// kubeconfig and in-cluster configuration parsing: good inputs (token, token file, client
// certificate as file and inline data, CA as file and data, merging of a KUBECONFIG list,
// relative paths) and broken ones (each must fail with a message naming the problem).
#include <gtest/gtest.h>

#include <map>

#include "k8s/kubeconfig.h"
#include "unit/k8s_fake_transport.h"

namespace kst::k8s {
namespace {

using test::fixture;

std::string b64(const std::string& s) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < s.size(); i += 3) {
    uint32_t v = (uint8_t(s[i]) << 16) | (uint8_t(s[i + 1]) << 8) | uint8_t(s[i + 2]);
    for (int k = 3; k >= 0; --k) out += t[(v >> (6 * k)) & 63];
  }
  if (i + 1 == s.size()) {
    uint32_t v = uint8_t(s[i]) << 16;
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == s.size()) {
    uint32_t v = (uint8_t(s[i]) << 16) | (uint8_t(s[i + 1]) << 8);
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

/** A fake file system for the reader. */
struct Files {
  std::map<std::string, std::string> files;
  FileReader reader() const {
    return [this](const std::string& p) -> Result<std::string> {
      auto it = files.find(p);
      if (it == files.end()) return fail(ENOENT, "read " + p + ": No such file or directory");
      return it->second;
    };
  }
};

const std::string kCa = fixture("kubeconfig/ca.crt");
const std::string kCert = fixture("kubeconfig/client.crt");
const std::string kKey = fixture("kubeconfig/client.key");
const std::string kOtherKey = fixture("kubeconfig/other.key");

// The shape tools/k8s/sa-kubeconfig.sh writes (a ServiceAccount token).
std::string tokenKubeconfig(const std::string& ca) {
  return "apiVersion: v1\nkind: Config\nclusters:\n- name: kst\n  cluster:\n    server: "
         "https://127.0.0.1:6443/\n    certificate-authority-data: " +
         b64(ca) +
         "\nusers:\n- name: system:serviceaccount:kube-service-tunnel:kube-service-tunnel\n  "
         "user:\n    token: eyJhbGciOi.abc.def\ncontexts:\n- name: kst\n  context: {cluster: kst, "
         "user: \"system:serviceaccount:kube-service-tunnel:kube-service-tunnel\", namespace: "
         "kube-service-tunnel}\ncurrent-context: kst\n";
}

TEST(Kubeconfig, ServiceAccountTokenWithInlineCa) {
  Files fs;
  auto c = parseKubeconfig({{"/etc/kst/kc", tokenKubeconfig(kCa)}}, "", fs.reader());
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->server, "https://127.0.0.1:6443");  // trailing slash dropped
  EXPECT_EQ(c->token, "eyJhbGciOi.abc.def");
  EXPECT_EQ(c->caPem, kCa);
  EXPECT_EQ(c->ns, "kube-service-tunnel");
  EXPECT_TRUE(c->clientCertPem.empty());
  EXPECT_FALSE(c->insecureSkipVerify);
  EXPECT_NE(c->origin.find("context kst"), std::string::npos);
}

TEST(Kubeconfig, ClientCertificateAsFilesRelativeToTheKubeconfig) {
  Files fs;
  fs.files["/home/u/.kube/pki/ca.crt"] = kCa;
  fs.files["/home/u/.kube/pki/admin.crt"] = kCert;
  fs.files["/abs/admin.key"] = kKey;
  std::string kc = R"(
apiVersion: v1
kind: Config
current-context: admin@prod
clusters:
- name: prod
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority: pki/ca.crt
users:
- name: admin
  user:
    client-certificate: pki/admin.crt
    client-key: /abs/admin.key
contexts:
- name: admin@prod
  context:
    cluster: prod
    user: admin
)";
  auto c = parseKubeconfig({{"/home/u/.kube/config", kc}}, "", fs.reader());
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->server, "https://10.0.0.1:6443");
  EXPECT_EQ(c->caPem, kCa);
  EXPECT_EQ(c->clientCertPem, kCert);
  EXPECT_EQ(c->clientKeyPem, kKey);
  EXPECT_TRUE(c->token.empty());
}

TEST(Kubeconfig, ClientCertificateAsInlineDataAndTheAdminKubeconfigOfTheTestControlPlane) {
  // The layout of tools/k8s/start.sh's admin.kubeconfig.
  std::string kc = "apiVersion: v1\nkind: Config\nclusters:\n- name: kst\n  cluster:\n    server: "
                   "https://127.0.0.1:24242\n    certificate-authority-data: " + b64(kCa) +
                   "\nusers:\n- name: kst-admin\n  user:\n    client-certificate-data: " + b64(kCert) +
                   "\n    client-key-data: " + b64(kKey) +
                   "\ncontexts:\n- name: kst\n  context: {cluster: kst, user: kst-admin}\n"
                   "current-context: kst\n";
  auto c = parseKubeconfig({{"admin.kubeconfig", kc}}, "", Files{}.reader());
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->clientCertPem, kCert);
  EXPECT_EQ(c->clientKeyPem, kKey);
  EXPECT_EQ(c->ns, "");
}

TEST(Kubeconfig, TokenFileInsecureAndContextOverride) {
  Files fs;
  fs.files["/var/run/tok"] = "abc\n";
  std::string kc = R"(
clusters:
- {name: a, cluster: {server: "https://a:1"}}
- {name: b, cluster: {server: "https://b:2", insecure-skip-tls-verify: true}}
users:
- {name: u, user: {tokenFile: /var/run/tok}}
contexts:
- {name: ca, context: {cluster: a, user: u}}
- {name: cb, context: {cluster: b, user: u, namespace: ns1}}
current-context: ca
)";
  auto a = parseKubeconfig({{"/k", kc}}, "", fs.reader());
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(a->server, "https://a:1");
  EXPECT_EQ(a->tokenFile, "/var/run/tok");
  EXPECT_TRUE(a->token.empty());
  EXPECT_TRUE(a->caPem.empty());  // system trust store
  auto b = parseKubeconfig({{"/k", kc}}, "cb", fs.reader());
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(b->server, "https://b:2");
  EXPECT_TRUE(b->insecureSkipVerify);
  EXPECT_EQ(b->ns, "ns1");
}

TEST(Kubeconfig, KubeconfigListMergesFirstDefinitionWins) {
  Files fs;
  fs.files["/a"] = "current-context: x\nclusters:\n- {name: c, cluster: {server: https://first:1}}\n";
  fs.files["/b"] =
      "current-context: y\nclusters:\n- {name: c, cluster: {server: https://second:2}}\n"
      "users:\n- {name: u, user: {token: t}}\ncontexts:\n- {name: x, context: {cluster: c, user: u}}\n";
  auto c = loadKubeconfig("/a:/missing:/b", "", fs.reader());
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->server, "https://first:1");  // cluster c from /a, context x from /b
  EXPECT_EQ(c->token, "t");
  auto none = loadKubeconfig("/missing:/also-missing", "", fs.reader());
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message.find("cannot read"), std::string::npos);
}

TEST(Kubeconfig, BrokenInputsFailWithAClearMessage) {
  Files fs;
  fs.files["/ca-garbage"] = "not a certificate";
  auto err = [&](const std::string& kc, const std::string& context = {}) {
    auto c = parseKubeconfig({{"/k", kc}}, context, fs.reader());
    EXPECT_FALSE(c) << kc;
    return c ? std::string() : c.error().message;
  };
  const std::string cl = "clusters:\n- {name: c, cluster: {server: https://s:1}}\n";
  const std::string ctx = "contexts:\n- {name: x, context: {cluster: c, user: u}}\ncurrent-context: x\n";
  EXPECT_NE(err("clusters: [unclosed\n").find("YAML error at line"), std::string::npos);
  EXPECT_NE(err("- a\n- b\n").find("not a mapping"), std::string::npos);
  EXPECT_NE(err(cl + "users:\n- {name: u, user: {token: t}}\ncontexts: []\n").find("no current-context"),
            std::string::npos);
  EXPECT_NE(err(cl + "users:\n- {name: u, user: {token: t}}\n" + ctx, "nope").find("context \"nope\" not found"),
            std::string::npos);
  EXPECT_NE(err("users:\n- {name: u, user: {token: t}}\n" + ctx).find("names cluster \"c\""),
            std::string::npos);
  EXPECT_NE(err(cl + ctx).find("names user \"u\""), std::string::npos);
  EXPECT_NE(err("clusters:\n- {name: c, cluster: {insecure-skip-tls-verify: true}}\nusers:\n- {name: u, user: {token: t}}\n" + ctx)
                .find("has no server"),
            std::string::npos);
  EXPECT_NE(err("clusters:\n- {name: c, cluster: {server: \"s:1\"}}\nusers:\n- {name: u, user: {token: t}}\n" + ctx)
                .find("not an http(s) URL"),
            std::string::npos);
  EXPECT_NE(err("clusters:\n- {name: c, cluster: {server: https://s:1, certificate-authority-data: \"!!!\"}}\nusers:\n- {name: u, user: {token: t}}\n" + ctx)
                .find("invalid base64"),
            std::string::npos);
  EXPECT_NE(err("clusters:\n- {name: c, cluster: {server: https://s:1, certificate-authority: /ca-garbage}}\nusers:\n- {name: u, user: {token: t}}\n" + ctx)
                .find("no PEM certificate"),
            std::string::npos);
  EXPECT_NE(err("clusters:\n- {name: c, cluster: {server: https://s:1, certificate-authority: /nope.crt}}\nusers:\n- {name: u, user: {token: t}}\n" + ctx)
                .find("/nope.crt"),
            std::string::npos);
  EXPECT_NE(err(cl + "users:\n- name: u\n  user:\n    exec: {command: aws}\n" + ctx).find("exec credential plugin"),
            std::string::npos);
  EXPECT_NE(err(cl + "users:\n- name: u\n  user:\n    auth-provider: {name: gcp}\n" + ctx).find("auth-provider"),
            std::string::npos);
  EXPECT_NE(err(cl + "users:\n- {name: u, user: {username: a, password: b}}\n" + ctx).find("basic authentication"),
            std::string::npos);
  EXPECT_NE(err(cl + "users:\n- {name: u, user: {client-certificate-data: " + b64(kCert) + "}}\n" + ctx)
                .find("needs a client key"),
            std::string::npos);
  EXPECT_NE(err(cl + "users:\n- {name: u, user: {client-certificate-data: " + b64(kCert) +
                ", client-key-data: " + b64(kOtherKey) + "}}\n" + ctx)
                .find("does not match"),
            std::string::npos);
  EXPECT_NE(err(cl + "users:\n- {name: u, user: {client-certificate-data: " + b64("garbage") +
                ", client-key-data: " + b64(kKey) + "}}\n" + ctx)
                .find("client certificate"),
            std::string::npos);
  EXPECT_NE(err(cl + "users:\n- {name: u, user: {tokenFile: /gone}}\n" + ctx).find("tokenFile"),
            std::string::npos);
  EXPECT_NE(err("clusters:\n- {cluster: {server: https://s:1}}\n").find("has no name"), std::string::npos);
}

TEST(InCluster, ServiceAccountDirectoryAndEnvironment) {
  Files fs;
  fs.files["/sa/token"] = "tok-1\n";
  fs.files["/sa/ca.crt"] = kCa;
  fs.files["/sa/namespace"] = "kube-service-tunnel";
  auto c = inClusterConfig({{"KUBERNETES_SERVICE_HOST", "10.96.0.1"}, {"KUBERNETES_SERVICE_PORT", "443"}},
                           "/sa", fs.reader());
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->server, "https://10.96.0.1:443");
  EXPECT_EQ(c->tokenFile, "/sa/token");  // re-read on rotation, not copied
  EXPECT_TRUE(c->token.empty());
  EXPECT_EQ(c->caPem, kCa);
  EXPECT_EQ(c->ns, "kube-service-tunnel");
  auto v6 = inClusterConfig({{"KUBERNETES_SERVICE_HOST", "fd00:10:96::1"}, {"KUBERNETES_SERVICE_PORT", "443"}},
                            "/sa", fs.reader());
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->server, "https://[fd00:10:96::1]:443");
}

TEST(InCluster, BrokenInputs) {
  Files fs;
  fs.files["/sa/token"] = "tok";
  fs.files["/sa/ca.crt"] = kCa;
  fs.files["/empty/token"] = "\n";
  fs.files["/empty/ca.crt"] = kCa;
  fs.files["/badca/token"] = "tok";
  fs.files["/badca/ca.crt"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  fs.files["/noca/token"] = "tok";
  std::map<std::string, std::string> env{{"KUBERNETES_SERVICE_HOST", "10.96.0.1"},
                                         {"KUBERNETES_SERVICE_PORT", "443"}};
  auto msg = [&](std::map<std::string, std::string> e, const std::string& dir) {
    auto c = inClusterConfig(e, dir, fs.reader());
    EXPECT_FALSE(c) << dir;
    return c ? std::string() : c.error().message;
  };
  EXPECT_NE(msg({}, "/sa").find("KUBERNETES_SERVICE_HOST"), std::string::npos);
  EXPECT_NE(msg({{"KUBERNETES_SERVICE_HOST", "h"}, {"KUBERNETES_SERVICE_PORT", "https"}}, "/sa").find("bad port"),
            std::string::npos);
  EXPECT_NE(msg(env, "/none").find("/none/token"), std::string::npos);
  EXPECT_NE(msg(env, "/empty").find("is empty"), std::string::npos);
  EXPECT_NE(msg(env, "/badca").find("ca.crt"), std::string::npos);
  EXPECT_NE(msg(env, "/noca").find("ca.crt"), std::string::npos);
}

TEST(Base64, DecodesStandardAndRejectsGarbage) {
  EXPECT_EQ(*base64Decode("aGVsbG8="), "hello");
  EXPECT_EQ(*base64Decode("aGVs\nbG8"), "hello");
  EXPECT_FALSE(base64Decode("a$b"));
  EXPECT_FALSE(base64Decode("a"));
}

}  // namespace
}  // namespace kst::k8s
