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
      else s.annotations[k] = safeDump(v);
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
      if (ep.contains("targetRef") && ep["targetRef"].is_object()) {
        base.targetRef = str(ep["targetRef"], "namespace") + "/" + str(ep["targetRef"], "name");
        if (str(ep["targetRef"], "kind") == "Pod") base.targetUid = str(ep["targetRef"], "uid");
      }
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

Result<PublishedTableObject> decodeTableConfigMap(const nlohmann::json& j) {
  auto key = metaKey(j);
  if (!key) return std::unexpected(key.error().wrap("ConfigMap"));
  auto d = j.find("data");
  if (d == j.end() || !d->is_object())
    return fail(fmt::format("ConfigMap {}: no data", key->str()));
  PublishedTableObject t;
  t.service = {str(*d, "namespace"), str(*d, "name")};
  t.uid = str(*d, "uid");
  t.table = str(*d, kTableKey);
  if (t.service.ns.empty() || t.service.name.empty() || t.table.empty())
    return fail(fmt::format("ConfigMap {}: data needs namespace, name and {} strings",
                            key->str(), kTableKey));
  return t;
}

namespace {

bool managedByUs(const nlohmann::json& j) {
  auto m = j.find("metadata");
  if (m == j.end() || !m->is_object()) return false;
  auto l = m->find("labels");
  return l != m->end() && l->is_object() && str(*l, kManagedByLabel) == kManagedByValue;
}

}  // namespace

Status addObject(const nlohmann::json& j, ClusterObjects& objs, std::vector<std::string>* skipped) {
  if (!j.is_object()) return fail("document is not an object");
  std::string kind = str(j, "kind");
  std::string api = str(j, "apiVersion");
  if (kind.ends_with("List") && j.contains("items") && j["items"].is_array()) {
    size_t i = 0;
    for (const auto& item : j["items"]) {
      ++i;
      if (!item.is_object()) {
        if (skipped) skipped->push_back(fmt::format("{} item {}: not an object", kind, i));
        continue;
      }
      nlohmann::json copy = item;
      if (!copy.contains("kind") && kind.size() > 4) copy["kind"] = kind.substr(0, kind.size() - 4);
      if (!copy.contains("apiVersion")) copy["apiVersion"] = api;
      if (auto s = addObject(copy, objs, skipped); !s && skipped)
        skipped->push_back(fmt::format("{} item {}: {}", kind, i, s.error().message));
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
  } else if (kind == "ConfigMap" && api == "v1" && managedByUs(j)) {
    auto t = decodeTableConfigMap(j);
    if (!t) return std::unexpected(t.error());
    objs.tables[t->service] = std::move(*t);
  }
  return {};
}

std::string safeDump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace kst
