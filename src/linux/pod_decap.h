// The pod-side decapsulation program (--pod-decap bpf; dp::PodDecap, the program in
// src/linux/bpf/pod_decap.bpf.c, docs/bpf-datapath.md "Pod side"): one program instance with
// its own maps per pod namespace, attached as a tc clsact ingress filter (handle kTcHandle,
// priority kPodDecapPriority, program name kst_pod_decap) on the pod's interfaces that hold
// the pod's addresses. Nothing is pinned: the filter holds the program, the program its maps.
// A restarted agent finds them through the filter (program id → its map ids), reads the config
// map's program id and the address map back and changes only what differs (nothing, for an
// unchanged build, mode and set of VIPs). Needs CAP_BPF + CAP_NET_ADMIN (load, attach) and
// CAP_SYS_ADMIN (BPF_PROG_GET_FD_BY_ID / BPF_MAP_GET_FD_BY_ID to adopt).
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include "common/error.h"
#include "dataplane/pod_namespaces.h"

namespace kst {

namespace bpf {
constexpr uint32_t kPodDecapPriority = 0x4b50;
constexpr const char* kPodDecapProgName = "kst_pod_decap";
/** This build's program id for `want`'s mode and port (the config map keeps it). */
std::string podDecapProgramId(const dp::PodDecap& want);
}  // namespace bpf

/** Decapsulated packets and bytes (the inner IP packets) of the program in a namespace. */
struct PodDecapStats {
  uint64_t packets = 0;
  uint64_t bytes = 0;
};

class PodDecapPrograms {
 public:
  PodDecapPrograms();
  /** Makes the program in the namespace of handle nsFd (id nsId) equal to `want` (nullptr:
   *  none of ours). Returns the number of changes. A namespace found without any program of
   *  ours while none is wanted is not read again until forget(). */
  Result<size_t> apply(const std::string& nsId, int nsFd, const dp::PodDecap* want);
  void forget(const std::string& nsId) { absent_.erase(nsId); }

  /** In the calling thread's namespace: the program as found (no change). */
  static Result<dp::ObservedPodDecap> observe();
  /** In the calling thread's namespace: the counters of our program (zero: none). */
  static Result<PodDecapStats> stats();
  /** stats() in the namespace at netnsPath (for tools and tests). */
  static Result<PodDecapStats> statsAt(const std::string& netnsPath);

 private:
  std::set<std::string> absent_;
};

}  // namespace kst
