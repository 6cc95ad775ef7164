// Writes status.loadBalancer of our LoadBalancer Services (model/loadbalancer.h decides what):
// one merge PATCH of the `status` subresource per changed Service, only by the elected router
// (the Lease holder), with `ipMode: Proxy` on every ingress entry (kube-proxy then leaves the
// VIP alone on every node; docs/kubernetes.md "LoadBalancer Services").
#pragma once

#include <memory>
#include <string>

#include "common/error.h"
#include "k8s/http.h"
#include "k8s/kube_source.h"
#include "model/loadbalancer.h"

namespace kst::k8s {

/** The merge-patch body for one change: the ingress list, or `"ingress": null` to clear. */
std::string loadBalancerStatusPatch(const LoadBalancerStatusChange& change);

class LoadBalancerStatusWriter {
 public:
  explicit LoadBalancerStatusWriter(TransportFactory makeTransport);
  /** PATCH /api/v1/namespaces/NS/services/NAME/status. A 404 (the Service is gone) is
   *  success: there is nothing left to write. */
  Status write(const LoadBalancerStatusChange& change);

 private:
  TransportFactory make_;
  std::unique_ptr<HttpTransport> http_;
};

}  // namespace kst::k8s
