// The router's classifier as a tc-BPF program (src/linux/bpf/router.bpf.c) and its maps: the same
// decisions as the nft table (desired/nft_render.h) behind the same interface, dp::NftClient,
// so the router reconciler diffs, batches and adopts BPF map entries exactly as it does nft
// elements (--datapath bpf; nft stays the default).
//
// State: every map and the program are pinned under --bpf-pin-dir (default /sys/fs/bpf/kst;
// bpffs is mounted at /sys/fs/bpf when it is not). The "config" map holds the skeleton id:
// this build's program hash and the mode, then the nft skeleton id the reconciler computed
// from the configuration (seed, flow timeout, table size, bucket classes). observe() reports
// the stored nft id only when the program part is this build's, so a new build or a new
// configuration is a Rebuild (fresh maps and program, swapped in place on every interface)
// and an unchanged one is adopted with zero changes. Elements map onto the maps as follows
// (router_maps.h): VIP set, bucket count and ranged flag → one "vips" entry (flags), b2s →
// "buckets", ep and live → one "slots" entry (flags + endpoint), src intervals → the LPM
// prefixes they cover in "sources" (each carrying its interval, which observe() reads back),
// per-VIP / per-endpoint / per-reason counters → per-CPU maps.
//
// Not transactional: BPF has no multi-map transaction, so applyElements() writes in the nft
// batch's order (a VIP is classified only after its buckets and slots exist, a removed one is
// unclassified first), deletions of absent keys are no error and additions overwrite. A
// failure mid-way leaves a partial state that the reconciler's next observation repairs.
//
// Attachment: tc clsact ingress, handle kTcHandle and priority kTcPriority (owned), on the
// --bpf-ingress interfaces (default: every interface but lo and the daemon's own links, as
// found at each observation, so a new uplink is attached at the next resync). An existing
// filter of ours is replaced in place (no gap); observe() re-attaches a missing one.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/ip.h"
#include "dataplane/inspect.h"
#include "dataplane/kernel.h"
#include "desired/config.h"
#include "linux/bpf/router_maps.h"

namespace kst::nl {
class Socket;
}

namespace kst {

/** How the program sends a classified packet in the flow modes (docs/bpf-datapath.md):
 *  Headers: it writes the outer headers and forwards the packet itself (bpf_redirect_neigh),
 *    handing what it cannot forward with the stack's semantics to the mark path (and an IPv6
 *    outer vxlan-gpe packet, whose UDP checksum it does not compute, to the device);
 *  Device: tunnel key + redirect to the collect-md device (vxlan-gpe, ipip only);
 *  Mark: the slot mark only; the policy rules route it (every mode). */
enum class BpfEncap { Headers, Device, Mark };

struct BpfOptions {
  std::string pinDir = "/sys/fs/bpf/kst";
  /** Interfaces whose ingress runs the program; empty: every interface but lo and owned links. */
  std::vector<std::string> ingress;
  /** The way out (above); modes without that way use the next one (headers → device → mark). */
  BpfEncap encap = BpfEncap::Headers;
  /** observe() repairs an adopted state (re-attaches, refreshes device indexes); off for an
   *  instance that only reads or removes. */
  bool repair = true;
};

namespace bpf {

constexpr uint32_t kTcHandle = 0x6b7374;  // "kst"
constexpr uint32_t kTcPriority = 0x4b53;
constexpr const char* kProgName = "kst_router";

/** An address as the maps hold it: 16 bytes, IPv4 mapped (::ffff:a.b.c.d). */
std::array<uint8_t, 16> mapKey(const IpAddress& a);
/** The inverse of mapKey (an IPv4-mapped address reads as IPv4). */
IpAddress fromMapKey(const uint8_t* bytes);
/** The CIDR prefixes (address, length in the 128-bit mapped space) that exactly cover
 *  [first, last] (same family, first ≤ last), smallest count, in address order. */
std::vector<std::pair<std::array<uint8_t, 16>, uint8_t>> coverPrefixes(const IpAddress& first,
                                                                       const IpAddress& last);
/** bpffs under the pin directory: mounted at /sys/fs/bpf when the directory lies there and
 *  nothing is mounted there (needs CAP_SYS_ADMIN); the directory created. */
Status preparePinDir(const std::string& dir);
/** The program part of the skeleton id: hash of the program object, and the mode. */
std::string programId(const DataplaneConfig& cfg);
/** The id kept in the config map: programId + "/" + the nft skeleton id. */
std::string storedId(const std::string& program, const std::string& skeletonId);
/** The nft skeleton id of a stored id when its program part is `program`; nullopt otherwise. */
std::optional<std::string> adoptedSkeletonId(const std::string& stored, const std::string& program);

/** The program's hashes for one family, as explain and status read nft's classifier rules: per
 *  bucket count B a VIP of the family holds (its count entry), the rule pair the nft table has
 *  for that count class (`jhash saddr . daddr . th sport . th dport mod B seed S offset
 *  0x40000000` for TCP, UDP and SCTP, `jhash saddr . daddr …` for the rest: the same bucket,
 *  bit for bit); the flow key as the plain 4-tuple (saddr . daddr . th sport . th dport), which
 *  flowMapKey turns into the flow map's key. */
dp::ClassifierHashes classifierHashes(Family family, uint32_t seed,
                                      const std::set<uint32_t>& bucketCounts);
/** The flow map's key (struct kst_flow_key's bytes) of the registers explain builds from
 *  classifierHashes' flowKey: saddr, daddr, sport, dport, each in 4-byte registers; nullopt
 *  when the bytes are not that (another length). */
std::optional<std::vector<uint8_t>> flowMapKey(Family family, std::span<const uint8_t> registers);
/** A flow pin the program follows: seen within the flow timeout (an older one is a new flow;
 *  the LRU map keeps it until it needs the room). */
constexpr bool pinValid(uint64_t seenNs, uint64_t nowNs, uint64_t timeoutNs) {
  return nowNs - seenNs <= timeoutNs;
}

}  // namespace bpf

/** dp::NftInspector over the pinned maps of the bpf datapath (`status` and `explain` with
 *  --datapath bpf): the hashes from the config map's seed and the VIPs' bucket counts, a flow
 *  pin from the flow map (one lookup; an expired pin reads as none, as the program treats it).
 *  Reads only; an error when no program of ours is pinned under pinDir. */
class BpfInspector : public dp::NftInspector {
 public:
  explicit BpfInspector(std::string pinDir) : pinDir_(std::move(pinDir)) {}
  Result<dp::ClassifierHashes> classifier(Family family) override;
  Result<std::optional<uint32_t>> flowMark(Family family, std::span<const uint8_t> key) override;

