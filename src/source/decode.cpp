#include "source/decode.h"

#include <fmt/format.h>

namespace kst {

namespace {

std::string str(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return {};
  return it->get<std::string>();
}

Result<ObjectKey> metaKey(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("metadata") || !j["metadata"].is_object())
    return fail("object has no metadata");
  const auto& m = j["metadata"];
  ObjectKey k{str(m, "namespace"), str(m, "name")};
  if (k.name.empty()) return fail("object has no metadata.name");
  if (k.ns.empty()) k.ns = "default";
  return k;
}

bool boolOr(const nlohmann::json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (it->is_boolean()) return it->get<bool>();
  return dflt;
}

}  // namespace

Result<ServiceObject> decodeService(const nlohmann::json& j) {
  auto key = metaKey(j);
  if (!key) return std::unexpected(key.error().wrap("Service"));
  ServiceObject s;
  s.key = *key;
  const auto& m = j["metadata"];
  s.uid = str(m, "uid");
  s.creationTimestamp = str(m, "creationTimestamp");
  if (m.contains("annotations") && m["annotations"].is_object()) {
    for (auto& [k, v] : m["annotations"].items()) {
      if (v.is_string()) s.annotations[k] = v.get<std::string>();
      else s.annotations[k] = v.dump();
    }
  }
  // LoadBalancer fields (model/loadbalancer.h). Wrong types read as absent; lists are bounded
  // (the model refuses a Service with more source ranges than it accepts).
  constexpr size_t kMaxListItems = 1024;
  if (auto sp = j.find("spec"); sp != j.end() && sp->is_object()) {
    s.type = str(*sp, "type");
    s.loadBalancerClass = str(*sp, "loadBalancerClass");
    if (auto r = sp->find("loadBalancerSourceRanges"); r != sp->end() && r->is_array()) {
      for (const auto& v : *r) {
        if (s.loadBalancerSourceRanges.size() >= kMaxListItems) break;
        // Anything but a string is kept as an entry the model refuses (fail closed).
        s.loadBalancerSourceRanges.push_back(v.is_string() ? v.get<std::string>() : "<not a string>");
      }
    }
    if (auto f = sp->find("ipFamilies"); f != sp->end() && f->is_array() && !f->empty() &&
                                          f->front().is_string())
      s.ipFamily = f->front().get<std::string>();
  }
  if (auto st = j.find("status"); st != j.end() && st->is_object()) {
    auto lb = st->find("loadBalancer");
    if (lb != st->end() && lb->is_object()) {
      auto in = lb->find("ingress");
      if (in != lb->end() && in->is_array()) {
        bool proxy = !in->empty();
        for (const auto& e : *in) {
          if (!e.is_object()) continue;
          if (str(e, "ipMode") != "Proxy") proxy = false;
          std::string ip = str(e, "ip");
          if (!ip.empty() && s.ingressIps.size() < kMaxListItems) s.ingressIps.push_back(ip);
        }
        s.ingressProxyMode = proxy;
      }
    }
  }
  return s;
}

Result<EndpointSliceObject> decodeEndpointSlice(const nlohmann::json& j) {
  auto key = metaKey(j);
  if (!key) return std::unexpected(key.error().wrap("EndpointSlice"));
  EndpointSliceObject e;
  e.key = *key;
  const auto& m = j["metadata"];
  if (m.contains("labels") && m["labels"].is_object())
    e.serviceName = str(m["labels"], "kubernetes.io/service-name");
  e.addressType = str(j, "addressType");
  if (j.contains("endpoints") && j["endpoints"].is_array()) {
    for (const auto& ep : j["endpoints"]) {
      if (!ep.is_object() || !ep.contains("addresses") || !ep["addresses"].is_array())
        return fail(fmt::format("EndpointSlice {}: endpoint without addresses", e.key.str()));
      SliceEndpoint base;
      if (ep.contains("nodeName") && ep["nodeName"].is_string())
        base.nodeName = ep["nodeName"].get<std::string>();
      if (ep.contains("conditions") && ep["conditions"].is_object()) {
        const auto& c = ep["conditions"];
        base.ready = boolOr(c, "ready", true);
        base.serving = boolOr(c, "serving", base.ready);
        base.terminating = boolOr(c, "terminating", false);
      }
      if (ep.contains("targetRef") && ep["targetRef"].is_object())
        base.targetRef = str(ep["targetRef"], "namespace") + "/" + str(ep["targetRef"], "name");
      for (const auto& a : ep["addresses"]) {
        if (!a.is_string()) continue;
        SliceEndpoint se = base;
        se.address = a.get<std::string>();
        e.endpoints.push_back(se);
      }
    }
  }
  return e;
}

Status addObject(const nlohmann::json& j, ClusterObjects& objs) {
  if (!j.is_object()) return fail("document is not an object");
  std::string kind = str(j, "kind");
  std::string api = str(j, "apiVersion");
  if (kind.ends_with("List") && j.contains("items") && j["items"].is_array()) {
    for (const auto& item : j["items"]) {
      nlohmann::json copy = item;
      if (!copy.contains("kind") && kind.size() > 4) copy["kind"] = kind.substr(0, kind.size() - 4);
      if (!copy.contains("apiVersion")) copy["apiVersion"] = api;
      if (auto s = addObject(copy, objs); !s) return s;
    }
    return {};
  }
  if (kind == "Service" && api == "v1") {
    auto s = decodeService(j);
    if (!s) return std::unexpected(s.error());
    objs.services[s->key] = std::move(*s);
  } else if (kind == "EndpointSlice" && api == "discovery.k8s.io/v1") {
    auto e = decodeEndpointSlice(j);
    if (!e) return std::unexpected(e.error());
    objs.slices[e->key] = std::move(*e);
  }
  return {};
}

nlohmann::json yamlToJson(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined: return nullptr;
    case YAML::NodeType::Sequence: {
      auto a = nlohmann::json::array();
      for (const auto& x : n) a.push_back(yamlToJson(x));
      return a;
    }
    case YAML::NodeType::Map: {
      auto o = nlohmann::json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = yamlToJson(kv.second);
      return o;
    }
    case YAML::NodeType::Scalar: {
      const std::string& s = n.Scalar();
      if (n.Tag() == "!") return s;  // quoted: always a string
      if (s == "true" || s == "True") return true;
      if (s == "false" || s == "False") return false;
      if (s == "null" || s == "~") return nullptr;
      if (!s.empty() && (std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-')) {
        char* end = nullptr;
        long long v = std::strtoll(s.c_str(), &end, 10);
        if (end && *end == '\0') return v;
      }
      return s;
    }
  }
  return nullptr;
}

}  // namespace kst
