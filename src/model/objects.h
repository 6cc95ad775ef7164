// The subset of Kubernetes objects the daemon reads, as plain values. Both sources (manifest
// directory and Kubernetes API) decode into these types; everything downstream is pure.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kst {

struct ObjectKey {
  std::string ns;
  std::string name;
  auto operator<=>(const ObjectKey&) const = default;
  std::string str() const { return ns + "/" + name; }
};

/** A v1 Service, reduced to what tunnelling needs. */
struct ServiceObject {
  ObjectKey key;
  std::string uid;
  std::string creationTimestamp;  // RFC 3339, as in metadata; compares chronologically as text
  std::map<std::string, std::string> annotations;
  /** spec.type ("ClusterIP", "LoadBalancer", …; empty when absent). */
  std::string type;
  /** spec.loadBalancerClass (empty when absent). */
  std::string loadBalancerClass;
  /** spec.loadBalancerSourceRanges as written (validated by the model). */
  std::vector<std::string> loadBalancerSourceRanges;
  /** spec.ipFamilies[0] ("IPv4" | "IPv6"; empty when absent). */
  std::string ipFamily;
  /** status.loadBalancer.ingress[].ip, in order (hostname-only entries are skipped). */
  std::vector<std::string> ingressIps;
  /** Every ingress entry says `ipMode: Proxy` (what this product writes). */
  bool ingressProxyMode = false;
  bool operator==(const ServiceObject&) const = default;
};

/** One address of a discovery.k8s.io/v1 endpoint with its conditions. */
struct SliceEndpoint {
  std::string address;
  std::optional<std::string> nodeName;
  // EndpointSlice conditions; absent ready/serving mean true, absent terminating false
  // (discovery.k8s.io/v1 API semantics).
  bool ready = true;
  bool serving = true;
  bool terminating = false;
  std::string targetRef;  // "ns/pod", informational
  std::string targetUid;  // the pod's metadata.uid (targetRef.uid), if given
  bool operator==(const SliceEndpoint&) const = default;
};

struct EndpointSliceObject {
  ObjectKey key;
  std::string serviceName;  // label kubernetes.io/service-name
  std::string addressType;  // IPv4 | IPv6 | FQDN
  std::vector<SliceEndpoint> endpoints;
  bool operator==(const EndpointSliceObject&) const = default;
};

/** The label selecting the daemon's published-table ConfigMaps, and the ConfigMap's data key of
 *  the table (desired/published.h encodes and decodes the table itself). */
inline constexpr const char* kManagedByLabel = "app.kubernetes.io/managed-by";
inline constexpr const char* kManagedByValue = "kube-service-tunnel";
inline constexpr const char* kTableKey = "table";

/** The bucket table published for one Service (desired/published.h): a ConfigMap that only the
 *  elected router writes, in the daemon's own namespace. Keyed by the Service it names. */
struct PublishedTableObject {
  ObjectKey service;
  std::string uid;    // the Service's metadata.uid when it was written ("" = any)
  std::string table;  // JSON; untrusted until decodePublished() accepted it
  bool operator==(const PublishedTableObject&) const = default;
};

/** Everything a source currently knows. */
struct ClusterObjects {
  std::map<ObjectKey, ServiceObject> services;
  std::map<ObjectKey, EndpointSliceObject> slices;
  std::map<ObjectKey, PublishedTableObject> tables;  // by Service key
  bool operator==(const ClusterObjects&) const = default;
};

/**
 * What a source delivers: the objects that changed since its previous delivery, each with its
 * latest version (nullopt = deleted), or with `replaceAll` the complete set (first sync, a
 * relist). Level-triggered per object: only the newest version of an object matters, so two
 * deliveries fold into one (merge) and a consumer that was busy catches up in one step.
 * Delivering only what changed keeps a change at 10k Services O(change), not O(V): no copy of
 * the whole cache per event (docs/performance.md).
 */
struct ObjectChanges {
  bool replaceAll = false;
  std::map<ObjectKey, std::optional<ServiceObject>> services;
  std::map<ObjectKey, std::optional<EndpointSliceObject>> slices;
  std::map<ObjectKey, std::optional<PublishedTableObject>> tables;
  bool empty() const { return !replaceAll && services.empty() && slices.empty() && tables.empty(); }
  size_t size() const { return services.size() + slices.size() + tables.size(); }
  /** Folds a later delivery into this one. */
  void merge(ObjectChanges&& later);
  /** The complete set `objects` as a replaceAll delivery. */
  static ObjectChanges all(const ClusterObjects& objects);
  bool operator==(const ObjectChanges&) const = default;
};

/** objects after `changes` (with replaceAll: exactly the delivered set). */
void applyChanges(ClusterObjects& objects, const ObjectChanges& changes);

}  // namespace kst
