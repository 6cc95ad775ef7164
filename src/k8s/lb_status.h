// Reads and writes status.loadBalancer of our LoadBalancer Services (model/loadbalancer.h decides
// what; daemon/daemon.h decides when): one merge PATCH of the `status` subresource per changed
// Service, only by the elected router (the Lease holder), with `ipMode: Proxy` on every ingress
// entry (kube-proxy then leaves the VIP alone on every node; docs/vip-policy.md). Before
// allocating, the daemon reads every Service afresh from the API server (currentServices()): the
// watch cache may not show yet what this router or the previous Lease holder just wrote.
#pragma once

#include <memory>
#include <string>

#include "common/error.h"
#include "k8s/http.h"
#include "k8s/kube_source.h"
#include "model/loadbalancer.h"
#include "reconcile/sinks.h"

namespace kst::k8s {

/** The merge-patch body for one change: the ingress list, or `"ingress": null` to clear. */
std::string loadBalancerStatusPatch(const LoadBalancerStatusChange& change);

struct LoadBalancerStatusOptions {
  /** The VIP annotation (kept when decoding Services, as the cache does). */
  std::string annotation = "cmd.nu/tunnel";
  size_t pageSize = 500;
  /** Largest list page accepted (a longer one is fetched again with half as many objects). */
  size_t maxResponseBytes = HttpRequest::kDefaultMaxBody;
  std::chrono::seconds requestTimeout{60};
  /** Bound on the Services read (a larger cluster fails the read rather than growing). */
  size_t maxServices = 1'000'000;
};

class LoadBalancerStatusWriter : public LoadBalancerStatusSink {
 public:
  explicit LoadBalancerStatusWriter(TransportFactory makeTransport,
                                    LoadBalancerStatusOptions opts = {});
  /** Paged list of /api/v1/services without a resourceVersion (a consistent read from etcd).
   *  A Service that cannot be decoded is left out (logged), as the cache leaves it out. */
  Result<std::map<ObjectKey, ServiceObject>> currentServices() override;
  /** PATCH /api/v1/namespaces/NS/services/NAME/status. A 404 (the Service is gone) is
   *  success: there is nothing left to write. */
  Status write(const LoadBalancerStatusChange& change) override;

 private:
  Status connect();
  TransportFactory make_;
  LoadBalancerStatusOptions opts_;
  std::unique_ptr<HttpTransport> http_;
};

}  // namespace kst::k8s