 private:
  std::string pinDir_;
};

class BpfClassifier : public dp::NftClient {
 public:
  BpfClassifier(const DataplaneConfig& cfg, BpfOptions opts);
  ~BpfClassifier() override;
  Result<dp::NftState> observe() override;
  /** Refused: the BPF datapath takes no nft text. */
  Status run(const std::string& script) override;
  Status applyStep(dp::TableStep step, const std::string& skeletonId, const std::string& skeleton,
                   const dp::NftElementChanges& elements) override;
  Status applyElements(const dp::NftElementChanges& changes) override;
  Result<dp::NftCounterSnapshot> readCounters() override;
  /** Device indexes and MTUs read again (the config map), when the program is loaded. */
  Status linksChanged() override;

 private:
  struct Maps;
  Result<Maps> openMaps() const;
  Status load(const std::string& skeletonId);
  Status remove();
  /** Attaches the pinned program to every target interface where it is not attached. */
  Status ensureAttached(int progFd, bool replaceAll);
  Status refreshConfig(const Maps& m);
  /** Notes that we created ifindex's clsact qdisc (the pinned "clsact" map). */
  void recordClsact(int ifindex, const std::string& name) const;
  /** Removes the clsact qdiscs we created that no filter uses any more; forgets the rest. */
  void removeOwnClsacts();
  /** The header path's outer source per endpoint, re-resolved (routes may have changed);
   *  slots: the slot entries as observe() read them. */
  Status refreshSources(const Maps& m,
                        const std::vector<std::pair<kst_slot_key, kst_slot_val>>& slots);
  /** The program writes the outer headers (--bpf-encap headers in a flow mode). */
  bool headerPath() const;
  /** The source address the kernel picks toward endpoint (its route's preferred source,
   *  `ip route get`), mapped; zero when unknown (the program then takes the mark path). */
  std::array<uint8_t, 16> outerSource(const IpAddress& endpoint);
  std::vector<std::pair<std::string, int>> targets() const;
  DataplaneConfig cfg_;
  BpfOptions opts_;
  std::string program_;  // bpf::programId(cfg_)
  std::unique_ptr<nl::Socket> nl_;  // route lookups (opened on first use, in that namespace)
  std::map<IpAddress, std::array<uint8_t, 16>> sources_;  // outerSource() per batch
};

}  // namespace kst
