// The model: which VIPs are tunnelled and to which endpoints. Built from ClusterObjects by a
// pure function that also reports every problem it found (invalid annotation, VIP conflicts,
// orphan slices) so the daemon can log them and raise Kubernetes Events.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/ip.h"
#include "model/loadbalancer.h"
#include "model/objects.h"
#include "model/vip_policy.h"

namespace kst {

struct Endpoint {
  IpAddress ip;
  std::string nodeName;  // empty if unknown
  bool serving = true;   // may receive traffic at all
  bool draining = false; // serving + terminating: established flows only
  std::string targetRef;   // "ns/pod" or empty
  std::string targetUid;   // the pod's uid when the slice names a Pod, or empty
  auto operator<=>(const Endpoint&) const = default;
};

struct TunnelService {
  ObjectKey key;
  IpAddress vip;
  /** Sorted by IP, unique; only endpoints that are serving (ready or draining). */
  std::vector<Endpoint> endpoints;
  /** The bucket table published for the Service (desired/published.h; a ConfigMap in the
   *  daemon's namespace, never the Service itself), or empty. Untrusted text. */
  std::string published = {};
  /** spec.loadBalancerSourceRanges (sourceRangesOf: sorted, unique, both families). Empty: every
   *  source may reach the VIP; otherwise the routers drop packets from other sources. */
  std::vector<IpPrefix> sourceRanges = {};
  /** Only with ModelOptions::startingEndpoints: endpoints that are neither serving nor
   *  terminating (a pod starting up, or NotReady: failing probe or the VIP readiness gate
   *  still False), sorted by IP. Never routed to; the agent puts the VIP into these pods so
   *  that their readiness gate can turn True (docs/readiness-gate.md). */
  std::vector<Endpoint> starting = {};
  bool operator==(const TunnelService&) const = default;
};

struct Problem {
  /** UnusableEndpoint: this router cannot encapsulate toward the endpoint in its mode (e.g.
   *  MPLS to a pod that is not on-link, per-endpoint GRE to an IPv6 pod): it gets no buckets
   *  here, so its share of new flows goes to the endpoints that work. */
  /** VipRefused: the VIP is outside every pool open to the Service's namespace, or in a
   *  reserved or cluster range (model/vip_policy.h): no kernel object, no announcement. */
  enum class Kind {
    InvalidAnnotation,  // also an invalid loadBalancerSourceRanges entry (fail closed)
    VipConflict,
    OrphanSlice,
    TooManyEndpoints,
    UnusableEndpoint,
    VipRefused,
    /** Agent: a namespace the node's routing does not deliver the pod's address to holds it
     *  too (a spoofing pod, or a stale one): refused, never programmed. */
    DuplicatePodAddress
  };
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
  /** VIP ownership. The daemon always sets it (default-deny: no pool, no VIP); nullopt skips
   *  the check, for tests of other concerns that build models directly. */
  std::optional<VipPolicy> policy = std::nullopt;
  /** spec.loadBalancerClass of the LoadBalancer Services that are ours (model/loadbalancer.h). */
  std::string loadBalancerClass = kLoadBalancerClass;
  /** Fill TunnelService::starting (the agent role; routers never look at it). */
  bool startingEndpoints = false;
};

/**
 * The model, maintained incrementally: keeps the objects and what was derived from them and,
 * for each change set, recomputes only the Services it touches (their VIP claims, endpoints and
 * problems), the VIPs they claimed before or claim now, and the slices whose Service appeared
 * or went. A change at 10k Services costs O(change · log V) plus the problem list, instead of
 * a rebuild (≈ 80 ms at 10k). buildModel() is a fresh builder fed the whole set, so there is
 * one implementation (tests/unit/model_test.cpp ModelBuilder.RandomChangeSequencesEqualAFreshBuildAtEveryStep:
 * random change sequences end equal to a fresh build).
 */
class ModelBuilder {
 public:
  explicit ModelBuilder(ModelOptions options = {});
  /** @return the VIPs whose TunnelService was added, removed or changed. Pass an rvalue:
   *  the objects are moved into the builder. */
  std::set<IpAddress> apply(ObjectChanges changes);
  const Model& model() const { return model_; }
  const ClusterObjects& objects() const { return objects_; }

 private:
  struct Claim {
    std::string creationTimestamp;
    ObjectKey key;
    auto operator<=>(const Claim&) const = default;  // the oldest Service wins a VIP
  };
  void putService(const ObjectKey& k, ServiceObject* v);  // moves from *v
  void putSlice(const ObjectKey& k, EndpointSliceObject* v);
  void putTable(const ObjectKey& k, PublishedTableObject* v);
  TunnelService serviceFor(const ObjectKey& key, const IpAddress& vip) const;

  ModelOptions opts_;
  ClusterObjects objects_;
  Model model_;
  std::map<ObjectKey, std::set<ObjectKey>> slicesOf_;  // Service key → slices naming it
  std::map<ObjectKey, std::pair<IpAddress, Claim>> claimOf_;  // valid annotations
  std::map<IpAddress, std::set<Claim>> claimants_;
  std::map<ObjectKey, Problem> invalid_, orphans_;
  std::map<IpAddress, std::vector<Problem>> conflicts_;
  std::set<ObjectKey> dirtyServices_, dirtySlices_;  // during apply()
};

/**
 * Derives the tunnelled services. A VIP claimed by several Services goes to the oldest
 * (creationTimestamp, then namespace/name); the others get a VipConflict problem.
 * Endpoints: ready → active; serving+terminating → draining; not serving → dropped.
 */
Model buildModel(const ClusterObjects& objects, const ModelOptions& options);

}  // namespace kst
