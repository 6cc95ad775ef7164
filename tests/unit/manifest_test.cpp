// source/manifest_source.h (parseManifestText, ManifestSource::loadOnce) and source/decode.h.
#include "source/manifest_source.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "source/decode.h"
#include "source/yaml.h"

namespace kst {
namespace {

const char* kMultiDoc = R"(apiVersion: v1
kind: Service
metadata:
  name: front
  namespace: web
  uid: 1111-2222
  creationTimestamp: "2024-01-01T00:00:00Z"
  annotations:
    cmd.nu/tunnel: 203.0.113.10
    other: 42
spec:
  ports:
  - port: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: front-abc
  namespace: web
  labels:
    kubernetes.io/service-name: front
addressType: IPv4
endpoints:
- addresses: ["10.0.0.1"]
  nodeName: n1
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: web, name: front-1, uid: 6e0c-1}
- addresses: ["10.0.0.2", "10.0.0.3"]
  nodeName: n2
  conditions: {ready: false, serving: true, terminating: true}
---
# an empty document and an unrelated kind are ignored
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
)";

TEST(Manifest, MultiDocumentServiceAndSlice) {
  auto r = parseManifestText(kMultiDoc, "demo.yaml");
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->services.size(), 1u);
  const auto& s = r->services.at({"web", "front"});
  EXPECT_EQ(s.uid, "1111-2222");
  EXPECT_EQ(s.creationTimestamp, "2024-01-01T00:00:00Z");
  EXPECT_EQ(s.annotations.at("cmd.nu/tunnel"), "203.0.113.10");
  EXPECT_EQ(s.annotations.at("other"), "42");  // non-string annotation kept as its JSON text
  ASSERT_EQ(r->slices.size(), 1u);
  const auto& e = r->slices.at({"web", "front-abc"});
  EXPECT_EQ(e.serviceName, "front");
  EXPECT_EQ(e.addressType, "IPv4");
  ASSERT_EQ(e.endpoints.size(), 3u);
  EXPECT_EQ(e.endpoints[0].address, "10.0.0.1");
  EXPECT_EQ(e.endpoints[0].nodeName, "n1");
  EXPECT_EQ(e.endpoints[0].targetRef, "web/front-1");
  EXPECT_EQ(e.endpoints[0].targetUid, "6e0c-1");
  EXPECT_TRUE(e.endpoints[0].ready);
  EXPECT_TRUE(e.endpoints[0].serving);
  EXPECT_FALSE(e.endpoints[0].terminating);
  // One endpoint entry with two addresses → two SliceEndpoints with the same conditions.
  for (int i : {1, 2}) {
    EXPECT_EQ(e.endpoints[i].nodeName, "n2");
    EXPECT_FALSE(e.endpoints[i].ready);
    EXPECT_TRUE(e.endpoints[i].serving);
    EXPECT_TRUE(e.endpoints[i].terminating);
  }
  EXPECT_EQ(e.endpoints[1].address, "10.0.0.2");
  EXPECT_EQ(e.endpoints[2].address, "10.0.0.3");
}

TEST(Manifest, ListKinds) {
  const char* text = R"(apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: x, annotations: {cmd.nu/tunnel: "203.0.113.1"}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}
  addressType: IPv4
  endpoints: [{addresses: ["10.0.0.1"]}]
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: b}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata: {name: b-1, labels: {kubernetes.io/service-name: b}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00::1"]}]
)";
  auto r = parseManifestText(text, "list.yaml");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->services.size(), 2u);
  EXPECT_TRUE(r->services.contains({"x", "a"}));
  EXPECT_TRUE(r->services.contains({"default", "b"}));  // kind and namespace defaulted
  EXPECT_EQ(r->slices.size(), 2u);
  EXPECT_EQ(r->slices.at({"default", "b-1"}).endpoints.at(0).address, "fd00::1");
  EXPECT_EQ(r->slices.at({"x", "a-1"}).serviceName, "a");
}

TEST(Manifest, JsonInput) {
  const char* text = R"({
  "apiVersion": "v1", "kind": "Service",
  "metadata": {"name": "j", "namespace": "web",
               "annotations": {"cmd.nu/tunnel": "2001:db8::10"}}
})";
  auto r = parseManifestText(text, "svc.json");
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->services.size(), 1u);
  EXPECT_EQ(r->services.at({"web", "j"}).annotations.at("cmd.nu/tunnel"), "2001:db8::10");
}

