// nfnetlink (nf_tables) messages of the daemon's table, encoded and decoded as bytes (pure: no
// sockets). linux/nft_client.cpp sends and receives them; tests/unit/nft_codec_test.cpp pins
// them against what `nft` 1.0.6 itself sends for the same commands and what the kernel answers
// (tests/data/nft/*.hex, re-made by tools/nft/capture.sh).
//
//   nlmsghdr (type NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*) | nfgenmsg (family, version, res_id)
//   | attributes: NFTA_SET_ELEM_LIST_TABLE, _SET, _ELEMENTS { NFTA_LIST_ELEM {
//       NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE key } [NFTA_SET_ELEM_DATA { NFTA_DATA_VALUE data }] }* }
//
// A write is one batch (NFNL_MSG_BATCH_BEGIN … NFNL_MSG_BATCH_END, res_id NFNL_SUBSYS_NFTABLES):
// the kernel applies it as one transaction, all or nothing. Element keys as the kernel stores
// them (every field of a concatenation in its own 32-bit register word): `ip daddr . meta mark`
// is the address (network order) then the mark (host order); map data `meta mark` is host order.
#pragma once

#include <array>
#include <cerrno>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "dataplane/counters.h"
#include "dataplane/kernel.h"
#include "dataplane/types.h"

struct nlmsghdr;

namespace kst::nft {

using Bytes = std::vector<uint8_t>;

/** The daemon's sets and maps (desired/nft_render.cpp) with their key and data lengths. */
struct SetShape {
  std::string_view name;
  uint32_t keyLen;
  uint32_t dataLen;  // 0: a set (no data)
};
/** vip4 4/0, vip6 16/0, b2s4 8/4, b2s6 20/4, flow4 16/4, flow6 8/4, refused4 4/0, refused6 16/0,
 *  ranged4 4/0, ranged6 16/0, ep4 8/0, ep6 20/0, src4 8/0, src6 32/0, bcount4 4/4, bcount6 16/4,
 *  live4 8/0, live6 20/0;
 *  nullptr for another name. */
const SetShape* setShape(std::string_view name);

/** Elements per NEWSETELEM/DELSETELEM message: the element list is one attribute (< 64 KiB),
 *  ≤ 44 bytes per element of the daemon's sets. */
constexpr size_t kElementsPerMessage = 1000;

/**
 * One batch being encoded. Sequence numbers come from the caller's counter (the socket's):
 * every message takes ++seq. Element messages carry NLM_F_ACK (the socket waits for the ack of
 * each, acked()); `nft` sends them without and polls for errors instead.
 */
class BatchEncoder {
 public:
  /** reserve: bytes to reserve up front (batchBytes()), so that the buffer never moves.
   *  genid ≠ 0: NFNL_BATCH_GENID in BATCH_BEGIN, so that the kernel refuses the batch
   *  (kErestart, nothing applied) unless the ruleset generation is still genid. */
  BatchEncoder(std::string table, uint32_t& seq, size_t reserve = 0, uint32_t genid = 0);
  /** Adds one element to set (NFT_MSG_NEWSETELEM when add, else DELSETELEM): appended to the
   *  open message when it is for the same set and operation and has room, else in a new one.
   *  data: the map data (nullptr for a set or a deletion). */
  void element(bool add, std::string_view set, std::span<const uint8_t> key, const uint32_t* data);
  /** An element of an interval set (keyEnd: NFTA_SET_ELEM_KEY_END, the interval's last key) or
   *  one with a comment (libnftnl user data type 0, as `nft ... comment "…"`); either may be
   *  empty. */
  void element(bool add, std::string_view set, std::span<const uint8_t> key,
               std::span<const uint8_t> keyEnd, std::string_view comment);
  /** Closes the batch (NFNL_MSG_BATCH_END) and returns it. */
  Bytes finish();
  /** Sequence numbers of the element messages (each is answered by an ack or an error). */
  const std::vector<uint32_t>& acked() const { return acked_; }
  /** Element messages so far. */
  size_t messages() const { return acked_.size(); }

