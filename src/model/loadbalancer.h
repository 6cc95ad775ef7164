// Services of `type: LoadBalancer` whose `spec.loadBalancerClass` is ours, and the source
// ranges of any tunnelled Service.
//
// A Service is tunnelled when it carries the VIP annotation (`cmd.nu/tunnel`, any type), or when
// it is a LoadBalancer of our class: then its VIP is the annotation's if present, otherwise the
// address the elected router allocated and wrote to `status.loadBalancer.ingress` (with
// `ipMode: Proxy`, so kube-proxy on every node leaves the VIP's traffic alone and the whole IP
// reaches the pods). Every VIP passes the ownership policy (model/vip_policy.h).
//
// planLoadBalancerStatus() is the pure part of the status writer: what each of our
// LoadBalancer Services' ingress must say, allocating free pool addresses deterministically
// (Services in creation order, then namespace/name; the lowest free address), and which
// Services lost our class but still carry an ingress we wrote (to be cleared). Only the Lease
// holder writes, so two Services never receive the same address, also across a handover: the
// next holder reads the addresses from the Services' status.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/ip.h"
#include "common/prefix.h"
#include "model/objects.h"
#include "model/vip_policy.h"

namespace kst {

inline constexpr const char* kLoadBalancerClass = "cmd.nu/kube-service-tunnel";

/** At most this many loadBalancerSourceRanges per Service (each becomes kernel state). */
inline constexpr size_t kMaxSourceRanges = 256;

bool isOurLoadBalancer(const ServiceObject& s, const std::string& lbClass);

/** The VIP the Service asks for: the annotation's text (trimmed), else for our LoadBalancers
 *  the first status ingress IP; nullopt when it asks for none. */
std::optional<std::string> requestedVip(const ServiceObject& s, const std::string& annotation,
                                        const std::string& lbClass);

/** spec.loadBalancerSourceRanges parsed, sorted and deduplicated; an invalid or excess entry
 *  fails the whole Service (fail closed: a typo must not open the VIP to every source). Host
 *  bits are tolerated here as Kubernetes does ("10.0.0.1/8" means 10.0.0.0/8). */
Result<std::vector<IpPrefix>> sourceRangesOf(const ServiceObject& s);

struct LoadBalancerStatusChange {
  ObjectKey service;
  /** The ingress IPs to write (ipMode Proxy); empty: clear status.loadBalancer. */
  std::vector<IpAddress> ingress;
  /** Why (for the log and the Event): "allocated", "annotation", "left class", "pool exhausted". */
  std::string reason;
  bool operator==(const LoadBalancerStatusChange&) const = default;
};

struct LoadBalancerStatusPlan {
  std::vector<LoadBalancerStatusChange> changes;
  /** Our LoadBalancers that could not get an address (every pool of their family full or
   *  closed to their namespace): reported as problems, retried every pass. */
  std::vector<std::pair<ObjectKey, std::string>> unallocated;
};

/** What the status writer must change. A Service of our class keeps a valid, allowed,
 *  unconflicted address it already has; otherwise it gets the annotation's VIP (when allowed)
 *  or a newly allocated one. The address family follows spec.ipFamilies' first entry when known
 *  (IPv4 by default). A Service no longer ours keeps no ingress that lies in one of our pools. */
LoadBalancerStatusPlan planLoadBalancerStatus(const ClusterObjects& objects, const VipPolicy& policy,
                                              const std::string& annotation,
                                              const std::string& lbClass);

}  // namespace kst
