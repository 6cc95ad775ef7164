// The model: which VIPs are tunnelled and to which endpoints. Built from ClusterObjects by a
// pure function that also reports every problem it found (invalid annotation, VIP conflicts,
// orphan slices) so the daemon can log them and raise Kubernetes Events.
#pragma once

#include <string>
#include <vector>

#include "common/ip.h"
#include "model/objects.h"

namespace kst {

struct Endpoint {
  IpAddress ip;
  std::string nodeName;  // empty if unknown
  bool serving = true;   // may receive traffic at all
  bool draining = false; // serving + terminating: established flows only
  std::string targetRef;
  auto operator<=>(const Endpoint&) const = default;
};

struct TunnelService {
  ObjectKey key;
  IpAddress vip;
  /** Sorted by IP, unique; only endpoints that are serving (ready or draining). */
  std::vector<Endpoint> endpoints;
  /** The bucket table published in the Service (desired/published.h), or empty. */
  std::string published = {};
  bool operator==(const TunnelService&) const = default;
};

struct Problem {
  enum class Kind { InvalidAnnotation, VipConflict, OrphanSlice, TooManyEndpoints };
  Kind kind;
  ObjectKey object;
  std::string message;
  bool operator==(const Problem&) const = default;
};
const char* problemReason(Problem::Kind kind);

struct Model {
  /** Sorted by VIP. */
  std::vector<TunnelService> services;
  std::vector<Problem> problems;
};

struct ModelOptions {
  std::string annotation = "cmd.nu/tunnel";
  std::string publishedAnnotation = "kube-service-tunnel.cmd.nu/buckets";
};

/**
 * Derives the tunnelled services. A VIP claimed by several Services goes to the oldest
 * (creationTimestamp, then namespace/name); the others get a VipConflict problem.
 * Endpoints: ready → active; serving+terminating → draining; not serving → dropped.
 */
Model buildModel(const ClusterObjects& objects, const ModelOptions& options);

}  // namespace kst
