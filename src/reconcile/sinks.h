// Where the daemon's findings go besides the kernel: problems (log + Kubernetes Events),
// bucket tables published into the API and the status of our LoadBalancer Services. Declared here, below k8s/ (the implementations) and
// daemon/ (the caller), so neither includes the other.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/ip.h"
#include "model/model.h"

namespace kst {

/** Receives problems found in the model (log + Kubernetes Event in the API source). */
class ProblemSink {
 public:
  virtual ~ProblemSink() = default;
  virtual void report(const Problem& p) = 0;
  /** A reported problem is gone (e.g. so that an Event still waiting for the API server is not
   *  posted after the fact). */
  virtual void resolved(const Problem&) {}
};

/** Writes bucket tables into the API. Only the elected writer publishes (see k8s/). */
class DecisionPublisher {
 public:
  virtual ~DecisionPublisher() = default;
  /** True while this router holds the writer lease. */
  virtual bool isLeader() = 0;
  /** Writes the Service's published bucket table (where only the tunnel tier can write). */
  virtual Status publish(const ObjectKey& service, const std::string& table) = 0;
};

/** Reads and writes status.loadBalancer of Services (k8s/lb_status.h). The daemon writes only
 *  while its DecisionPublisher holds the writer lease: one writer, so two Services never get
 *  the same address. */
class LoadBalancerStatusSink {
 public:
  virtual ~LoadBalancerStatusSink() = default;
  /** Every Service as the API server holds it now (a consistent read, not a watch cache that
   *  may lag behind this router's own writes or a previous writer's): allocation treats every
   *  address found there as taken. */
  virtual Result<std::map<ObjectKey, ServiceObject>> currentServices() = 0;
  /** Writes one Service's ingress (ipMode Proxy), or clears it (empty ingress). */
  virtual Status write(const LoadBalancerStatusChange& change) = 0;
};

/** The VIP readiness of one local endpoint pod after an agent pass (docs/readiness-gate.md). */
struct PodGate {
  std::string pod;  // "ns/name"
  std::string uid;  // empty when the EndpointSlice gave none
  /** Its endpoint addresses: the pod written must hold one of them (status.podIPs). */
  std::vector<IpAddress> addresses;
  /** The VIPs and the decap state are in place in the pod's namespace (the kernel accepted
   *  every change, and no verify found something missing since the last confirmation). */
  bool ready = false;
  std::string message;  // why not, or what is in place
  bool operator==(const PodGate&) const = default;
};

/** Receives the VIP readiness of this node's endpoint pods after every agent pass (all of them,
 *  each time; the implementation writes only what changed). Must not block. */
class PodGateSink {
 public:
  virtual ~PodGateSink() = default;
  virtual void update(const std::vector<PodGate>& gates) = 0;
};

}  // namespace kst