TEST(Manifest, MalformedYamlNamesFileAndLine) {
  const char* text = "apiVersion: v1\n"
                     "kind: Service\n"
                     "metadata:\n"
                     "  name: [unclosed\n"
                     "  namespace: web\n";
  auto r = parseManifestText(text, "broken.yaml");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_TRUE(r.error().message.starts_with("broken.yaml: YAML error at line ")) << r.error().message;
  // The parser reports the flow sequence's end of input; the line must be a real line of the file.
  int line = std::atoi(r.error().message.c_str() + std::string("broken.yaml: YAML error at line ").size());
  EXPECT_GE(line, 4) << r.error().message;
  EXPECT_LE(line, 6) << r.error().message;
}

TEST(Manifest, MalformedYamlExactLine) {
  const char* text = "a: 1\n"
                     "b: 2\n"
                     "c: : :\n"   // line 3
                     "d: 4\n";
  auto r = parseManifestText(text, "x.yml");
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.error().message.starts_with("x.yml: YAML error at line 3:")) << r.error().message;
}

// One bad object costs that object only: it is skipped (and described), the rest applies.
TEST(Manifest, MissingMetadataNameSkipsThatObjectOnly) {
  const char* text = "apiVersion: v1\nkind: Service\nmetadata: {namespace: web}\n"
                     "---\n"
                     "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n";
  std::vector<std::string> skipped;
  auto r = parseManifestText(text, "svc.yaml", &skipped);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->services.size(), 1u);
  EXPECT_TRUE(r->services.contains({"default", "ok"}));
  EXPECT_EQ(skipped, std::vector<std::string>{"svc.yaml document 1: Service: object has no metadata.name"});
  skipped.clear();
  auto r2 = parseManifestText(
      "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\n"
      "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nspec: {}\n",
      "s.yaml", &skipped);
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->services.size(), 1u);
  EXPECT_EQ(skipped, std::vector<std::string>{"s.yaml document 2: EndpointSlice: object has no metadata"});
}

TEST(Manifest, EndpointWithoutAddressesSkipsTheSlice) {
  std::vector<std::string> skipped;
  auto r = parseManifestText(
      "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\n"
      "addressType: IPv4\nendpoints: [{nodeName: n1}]\n"
      "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: t}\n"
      "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\n",
      "e.yaml", &skipped);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->slices.size(), 1u);
  EXPECT_TRUE(r->slices.contains({"default", "t"}));
  EXPECT_EQ(skipped, std::vector<std::string>{"e.yaml document 1: EndpointSlice default/s: endpoint without addresses"});
}

TEST(Manifest, ABadListItemSkipsThatItemOnly) {
  std::vector<std::string> skipped;
  auto r = parseManifestText(
      "apiVersion: v1\nkind: ServiceList\nitems:\n- 7\n- metadata: {namespace: x}\n"
      "- metadata: {name: fine}\n",
      "l.yaml", &skipped);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->services.size(), 1u);
  EXPECT_EQ(skipped.size(), 2u);
}

TEST(Manifest, WrongApiVersionIgnored) {
  auto r = parseManifestText(
      "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s}\n"
      "---\napiVersion: apps/v1\nkind: Service\nmetadata: {name: x}\n",
      "old.yaml");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->slices.empty());
  EXPECT_TRUE(r->services.empty());
}

