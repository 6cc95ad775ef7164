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
  bool operator==(const SliceEndpoint&) const = default;
};

struct EndpointSliceObject {
  ObjectKey key;
  std::string serviceName;  // label kubernetes.io/service-name
  std::string addressType;  // IPv4 | IPv6 | FQDN
  std::vector<SliceEndpoint> endpoints;
  bool operator==(const EndpointSliceObject&) const = default;
};

/** Everything a source currently knows; sources publish whole snapshots (level-triggered). */
struct ClusterObjects {
  std::map<ObjectKey, ServiceObject> services;
  std::map<ObjectKey, EndpointSliceObject> slices;
  bool operator==(const ClusterObjects&) const = default;
};

}  // namespace kst
