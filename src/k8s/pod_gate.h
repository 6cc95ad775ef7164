// The agent's VIP readiness gate writer (docs/readiness-gate.md): pods of tunnelled Services may
// carry `readinessGates: [{conditionType: cmd.nu/vip-ready}]`; the kubelet then reports the pod
// Ready — and the EndpointSlice lists it ready, so routers give it buckets — only once that
// condition is True. The agent reports, after each pass, which of its node's endpoint pods have
// their VIPs and decap state in place (reconcile/sinks.h PodGate); this writer turns that into
// the pod condition, on its own thread (the reconcile loop never waits for the API server).
//
// RBAC: `patch` on `pods/status`, nothing else. The writer reads a pod through the same
// permission: a dry-run (`?dryRun=All`) empty strategic-merge patch of `pods/status` answers the
// whole pod and writes nothing. Per pod it reads once (and again after a minute, after a failed
// write, or when the pod's uid changes), and writes only when the condition's value differs:
//   - pods without the gate are never written (their behaviour is unchanged);
//   - pods on another node (spec.nodeName), with another uid than the EndpointSlice named, or
//     holding none of the endpoint's addresses (status.podIPs) are never written;
//   - the write is a strategic-merge patch of status.conditions (merged by type, the kubelet's
//     own conditions untouched) with lastTransitionTime, carrying metadata.uid so that it can
//     only land on the pod that was read (a recreated pod of the same name answers 422).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "k8s/http.h"
#include "k8s/kube_source.h"
#include "reconcile/sinks.h"

namespace kst::k8s {

inline constexpr const char* kVipReadyCondition = "cmd.nu/vip-ready";

struct PodGateOptions {
  std::string conditionType = kVipReadyCondition;
  /** This node: pods whose spec.nodeName differs are never written. */
  std::string nodeName;
  /** After a failed request (transport error, 5xx, 429, …). */
  std::chrono::milliseconds retry{std::chrono::seconds(1)};
  /** A pod's gate and condition are read again after this long (someone else may have written
   *  the condition). */
  std::chrono::seconds reread{60};
  std::function<std::chrono::system_clock::time_point()> now = [] {
    return std::chrono::system_clock::now();
  };
};

/** What the writer needs of a pod (from the dry-run answer). */
struct PodGateView {
  std::string uid;
  std::string nodeName;
  bool gated = false;                // spec.readinessGates names the condition type
  std::optional<bool> status;        // the condition's status (nullopt: absent or Unknown)
  std::vector<IpAddress> ips;        // status.podIP and status.podIPs
};

/** Reads a pod object (hostile input: any shape is an error or a default, never a throw). */
Result<PodGateView> readPodGate(const nlohmann::json& pod, const std::string& conditionType);

/** The strategic-merge patch body that sets the condition. */
std::string podGatePatch(const std::string& conditionType, const PodGate& gate,
                         std::chrono::system_clock::time_point now);

class PodGateWriter : public PodGateSink {
 public:
  PodGateWriter(TransportFactory makeTransport, PodGateOptions opts);
  ~PodGateWriter() override;
  /** Starts the writer thread (without it, call syncOnce() yourself). */
  void start();
  void stop();
  void update(const std::vector<PodGate>& gates) override;
  /** One round: reads and writes what is due. @return true when nothing is left to retry. */
  bool syncOnce();
  /** Condition writes that succeeded so far. */
  int writes() const;
  /** Pod reads (dry-run patches) so far. */
  int reads() const;

 private:
  struct Known {
    std::string uid;
    bool gated = false;
    bool foreign = false;  // another node's pod, or not the pod the slice named
    std::optional<bool> status;
    std::chrono::system_clock::time_point readAt;
  };
  Result<PodGateView> read(const std::string& pod);
  Status write(const std::string& pod, const PodGate& gate, const std::string& uid);
  void loop();

  TransportFactory make_;
  PodGateOptions opts_;
  std::unique_ptr<HttpTransport> http_;  // writer thread (or syncOnce's caller) only
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, PodGate> want_;  // by pod, the last update()
  bool dirty_ = false;
  bool stopping_ = false;
  std::map<std::string, Known> known_;  // syncOnce only
  int writes_ = 0, reads_ = 0;
  std::thread thread_;
};

}  // namespace kst::k8s