TEST(Decode, ConditionDefaults) {
  auto j = nlohmann::json::parse(R"({
    "metadata": {"name": "s", "namespace": "n"},
    "addressType": "IPv4",
    "endpoints": [
      {"addresses": ["10.0.0.1"]},
      {"addresses": ["10.0.0.2"], "conditions": {}},
      {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
      {"addresses": ["10.0.0.4"], "conditions": {"serving": false}},
      {"addresses": ["10.0.0.5"], "conditions": {"ready": null, "serving": null, "terminating": null}},
      {"addresses": ["10.0.0.6"], "conditions": {"ready": false, "serving": true}},
      {"addresses": ["10.0.0.7"], "conditions": {"terminating": true}}
    ]})");
  auto e = decodeEndpointSlice(j);
  ASSERT_TRUE(e) << e.error().message;
  ASSERT_EQ(e->endpoints.size(), 7u);
  auto cond = [&](int i) {
    const auto& x = e->endpoints[i];
    return std::make_tuple(x.ready, x.serving, x.terminating);
  };
  EXPECT_EQ(cond(0), std::make_tuple(true, true, false));    // no conditions at all
  EXPECT_EQ(cond(1), std::make_tuple(true, true, false));    // absent ready → true
  EXPECT_EQ(cond(2), std::make_tuple(false, false, false));  // absent serving → ready
  EXPECT_EQ(cond(3), std::make_tuple(true, false, false));
  EXPECT_EQ(cond(4), std::make_tuple(true, true, false));    // null = absent
  EXPECT_EQ(cond(5), std::make_tuple(false, true, false));
  EXPECT_EQ(cond(6), std::make_tuple(true, true, true));     // absent terminating → false
  EXPECT_FALSE(e->endpoints[0].nodeName.has_value());
}

TEST(Decode, ServiceNamespaceDefaultsAndAnnotations) {
  auto s = decodeService(nlohmann::json::parse(
      R"({"metadata": {"name": "a", "annotations": {"x": "1", "y": true}}})"));
  ASSERT_TRUE(s);
  EXPECT_EQ(s->key, (ObjectKey{"default", "a"}));
  EXPECT_EQ(s->annotations.at("x"), "1");
  EXPECT_EQ(s->annotations.at("y"), "true");
  EXPECT_FALSE(decodeService(nlohmann::json::parse(R"({"metadata": {"name": ""}})")));
  EXPECT_FALSE(decodeService(nlohmann::json::parse(R"({"metadata": "x"})")));
  EXPECT_FALSE(decodeService(nlohmann::json::parse(R"([1])")));
}

TEST(Decode, AddObjectRejectsNonObjects) {
  ClusterObjects o;
  EXPECT_FALSE(addObject(nlohmann::json::parse("[1, 2]"), o));
  EXPECT_TRUE(addObject(nlohmann::json::parse(R"({"kind": "Pod", "apiVersion": "v1"})"), o));
  EXPECT_TRUE(o.services.empty());
}

TEST(Decode, YamlToJsonScalarTyping) {
  auto docs = yamlDocuments(R"(
v4: 198.51.100.10
v6: 2001:db8::10
port: 4790
negative: -5
quoted: "4790"
single: '17'
yes: true
no: False
nothing: null
tilde: ~
empty:
ts: 2024-01-01T00:00:00Z
word: hello
list: [1, "2", three]
)");
  ASSERT_TRUE(docs) << docs.error().message;
  ASSERT_EQ(docs->size(), 1u);
  auto& j = docs->front();
  EXPECT_TRUE(j["v4"].is_string());
  EXPECT_EQ(j["v4"], "198.51.100.10");
  EXPECT_TRUE(j["v6"].is_string());
  EXPECT_EQ(j["v6"], "2001:db8::10");
  EXPECT_TRUE(j["port"].is_number_integer());
  EXPECT_EQ(j["port"], 4790);
  EXPECT_EQ(j["negative"], -5);
  EXPECT_TRUE(j["quoted"].is_string());
  EXPECT_EQ(j["quoted"], "4790");
  EXPECT_TRUE(j["single"].is_string());
  EXPECT_EQ(j["yes"], true);
  EXPECT_EQ(j["no"], false);
  EXPECT_TRUE(j["nothing"].is_null());
  EXPECT_TRUE(j["tilde"].is_null());
  EXPECT_TRUE(j["empty"].is_null());
  EXPECT_EQ(j["ts"], "2024-01-01T00:00:00Z");
  EXPECT_EQ(j["word"], "hello");
  EXPECT_EQ(j["list"], nlohmann::json::parse(R"([1, "2", "three"])"));
}

// ---- ManifestSource over a directory ----

class ManifestDir : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kst-unit-manifests-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ + "/" + name) << text;
  }
  std::string dir_;
};

std::string serviceYaml(const std::string& name, const std::string& vip) {
  return "apiVersion: v1\nkind: Service\nmetadata:\n  name: " + name +
         "\n  namespace: web\n  annotations:\n    cmd.nu/tunnel: " + vip + "\n";
}

