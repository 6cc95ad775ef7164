// What `kube-service-tunnel explain` and `status` compute from a router's (and agent's) kernel
// state, pure: the reading is reconcile/inspect.h's, the output main's.
//
// explain follows a packet through the classifier as the kernel would: the flow map first
// (`pinned`: its element wins), else the bucket hash of the kernel's own rule (hashing/jhash.h,
// bit-exact with nft_jhash) and the VIP's bucket map element, then the policy rule of the mark,
// the slot table's route for the VIP and the endpoint that route encapsulates toward.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/error.h"
#include "common/ip.h"
#include "dataplane/inspect.h"
#include "dataplane/types.h"

namespace kst {

/** The packet explain is asked about. */
struct FlowQuery {
  IpAddress vip;  // destination
  IpAddress src;
  uint16_t sport = 0;
  uint16_t dport = 0;
  uint8_t protocol = 6;  // IP protocol number
};

/** "tcp", "udp", "sctp", "icmp", "icmpv6" or a number 0…255. */
std::optional<uint8_t> parseProtocol(const std::string& name);
std::string protocolName(uint8_t protocol);
/** TCP, UDP and SCTP: the classifier hashes and pins their ports (`th sport`, `th dport`). */
bool protocolHasPorts(uint8_t protocol);

/** The number of buckets the kernel holds for a VIP: one more than its highest bucket map
 *  element. This is the one place that decides a VIP's bucket count for explain and status. */
uint32_t vipBucketCount(const dp::NftState& nft, const IpAddress& vip);

/** The flow map key the classifier pins this packet under (the kernel rule's key parts, each
 *  field or hash in its own register); nullopt when the protocol is not pinned. An error when
 *  a part is a field explain does not know. */
Result<std::optional<std::vector<uint8_t>>> flowKey(const FlowQuery& q,
                                                    const dp::ClassifierHashes& hashes);

struct Explanation {
  FlowQuery query;
  bool vipKnown = false;          // in the VIP set: the classifier looks at the packet at all
  uint32_t buckets = 0;           // the VIP's bucket count (vipBucketCount)
  std::optional<uint32_t> bucket; // what the hash gives (0 … mod-1)
  uint32_t hashMark = 0;          // offset + bucket
  dp::JhashExpr hash;             // the rule's expression used
  std::optional<uint32_t> bucketMark;  // the bucket map's slot mark for that bucket
  std::optional<uint32_t> pinnedMark;  // the flow map's element, when the flow is pinned
  /** The flow map's element when its (VIP, mark) is not in the live-slot set: a pin to a
   *  released slot, which the classifier ignores (the packet is hashed). */
  std::optional<uint32_t> stalePinMark;
  std::optional<uint32_t> mark;        // the mark the packet is routed with (pinned wins)
  std::optional<uint32_t> table;       // the policy rule's table for that mark
  std::optional<IpAddress> endpoint;   // where the table's route for the VIP encapsulates to
  std::string verdict;                 // one line: what happens to the packet
};

/** The packet's way through the classifier and the slot tables. pinned: the flow map's data
 *  for flowKey(q), if any. An error when no hash rule of the kernel fits the packet. */
Result<Explanation> explainFlow(const FlowQuery& q, const dp::RouterState& state,
                                const dp::ClassifierHashes& hashes, std::optional<uint32_t> pinned);

nlohmann::json toJson(const Explanation& e);
std::string toText(const Explanation& e);

// ---- status ----

struct EndpointStatus {
  IpAddress endpoint;
  uint32_t mark = 0;   // the slot's fwmark
  uint32_t table = 0;  // its routing table
  uint32_t buckets = 0;
  /** serving: buckets send new flows to it; draining: its slot and route stay for the flows
   *  pinned to it, no bucket does. */
  bool draining() const { return buckets == 0; }
};

struct VipStatus {
  IpAddress vip;
  bool inVipSet = false;
  uint32_t buckets = 0;     // vipBucketCount
  uint32_t unassigned = 0;  // buckets below it without an element, or whose mark no slot routes
  std::vector<EndpointStatus> endpoints;  // by mark
  std::optional<bool> announced;          // nullopt: no announce table given
};

/** One pod namespace holding the agent's objects. */
struct PodStatus {
  std::string netns;                // the namespace's path (or id)
  std::vector<IpAddress> podIps;    // its addresses that are not the agent's
  std::vector<IpAddress> vips;      // the agent's addresses (the VIPs it receives)
  std::string decapDevice;          // the mode's device name
  bool decapPresent = false;
};

struct NodeStatus {
  bool router = false;
  std::string datapath = "nft";         // the router's classifier: nft or bpf
  bool nftTable = false;                // the router's classifier (table or program) exists
  std::vector<VipStatus> vips;
  /** With an announce table: whether `drain` left its marker in the state dir (then no VIP is
   *  announced, whatever the router could serve). */
  std::optional<bool> drained;
  bool agent = false;
  std::vector<PodStatus> pods;
  std::vector<std::string> errors;      // parts that could not be read
};

/** The router's VIPs from its kernel state; announced: the announce table's routes, if one is
 *  configured. */
std::vector<VipStatus> routerStatus(const dp::RouterState& state,
                                    const std::optional<std::vector<dp::Route>>& announced);

/** A pod namespace's status from its links and addresses; nullopt when it holds nothing of the
 *  agent's (not a served pod). */
std::optional<PodStatus> podStatus(const std::string& netns, const std::string& decapDevice,
                                   const std::vector<dp::Link>& links,
                                   const std::vector<dp::Address>& all,
                                   const std::vector<dp::Address>& owned);

nlohmann::json toJson(const NodeStatus& s);
std::string toText(const NodeStatus& s);

}  // namespace kst