 private:
  void close();
  void put(bool add, std::string_view set, std::span<const uint8_t> key, const uint32_t* data,
           std::span<const uint8_t> keyEnd, std::string_view comment);
  std::string table_;
  uint32_t& seq_;
  Bytes buf_;
  std::vector<uint32_t> acked_;
  size_t open_ = SIZE_MAX;  // offset of the open element message
  size_t listAttr_ = 0;     // offset of its NFTA_SET_ELEM_LIST_ELEMENTS
  size_t count_ = 0;
  bool openAdd_ = false;
  std::string openSet_;
};

/** Upper bound of the bytes of a batch of `elements` elements whose keys total keyBytes, at
 *  most `maps` of them with data, for table (BatchEncoder's reserve). */
size_t batchBytes(const std::string& table, size_t elements, size_t keyBytes, size_t maps);

/** The element changes as one batch, in the order of the text script (desired/nft_render.cpp):
 *  deletions (VIPs, refused, source intervals, ranged, endpoint counters, bucket counts,
 *  buckets, live slots), then additions in the reverse order, IPv4 before IPv6 in each
 *  (hitless for removed and added VIPs; a new slot is live before a bucket points at it). */
Bytes encodeElementChanges(const std::string& table, const dp::NftElementChanges& changes,
                           uint32_t& seq, std::vector<uint32_t>& acked, uint32_t genid = 0);

/** The kernel's answer to a batch whose NFNL_BATCH_GENID is not the current generation
 *  (an error on the batch header's sequence number; nothing of the batch is applied). */
constexpr int kErestart = ERESTART;
/** The generation after one commit from gen (the kernel skips 0). */
inline uint32_t nextGeneration(uint32_t gen) { return gen + 1 == 0 ? 1 : gen + 1; }

/** The key of a live-slot set element: VIP (network order) . mark (host order). */
size_t slotMarkKey(const dp::SlotMark& l, uint8_t (&out)[20]);
/** The key of a bucket map element: VIP (network order) . kBucketMarkBase + bucket (host order). */
size_t bucketKey(const IpAddress& vip, uint32_t bucket, uint8_t (&out)[20]);
/** The key of a per-endpoint counter element: VIP (network order) . slot mark (host order). */
size_t markKey(const IpAddress& vip, uint32_t mark, uint8_t (&out)[20]);
/** The key of a source interval element: VIP . source (both network order; 8 or 32 bytes). */
size_t sourceKey(const IpAddress& vip, const IpAddress& src, uint8_t (&out)[32]);

// ---- requests outside batches ----
/** NFT_MSG_GETGEN: the ruleset generation of the namespace (answered by NEWGEN and an ack). Every
 *  committed nf_tables transaction, by anyone, increments it. */
Bytes getGenRequest(uint32_t seq);
/** NFT_MSG_GETTABLE of one table (answered by NEWTABLE and an ack, or ENOENT). */
Bytes getTableRequest(const std::string& table, uint32_t seq);
/** NFT_MSG_GETSETELEM dump of one set (answered by NEWSETELEM messages and NLMSG_DONE). */
Bytes dumpElementsRequest(const std::string& table, std::string_view set, uint32_t seq);
/** NFT_MSG_GETSETELEM lookup of count (≤ kElementsPerMessage) keys (one NEWSETELEM answer
 *  per element found; the first
 *  missing key ends the request with ENOENT). keyAt(i, out) writes key i, returns its length. */
Bytes getElementsRequest(const std::string& table, std::string_view set, size_t count,
                         const std::function<size_t(size_t, uint8_t (&)[20])>& keyAt,
                         uint32_t seq);

/** NFT_MSG_GETOBJ dump of the table's stateful objects (as `nft list counters table …`: the
 *  table only; answered by NEWOBJ messages and NLMSG_DONE). */
Bytes dumpObjectsRequest(const std::string& table, uint32_t seq);

// ---- replies ----
/** What one received message is to the request with its sequence number. */
struct Reply {
  enum Kind : uint8_t { Data, Done, Ack, Error } kind;
  int error = 0;              // positive errno (Error)
  bool interrupted = false;   // NLM_F_DUMP_INTR: the dump saw the set change
};
Reply classify(const nlmsghdr* m);

/** A NEWTABLE message: the table's name and comment (libnftnl user data, type 0), if any. */
struct Table {
  std::string name;
  std::optional<std::string> comment;
};
std::optional<Table> decodeTable(const nlmsghdr* m);

/** The generation of a NEWGEN message (NFTA_GEN_ID). */
std::optional<uint32_t> decodeGeneration(const nlmsghdr* m);

/** One element of a NEWSETELEM/DELSETELEM message: spans into the message. */
struct Element {
  std::span<const uint8_t> key, data;
  std::span<const uint8_t> keyEnd = {};    // NFTA_SET_ELEM_KEY_END (interval sets)
  std::span<const uint8_t> userdata = {};  // NFTA_SET_ELEM_USERDATA (libnftnl TLVs)
  /** The element's counter (NFTA_SET_ELEM_EXPR, or the first counter of
   *  NFTA_SET_ELEM_EXPRESSIONS), in a dump of a set declared with `counter`. */
  std::optional<dp::CounterValue> counter = std::nullopt;
};
/** The header of an element message (spans into the message). */
struct ElementList {
  uint16_t type = 0;   // NFT_MSG_NEWSETELEM, DELSETELEM, GETSETELEM
  uint16_t flags = 0;  // nlmsg_flags
  uint8_t family = 0;
  std::string_view table, set;
};
/**
 * Walks the elements of an element message (a dump's or a lookup's answer, or a request of a
 * batch): fn per element. @return the header, or nullopt for another message type or a
 * malformed message (nothing is called then).
 */
std::optional<ElementList> forEachElement(const nlmsghdr* m,
                                          const std::function<void(const Element&)>& fn);

/** A VIP set element's address (4 or 16 bytes), else nullopt. */
std::optional<IpAddress> vipElement(const Element& e);
/** A live-slot set element (key VIP . mark, no data), else nullopt. */
std::optional<dp::SlotMark> liveElement(const Element& e);
/** A bucket map element (key VIP . mark, data the slot mark): added to buckets unless its key
 *  is outside the dense bucket range (only a foreign writer makes those; they are skipped).
 *  Data 0 becomes dp::BucketMap::kForeignZeroMark (0 is "no element" there). replace: an
 *  element already held is overwritten. @return false for a malformed element. */
bool addBucketElement(const Element& e, dp::BucketMap& buckets, bool replace = false);

/** The comment of an element (libnftnl user data type 0, NUL-terminated), if any. */
std::optional<std::string> elementComment(const Element& e);
/** A per-endpoint counter element: (VIP, slot mark) and the endpoint its comment names; nullopt
 *  when the key length or the comment is not the daemon's. */
struct EndpointElement {
  IpAddress vip;
  uint32_t mark = 0;
  IpAddress endpoint;
};
std::optional<EndpointElement> endpointElement(const Element& e);
/** A source interval element: VIP and [first, last] (key and key end of 8 or 32 bytes, the same
 *  VIP in both); nullopt otherwise. */
std::optional<std::pair<IpAddress, dp::SourceInterval>> sourceElement(const Element& e);

/** A NEWOBJ message of a counter object: its name and value; nullopt for another object type
 *  or message, or a malformed one. */
struct NamedCounter {
  std::string table, name;
  dp::CounterValue value;
};
std::optional<NamedCounter> decodeCounterObject(const nlmsghdr* m);
/** A bucket count element (key VIP, data kCountMarkBase | count) into counts: the count, or
 *  dp::NftState::kForeignCount for data the daemon does not write. @return false when malformed. */
bool addCountElement(const Element& e, std::map<IpAddress, uint32_t>& counts);

// ---- notifications (the nf_tables multicast group, NFNLGRP_NFTABLES) ----
// Every committed transaction announces, in the order of the transaction, each object it
// created or deleted (NEWTABLE/DELTABLE, NEWCHAIN, NEWRULE, NEWSET, NEWSETELEM/DELSETELEM with
// the elements themselves, NEWOBJ, …; nlmsg_pid the netlink port of the committing socket), and
// then NEWGEN with the generation it produced (NFTA_GEN_ID, the value GETGEN answers from then
// on) and the committing process (NFTA_GEN_PROC_PID, _NAME). Commits are serialised, so their
// announcements never interleave.

/** One notification decoded. */
struct Notification {
  uint16_t type = 0;        // NFT_MSG_* (without the subsystem byte)
  uint32_t portid = 0;      // nlmsg_pid: the committing socket's port
  uint8_t family = 0;       // nfgen_family (NFPROTO_*)
  std::string_view table;   // the table the object belongs to (attribute 1 of every object
                            // message: NFTA_TABLE_NAME, _CHAIN_TABLE, _SET_ELEM_LIST_TABLE, …)
  uint32_t genid = 0;       // NEWGEN: the generation the commit produced
  uint32_t procPid = 0;     // NEWGEN: the committing process
  std::string_view procName;
};
/** A notification of the nf_tables subsystem; nullopt for another message or a malformed one
 *  (a NEWGEN without a 4-byte NFTA_GEN_ID). Spans point into the message. */
std::optional<Notification> decodeNotification(const nlmsghdr* m);

/** What an observation reads besides dp::NftState, so that announced changes of the small
 *  sets apply exactly: the VIP sets and refused sets (dp::NftState::vips is the VIPs in both),
 *  the filtered VIPs, and the source intervals of every VIP, filtered or not. */
struct RawSets {
  std::set<IpAddress> vipSet, refused, ranged;
  std::map<IpAddress, std::vector<dp::SourceInterval>> sources;
  bool operator==(const RawSets&) const = default;
};

/**
 * Follows the ruleset's commits from their announcements, for the daemon's table as
 * NftClientImpl observes it (dp::NftState: VIPs that are in both their VIP and refused sets,
 * bucket map elements looked up for those VIPs only, below their bucket count; the other sets
 * dumped whole) plus RawSets. Pure: the client owns the socket and feeds every message.
 *
 * Started at the generation of a complete observation (reset()), it records what each later
 * commit did to the table: nothing (another table, the flow maps), or element additions and
 * deletions of the daemon's sets, decoded as the observation decodes them (kept, then applied
 * in order by catchUp()). Anything else in the table (a chain, a rule, a set, the table itself,
 * an object, a set the daemon does not declare, an element not of its set's shape) makes the
 * state unknown; so do a lost announcement (lost()), a generation that does not follow the
 * previous one, a malformed message, more than kMaxChanges recorded elements or kMaxCommits
 * recorded commits (bounded memory: ≈ 10 MiB at most); then only reset() starts again.
 */
class CommitFollower {
 public:
  /** defaultBuckets, bucketCap: the VIP bucket count the client assumes without a valid bucket
   *  count element (cfg.buckets and vipBucketCap(cfg.buckets)), which decides the keys it
   *  looks up. */
  CommitFollower(std::string table, uint32_t defaultBuckets, uint32_t bucketCap);
  static constexpr size_t kMaxChanges = 1 << 17;
  static constexpr size_t kMaxCommits = 1 << 14;
  /** The netlink port of the client's own batches: their element messages are skipped (the
   *  client applies its own tracked commits itself), and a commit of that port after the
   *  generation catchUp() starts from is Unknown (an untracked own commit). */
  void setOwnPort(uint32_t port) { ownPort_ = port; }
  /** Follows from generation gen on, forgetting everything recorded: the state was observed
   *  at gen. Messages of commits up to gen received later are dropped at their NEWGEN. */
  void reset(uint32_t gen);
  /** One received message, in the order of reception. */
  void feed(const nlmsghdr* m);
  /** Announcements were lost (ENOBUFS, a truncated datagram). */
  void lost() { broken_ = true; }
  bool broken() const { return broken_; }
  /** The generation of the last commit whose NEWGEN was received (all before it followed). */
  uint32_t generation() const { return gen_; }