TEST_F(ManifestDir, LoadsYamlYmlJsonIgnoresOthers) {
  write("a.yaml", serviceYaml("a", "203.0.113.1"));
  write("b.yml", serviceYaml("b", "203.0.113.2"));
  write("c.json", R"({"apiVersion":"v1","kind":"Service","metadata":{"name":"c","namespace":"web"}})");
  write("d.txt", serviceYaml("d", "203.0.113.4"));
  write(".hidden.yaml", serviceYaml("e", "203.0.113.5"));
  ManifestSource src(dir_);
  auto objs = src.loadOnce();
  EXPECT_EQ(objs.services.size(), 3u);
  EXPECT_TRUE(objs.services.contains({"web", "a"}));
  EXPECT_TRUE(objs.services.contains({"web", "b"}));
  EXPECT_TRUE(objs.services.contains({"web", "c"}));
  EXPECT_EQ(src.name(), "manifests:" + dir_);
}

TEST_F(ManifestDir, BrokenFileKeepsLastGoodContent) {
  write("svc.yaml", serviceYaml("front", "203.0.113.10"));
  write("other.yaml", serviceYaml("other", "203.0.113.11"));
  ManifestSource src(dir_);
  auto first = src.loadOnce();
  ASSERT_EQ(first.services.size(), 2u);
  write("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: [garbage\n");
  auto second = src.loadOnce();
  EXPECT_EQ(second, first);  // still present, unchanged
  EXPECT_EQ(second.services.at({"web", "front"}).annotations.at("cmd.nu/tunnel"), "203.0.113.10");
  // Fixing the file takes the new content.
  write("svc.yaml", serviceYaml("front", "203.0.113.20"));
  auto third = src.loadOnce();
  EXPECT_EQ(third.services.at({"web", "front"}).annotations.at("cmd.nu/tunnel"), "203.0.113.20");
  // Deleting the file withdraws its objects.
  std::filesystem::remove(dir_ + "/svc.yaml");
  auto fourth = src.loadOnce();
  EXPECT_FALSE(fourth.services.contains({"web", "front"}));
  EXPECT_TRUE(fourth.services.contains({"web", "other"}));
}

TEST_F(ManifestDir, BrokenFileWithoutGoodVersionContributesNothing) {
  write("bad.yaml", "kind: [\n");
  write("good.yaml", serviceYaml("front", "203.0.113.10"));
  ManifestSource src(dir_);
  auto objs = src.loadOnce();
  EXPECT_EQ(objs.services.size(), 1u);
}

TEST_F(ManifestDir, MissingDirectoryGivesEmptySnapshot) {
  ManifestSource src(dir_ + "/does-not-exist");
  EXPECT_EQ(src.loadOnce(), ClusterObjects{});
}

// ---- ManifestSource following the directory: deliveries of what changed ----

