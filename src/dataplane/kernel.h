// The narrow kernel boundary (with pod_namespaces.h, the agent's). The reconcilers see only
// these interfaces; the real implementations live in linux/, in-memory fakes in tests/fakes/.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "common/error.h"
#include "dataplane/counters.h"
#include "dataplane/types.h"

namespace kst::dp {

/** `ip -f mpls route add LABEL dev DEV` inside a pod (MPLS mode). */
struct MplsPop {
  uint32_t label = 100;
  std::string dev = "lo";
  auto operator<=>(const MplsPop&) const = default;
};

/** `ip link set dev NAME mtu MTU` (Action::Replace): the MTU is changed in place, because
 *  recreating a tunnel device would take every nexthop and route through it along. */
struct LinkMtu {
  std::string name;
  uint32_t mtu = 0;
  auto operator<=>(const LinkMtu&) const = default;
};

struct Change {
  enum class Action : uint8_t { Add, Replace, Delete };
  Action action;
  std::variant<Link, Nexthop, Route, Rule, Address, MplsPop, LinkMtu> object;
};
std::string describe(const Change& c);

/** rtnetlink access to one network namespace. Dumps return only objects the daemon owns
 *  (tagged with its protocol, in its table range, or named with its link prefix), except
 *  links(), which returns every link (for ifindex lookups). Link::Replace recreates a link;
 *  LinkMtu::Replace sets the MTU of an existing one. */
class NetlinkClient {
 public:
  virtual ~NetlinkClient() = default;
  virtual Result<std::vector<Link>> links() = 0;
  /** ownedOnly: only addresses tagged with the daemon's IFA_PROTO. */
  virtual Result<std::vector<Address>> addresses(bool ownedOnly) = 0;
  virtual Result<std::vector<Nexthop>> nexthops() = 0;
  virtual Result<std::vector<Route>> routes(uint32_t tableLo, uint32_t tableHi) = 0;
  virtual Result<std::vector<Rule>> rules(uint32_t prioLo, uint32_t prioHi) = 0;
  virtual Result<std::vector<MplsPop>> mplsPops() = 0;
  /** Applies the changes in order, batched. @return one message per failed change. */
  virtual Result<std::vector<std::string>> apply(const std::vector<Change>& changes) = 0;
};

/** Element changes of the router's VIP sets, bucket maps and bucket count maps (vip4/vip6,
 *  b2s4/b2s6, bcount4/bcount6). */
struct NftElementChanges {
  struct Bucket {
    IpAddress vip;
    uint32_t bucket;  // 0 … B-1 (the map key holds kBucketMarkBase + bucket)
    uint32_t mark;    // the slot's fwmark (ignored for deletions)
  };
  /** A per-endpoint counter element (ep4/ep6): key VIP . slot mark, comment the endpoint. */
  struct EndpointCounter {
    IpAddress vip;
    uint32_t mark;
    IpAddress endpoint;
  };
  /** An allowed source interval of a filtered VIP (src4/src6). */
  struct SourceRange {
    IpAddress vip;
    SourceInterval src;
  };
  /** vipDeletes/vipAdds change vip4/vip6 and the refused-packet counter sets refused4/refused6
   *  (the same VIPs); rangedDeletes/rangedAdds the filtered VIPs (ranged4/ranged6). */
  std::vector<IpAddress> vipDeletes, vipAdds;
  std::vector<Bucket> bucketDeletes, bucketAdds;
  std::vector<EndpointCounter> endpointDeletes, endpointAdds;
  std::vector<IpAddress> rangedDeletes, rangedAdds;
  std::vector<SourceRange> rangeDeletes, rangeAdds;
  /** A VIP's bucket count element (bcount4/bcount6). */
  struct Count {
    IpAddress vip;
    uint32_t buckets;  // ignored for deletions
  };
  std::vector<Count> countDeletes, countAdds;
  /** Elements of the live-slot sets live4/live6: a deletion releases the slot's pinned flows
   *  (their next packet is hashed again), an addition makes a new slot's pins valid. */
  std::vector<SlotMark> liveDeletes, liveAdds;
  size_t size() const {
    return vipDeletes.size() + vipAdds.size() + bucketDeletes.size() + bucketAdds.size() +
           endpointDeletes.size() + endpointAdds.size() + rangedDeletes.size() +
           rangedAdds.size() + rangeDeletes.size() + rangeAdds.size() + countDeletes.size() +
           countAdds.size() + liveDeletes.size() + liveAdds.size();
  }
};

/** What happens to the classifier's table (nft) or program and maps (bpf) when the observed
 *  state becomes the desired one: kept (element changes only; also when neither exists),
 *  created, rebuilt (the skeleton differs: replaced, with all its elements, at once) or
 *  deleted. Chosen by desired/nft_render.h nftTableStep(). */
enum class TableStep : uint8_t { Keep, Create, Rebuild, Delete };

/** The router's classifier: nftables (the daemon's own table only, linux/nft_client.h) or the
 *  tc-BPF program and its maps (linux/bpf_classifier.h). */
class NftClient {
 public:
  virtual ~NftClient() = default;
  virtual Result<NftState> observe() = 0;
  /** Runs an nft script as one atomic transaction (nft only; the bpf classifier refuses). */
  virtual Status run(const std::string& script) = 0;
  /** Carries out a table step and the element changes that follow it (for Create and Rebuild
   *  relative to an empty classifier; ignored for Delete), atomically where the datapath can.
   *  skeletonId/skeleton: the desired skeleton (desired/nft_render.h renderSkeleton), which
   *  the classifier keeps so that observe() reports it again. */
  virtual Status applyStep(TableStep step, const std::string& skeletonId,
                           const std::string& skeleton, const NftElementChanges& elements) = 0;
  /** Applies element changes as one transaction (order inside: VIP deletions, then source
   *  ranges, endpoint counters, bucket counts, buckets and live slots deleted, added in the
   *  reverse order, VIP additions last; a new slot is live before a bucket points at it, a
   *  released one's live element goes with its buckets), all or nothing: the kernel refuses
   *  the whole batch when one deletion finds no element (ENOENT) or one addition finds its key
   *  with other data (EBUSY). Exception: a large set of additions only (a cold start) may go
   *  in several transactions, the VIP additions in the last, so that no VIP is classified
   *  before its buckets exist. The table must exist. Element changes never go through nft's
   *  text parser (a 640k-element load is seconds through text). */
  virtual Status applyElements(const NftElementChanges&) = 0;
  /** The traffic counters of the table (dataplane/counters.h): per VIP, per VIP × endpoint,
   *  refused by reason and per VIP, flow table occupancy. Read from the kernel at every call
   *  (counters move without a ruleset generation change). A missing table reads as empty. */
  virtual Result<NftCounterSnapshot> readCounters() = 0;
  /** The pass created, recreated or resized links (tunnel devices): a classifier that holds
   *  device indexes or MTUs (the bpf datapath) reads them again now, not at the next resync.
   *  nft refers to nothing by index. */
  virtual Status linksChanged() { return {}; }
};

}  // namespace kst::dp