  struct Catchup {
    bool known = false;     // false: the state cannot be brought forward (observe everything)
    uint32_t generation = 0;  // the generation the state was brought to
    /** VIPs that entered the VIP sets or whose bucket count changed: their buckets are not in
     *  the state (erased), the client looks them up. Sorted. */
    std::vector<IpAddress> lookup;
  };
  /**
   * Brings state and raw, the table at generation `at` (the observation's, advanced by the
   * client's own conditioned commits, which the follower skips), through every commit received
   * after `at`, and forgets them. lookedUp: state's buckets are the looked-up ones; false (an
   * exhaustive dump, which holds every element): bucket changes apply to any key, nothing is
   * to be looked up. state and raw are untouched when not known.
   */
  Catchup catchUp(dp::NftState& state, RawSets& raw, uint32_t at, bool lookedUp = true);

 private:
  enum class SetKind : uint8_t { Bucket, Live, Vip, Refused, Ranged, Count, Endpoint, Source };
  struct Change {
    SetKind set = SetKind::Bucket;
    bool add = false;
    IpAddress vip;
    uint32_t mark = 0;       // bucket key mark, live or endpoint slot mark
    uint32_t data = 0;       // bucket map data, bucket count data
    IpAddress endpoint;      // endpoint counter comment
    dp::SourceInterval interval;
  };
  struct Commit {
    uint32_t gen = 0;
    uint32_t port = 0;
    bool unknown = false;  // something in the table the follower does not apply
    std::vector<Change> changes;
    bool touches() const { return unknown || !changes.empty(); }
  };
  void elements(const nlmsghdr* m, const Notification& n);
  uint32_t bucketsOf(const dp::NftState& st, const IpAddress& vip) const;
  std::string table_;
  uint32_t defaultBuckets_, bucketCap_;
  uint32_t ownPort_ = 0;
  uint32_t gen_ = 0;
  bool broken_ = true;  // until reset()
  size_t recorded_ = 0;
  Commit open_;               // the commit being announced (before its NEWGEN)
  std::vector<Commit> done_;  // received commits that touch the table
};

/** A bucket count element's data as dp::NftState::vipBuckets holds it: the count, or
 *  dp::NftState::kForeignCount for data the daemon does not write. */
uint32_t countOfData(uint32_t data);

/** The messages of a buffer (a batch, or a datagram of replies), in order; nullopt when a
 *  length is inconsistent. */
std::optional<std::vector<const nlmsghdr*>> split(std::span<const uint8_t> buf);

/** A batch decoded (as the kernel reads one): BATCH_BEGIN for nf_tables, messages, BATCH_END. */
struct DecodedBatch {
  uint32_t genid = 0;  // NFNL_BATCH_GENID of BATCH_BEGIN (0: none)
  struct Message {
    ElementList list;
    uint32_t seq = 0;
    std::vector<Element> elements;
  };
  std::vector<Message> messages;
};
/** Decodes a batch of element messages; an error names what is malformed (framing, an unknown
 *  message type, an element without key). Spans point into buf. */
Result<DecodedBatch> decodeBatch(std::span<const uint8_t> buf);

}  // namespace kst::nft