class Deliveries {
 public:
  void add(ObjectChanges c) {
    std::lock_guard lk(mu_);
    list_.push_back(std::move(c));
    cv_.notify_all();
  }
  /** Waits for the n-th delivery (1-based). */
  std::optional<ObjectChanges> wait(size_t n) {
    std::unique_lock lk(mu_);
    if (!cv_.wait_for(lk, std::chrono::seconds(5), [&] { return list_.size() >= n; }))
      return std::nullopt;
    return list_[n - 1];
  }
  size_t count() {
    std::lock_guard lk(mu_);
    return list_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ObjectChanges> list_;
};

std::string sliceYaml(const std::string& name, const std::string& svc, const std::string& ip) {
  return "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: " + name +
         "\n  namespace: web\n  labels:\n    kubernetes.io/service-name: " + svc +
         "\naddressType: IPv4\nendpoints:\n- addresses: [\"" + ip + "\"]\n";
}

TEST_F(ManifestDir, FollowingDeliversOnlyWhatChangedInTheEditedFile) {
  write("a.yaml", serviceYaml("a", "203.0.113.1") + "---\n" + sliceYaml("a-1", "a", "10.0.0.1"));
  write("b.yaml", serviceYaml("b", "203.0.113.2") + "---\n" + sliceYaml("b-1", "b", "10.0.0.2"));
  ManifestSource src(dir_);
  Deliveries d;
  ASSERT_TRUE(src.start([&](ObjectChanges c) { d.add(std::move(c)); }));
  auto first = d.wait(1);
  ASSERT_TRUE(first);
  EXPECT_TRUE(first->replaceAll);
  EXPECT_EQ(first->services.size(), 2u);
  EXPECT_EQ(first->slices.size(), 2u);

  // Edit b's slice only (written aside, renamed into place as editors and kubectl do).
  write(".b.tmp", serviceYaml("b", "203.0.113.2") + "---\n" + sliceYaml("b-1", "b", "10.0.0.9"));
  std::filesystem::rename(dir_ + "/.b.tmp", dir_ + "/b.yaml");
  auto second = d.wait(2);
  ASSERT_TRUE(second);
  EXPECT_FALSE(second->replaceAll);
  EXPECT_TRUE(second->services.empty()) << "the unchanged Service in the edited file is not delivered";
  ASSERT_EQ(second->slices.size(), 1u);
  EXPECT_EQ(second->slices.at({"web", "b-1"})->endpoints.at(0).address, "10.0.0.9");

  // A broken edit delivers nothing; deleting a file deletes its objects.
  write("a.yaml", "kind: [\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(d.count(), 2u) << "a broken file keeps its last good content";
  std::filesystem::remove(dir_ + "/a.yaml");
  auto third = d.wait(3);
  ASSERT_TRUE(third);
  EXPECT_EQ(third->services.size(), 1u);
  EXPECT_FALSE(third->services.at({"web", "a"}).has_value());
  EXPECT_FALSE(third->slices.at({"web", "a-1"}).has_value());

  // The same Service in two files: the later file name wins; removing it restores the other.
  write("c.yaml", serviceYaml("b", "203.0.113.99"));
  auto fourth = d.wait(4);
  ASSERT_TRUE(fourth);
  EXPECT_EQ(fourth->services.at({"web", "b"})->annotations.at("cmd.nu/tunnel"), "203.0.113.99");
  std::filesystem::remove(dir_ + "/c.yaml");
  auto fifth = d.wait(5);
  ASSERT_TRUE(fifth);
  EXPECT_EQ(fifth->services.at({"web", "b"})->annotations.at("cmd.nu/tunnel"), "203.0.113.2");
  src.stop();
  EXPECT_EQ(d.count(), 5u);
}

}  // namespace
}  // namespace kst

namespace kst {
namespace {

TEST(Decode, LoadBalancerFieldsTypeSafe) {
  auto s = decodeService(nlohmann::json::parse(R"({
    "metadata": {"name": "web", "namespace": "team"},
    "spec": {"type": "LoadBalancer", "loadBalancerClass": "cmd.nu/kube-service-tunnel",
             "ipFamilies": ["IPv6", "IPv4"],
             "loadBalancerSourceRanges": ["192.0.2.0/24", 7, "2001:db8::/32"]},
    "status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::5", "ipMode": "Proxy"},
                                            {"hostname": "x.example"}]}}})"));
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->type, "LoadBalancer");
  EXPECT_EQ(s->loadBalancerClass, "cmd.nu/kube-service-tunnel");
  EXPECT_EQ(s->ipFamily, "IPv6");
  EXPECT_EQ(s->loadBalancerSourceRanges,
            (std::vector<std::string>{"192.0.2.0/24", "<not a string>", "2001:db8::/32"}));
  EXPECT_EQ(s->ingressIps, (std::vector<std::string>{"2001:db8::5"}));
  EXPECT_FALSE(s->ingressProxyMode);  // the hostname entry has no ipMode
  auto odd = decodeService(nlohmann::json::parse(R"({
    "metadata": {"name": "web"}, "spec": {"type": 3, "loadBalancerSourceRanges": "x",
    "ipFamilies": [1]}, "status": {"loadBalancer": {"ingress": [1, {"ip": 2}]}}})"));
  ASSERT_TRUE(odd);
  EXPECT_EQ(odd->type, "");
  EXPECT_TRUE(odd->loadBalancerSourceRanges.empty());
  EXPECT_TRUE(odd->ingressIps.empty());
  EXPECT_EQ(odd->ipFamily, "");
}

}  // namespace
}  // namespace kst
