// In-memory, stateful fakes of the kernel boundary (dataplane/kernel.h), in the spirit of
// Open/R's MockNetlinkProtocolSocket: they keep links, nexthops, routes, rules, addresses, MPLS
// label routes and the nftables table, apply Change lists with the kernel's semantics where
// the daemon depends on them, count requests, and can be told to fail chosen changes.
//
// Kernel behaviour modelled (and relied upon by the tests):
//   * Add of an existing object fails with EEXIST (the daemon sends NLM_F_EXCL); Replace
//     creates or replaces; Delete of a missing object fails (ENOENT/ESRCH).
//   * A route delete only matches a route of the same protocol (rtm_protocol is set).
//   * Nexthops and routes/addresses need their device; routes need their nexthop id.
//   * Deleting a nexthop removes the routes using it; deleting a link removes its nexthops,
//     the routes over them or over the link, and its addresses.
//   * Dumps return owned objects only, exactly like NetlinkClientImpl: nexthops/routes/rules/
//     addresses(ownedOnly) filtered by protocol (and id/table/priority range); links() all.
//   * apply() runs in NetlinkClientImpl's three stages: link creations, everything else in
//     order, link deletions.
//   * nft scripts are parsed (only the statements desired/nft_render.cpp emits; anything else
//     is an error) and applied atomically: on any error nothing changes. Re-adding a map
//     element with a different value fails (EBUSY), deleting a missing element fails.
//   * nft element changes take production's path: applyElements() encodes them with
//     linux/nft_codec (the very batch NftClientImpl sends), decodes the bytes as the kernel
//     reads them and applies the transaction all or nothing (ENOENT for a missing element or
//     set, EBUSY for a key held with other data, EINVAL for a key of the wrong length).
// With Options::wire the objects are stored as the kernel would report them back: each one is
// encoded with linux/netlink_codec and parsed again, so codec normalisation (e.g. fields the
// parser does not recover) shows up as changes on the next pass.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netlink.h>

#include "dataplane/kernel.h"
#include "desired/config.h"
#include "desired/nft_render.h"
#include "linux/netlink_codec.h"
#include "linux/nft_codec.h"

namespace kst::fake {

/** One network namespace's rtnetlink state. */
class FakeKernel : public dp::NetlinkClient {
 public:
  struct Options {
    uint8_t protocol = 211;
    uint32_t nexthopIdLo = 0x4b530000, nexthopIdHi = 0x4b630000;
    bool wire = false;
  };
  FakeKernel() : FakeKernel(Options{}) {}
  explicit FakeKernel(Options o) : o_(o) { seedLink(loopback()); }
  static Options optionsFor(const DataplaneConfig& cfg, bool wire = false) {
    return Options{cfg.routeProtocol, cfg.nexthopIdBase, cfg.nexthopIdEnd(), wire};
  }

  // ---- seeding objects that are not the daemon's (or simulating drift) ----
  uint32_t seedLink(dp::Link l) {
    l.ifindex = nextIfindex_++;
    links_.push_back(l);
    return l.ifindex;
  }
  void seedAddress(const dp::Address& a, uint8_t protocol) { addrs_.push_back({a, protocol}); }
  void seedRoute(const dp::Route& r, uint8_t protocol) { routes_.push_back({r, protocol}); }
  void seedRule(const dp::Rule& r, uint8_t protocol) { rules_.push_back({r, protocol}); }
  void seedNexthop(const dp::Nexthop& n, uint8_t protocol) { nhs_.push_back({n, protocol}); }
  void eraseRouteIf(const std::function<bool(const dp::Route&)>& pred) {
    std::erase_if(routes_, [&](auto& e) { return pred(e.r); });
  }

  // ---- failure injection ----
  /** Every change matching pred fails (state untouched) until clearFailures(). */
  void failWhen(std::function<bool(const dp::Change&)> pred, int code = EINVAL) {
    failRules_.push_back({std::move(pred), code});
  }
  void clearFailures() { failRules_.clear(); }
  /** Dumps fail with EBUSY while set (a namespace going away, a socket error). */
  bool failDumps = false;

  // ---- inspection ----
  struct Counted {
    uint64_t dumps = 0, changeRequests = 0, applyCalls = 0, failedChanges = 0;
  };
  const Counted& counts() const { return counts_; }
  /** Successfully applied changes, in order. */
  const std::vector<dp::Change>& log() const { return log_; }
  /** When set, every applied change is also appended here as "netlink: <describe>"; share
   *  one journal with a FakeNft to check the order of netlink and nft steps. */
  std::vector<std::string>* journal = nullptr;
  void clearLog() { log_.clear(); }

  struct AddressEntry { dp::Address a; uint8_t protocol; };
  struct NexthopEntry { dp::Nexthop n; uint8_t protocol; };
  struct RouteEntry { dp::Route r; uint8_t protocol; };
  struct RuleEntry { dp::Rule r; uint8_t protocol; };
  const std::vector<dp::Link>& allLinks() const { return links_; }
  const std::vector<AddressEntry>& allAddresses() const { return addrs_; }
  const std::vector<NexthopEntry>& allNexthops() const { return nhs_; }
  const std::vector<RouteEntry>& allRoutes() const { return routes_; }
  const std::vector<RuleEntry>& allRules() const { return rules_; }
  const std::vector<dp::MplsPop>& allMplsPops() const { return pops_; }
  const dp::Link* link(const std::string& name) const {
    for (auto& l : links_)
      if (l.name == name) return &l;
    return nullptr;
  }

  // ---- dp::NetlinkClient ----
  Result<std::vector<dp::Link>> links() override {
    if (auto e = dump(1)) return std::unexpected(*e);
    return links_;
  }
  Result<std::vector<dp::Address>> addresses(bool ownedOnly) override {
    if (auto e = dump(2)) return std::unexpected(*e);
    std::vector<dp::Address> out;
    for (auto& e : addrs_)
      if (!ownedOnly || e.protocol == o_.protocol) out.push_back(e.a);
    std::sort(out.begin(), out.end());
    return out;
  }
  Result<std::vector<dp::Nexthop>> nexthops() override {
    if (auto e = dump(2)) return std::unexpected(*e);
    std::vector<dp::Nexthop> out;
    for (auto& e : nhs_)
      if (e.protocol == o_.protocol && e.n.id >= o_.nexthopIdLo && e.n.id < o_.nexthopIdHi)
        out.push_back(e.n);
    std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.id < b.id; });
    return out;
  }
  Result<std::vector<dp::Route>> routes(uint32_t lo, uint32_t hi) override {
    if (auto e = dump(2)) return std::unexpected(*e);
    std::vector<dp::Route> out;
    for (auto& e : routes_)
      if (e.protocol == o_.protocol && e.r.key.table >= lo && e.r.key.table < hi)
        out.push_back(e.r);
    std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.key < b.key; });
    return out;
  }
  Result<std::vector<dp::Rule>> rules(uint32_t lo, uint32_t hi) override {
    if (auto e = dump(2)) return std::unexpected(*e);
    std::vector<dp::Rule> out;
    for (auto& e : rules_)
      if (e.protocol == o_.protocol && e.r.priority >= lo && e.r.priority < hi)
        out.push_back(e.r);
    std::sort(out.begin(), out.end());
    return out;
  }
  Result<std::vector<dp::MplsPop>> mplsPops() override {
    if (auto e = dump(2)) return std::unexpected(*e);
    return pops_;
  }
  Result<std::vector<std::string>> apply(const std::vector<dp::Change>& changes) override {
    using A = dp::Change::Action;
    ++counts_.applyCalls;
    std::vector<std::string> failures;
    auto run = [&](const dp::Change& c) {
      ++counts_.changeRequests;
      std::optional<std::string> err;
      for (auto& [pred, code] : failRules_)
        if (pred(c)) err = fmt::format("injected failure (errno {})", code);
      if (!err) err = applyOne(c);
      if (err) {
        ++counts_.failedChanges;
        failures.push_back(dp::describe(c) + ": " + *err);
      } else {
        log_.push_back(c);
        if (journal) journal->push_back("netlink: " + dp::describe(c));
      }
    };
    for (auto& c : changes)
      if (std::holds_alternative<dp::Link>(c.object) && c.action != A::Delete) run(c);
    ++counts_.dumps;  // NetlinkClientImpl re-reads the links for ifindexes here
    for (auto& c : changes)
      if (!std::holds_alternative<dp::Link>(c.object)) run(c);
    for (auto& c : changes)
      if (std::holds_alternative<dp::Link>(c.object) && c.action == A::Delete) run(c);
    return failures;
  }

 private:
  static dp::Link loopback() {
    dp::Link lo;
    lo.name = "lo";
    return lo;
  }

  std::optional<Error> dump(int requests) {
    counts_.dumps += static_cast<uint64_t>(requests);
    if (failDumps) return Error{EBUSY, "fake: dump failed"};
    return std::nullopt;
  }

  std::optional<uint32_t> ifindexOf(const std::string& name) const {
    for (auto& l : links_)
      if (l.name == name) return l.ifindex;
    return std::nullopt;
  }
  std::string nameOf(uint32_t ifindex) const {
    for (auto& l : links_)
      if (l.ifindex == ifindex) return l.name;
    return {};
  }

  // What the kernel would report back for the object (Options::wire).
  dp::Link wireLink(const dp::Link& l) const {
    if (!o_.wire) return l;
    auto m = nl::encodeLink(l, nl::Op::Add);
    auto p = nl::parseLink(reinterpret_cast<const nlmsghdr*>(m.data()));
    return p ? *p : l;
  }
  dp::Nexthop wireNexthop(const dp::Nexthop& n, uint32_t oif) const {
    if (!o_.wire) return n;
    auto m = nl::encodeNexthop(n, oif, nl::Op::Add, nl::Tags{o_.protocol});
    auto p = nl::parseNexthop(reinterpret_cast<const nlmsghdr*>(m.data()));
    if (!p) return n;
    p->nh.dev = nameOf(p->oif);
    return p->nh;
  }
  dp::Route wireRoute(const dp::Route& r, uint32_t oif) const {
    if (!o_.wire) return r;
    auto m = nl::encodeRoute(r, oif, nl::Op::Add, nl::Tags{o_.protocol});
    auto p = nl::parseRoute(reinterpret_cast<const nlmsghdr*>(m.data()));
    if (!p) return r;
    if (!p->route.nhid && p->oif) p->route.dev = nameOf(p->oif);
    return p->route;
  }
  dp::Rule wireRule(const dp::Rule& r) const {
    if (!o_.wire) return r;
    auto m = nl::encodeRule(r, nl::Op::Add, nl::Tags{o_.protocol});
    auto p = nl::parseRule(reinterpret_cast<const nlmsghdr*>(m.data()));
    return p ? p->rule : r;
  }
  dp::Address wireAddress(const dp::Address& a, uint32_t ifindex) const {
    if (!o_.wire) return a;
    auto m = nl::encodeAddress(a, ifindex, nl::Op::Add, nl::Tags{o_.protocol});
    auto p = nl::parseAddress(reinterpret_cast<const nlmsghdr*>(m.data()));
    if (!p) return a;
    p->addr.dev = nameOf(p->ifindex);
    return p->addr;
  }

  void removeNexthop(uint32_t id) {
    std::erase_if(routes_, [&](auto& e) { return e.r.nhid == id; });
    std::erase_if(nhs_, [&](auto& e) { return e.n.id == id; });
  }
  void removeLink(const std::string& name) {
    std::vector<uint32_t> ids;
    for (auto& e : nhs_)
      if (e.n.dev == name) ids.push_back(e.n.id);
    for (auto id : ids) removeNexthop(id);
    std::erase_if(routes_, [&](auto& e) { return !e.r.nhid && e.r.dev == name; });
    std::erase_if(addrs_, [&](auto& e) { return e.a.dev == name; });
    std::erase_if(links_, [&](auto& l) { return l.name == name; });
  }

  std::optional<std::string> applyOne(const dp::Change& c) {
    using A = dp::Change::Action;
    const A act = c.action;
    if (auto* l = std::get_if<dp::Link>(&c.object)) {
      bool exists = ifindexOf(l->name).has_value();
      if (act == A::Delete) {
        if (!exists) return "No such device";
        removeLink(l->name);
        return std::nullopt;
      }
      if (exists && act == A::Add) return "File exists";
      if (exists) removeLink(l->name);  // NetlinkClientImpl recreates on Replace
      seedLink(wireLink(*l));
      return std::nullopt;
    }
    if (auto* m = std::get_if<dp::LinkMtu>(&c.object)) {
      // In place: the ifindex and everything using the link stay.
      auto it = std::find_if(links_.begin(), links_.end(), [&](auto& l) { return l.name == m->name; });
      if (it == links_.end()) return "No such device";
      it->mtu = m->mtu;
      return std::nullopt;
    }
    if (auto* n = std::get_if<dp::Nexthop>(&c.object)) {
      auto it = std::find_if(nhs_.begin(), nhs_.end(), [&](auto& e) { return e.n.id == n->id; });
      if (act == A::Delete) {
        if (it == nhs_.end()) return "No such file or directory";
        removeNexthop(n->id);
        return std::nullopt;
      }
      auto oif = ifindexOf(n->dev);
      if (!oif) return fmt::format("device {:?} does not exist", n->dev);
      if (it != nhs_.end() && act == A::Add) return "File exists";
      NexthopEntry e{wireNexthop(*n, *oif), o_.protocol};
      if (it != nhs_.end()) *it = e;
      else nhs_.push_back(e);
      return std::nullopt;
    }
    if (auto* r = std::get_if<dp::Route>(&c.object)) {
      auto it = std::find_if(routes_.begin(), routes_.end(),
                             [&](auto& e) { return e.r.key == r->key; });
      if (act == A::Delete) {
        if (it == routes_.end() || it->protocol != o_.protocol) return "No such process";
        routes_.erase(it);
        return std::nullopt;
      }
      uint32_t oif = 0;
      if (r->nhid) {
        if (std::none_of(nhs_.begin(), nhs_.end(), [&](auto& e) { return e.n.id == r->nhid; }))
          return "Nexthop id does not exist";
      } else if (!r->dev.empty()) {
        auto i = ifindexOf(r->dev);
        if (!i) return fmt::format("device {:?} does not exist", r->dev);
        oif = *i;
      }
      if (it != routes_.end() && act == A::Add) return "File exists";
      RouteEntry e{wireRoute(*r, oif), o_.protocol};
      if (it != routes_.end()) *it = e;
      else routes_.push_back(e);
      return std::nullopt;
    }
    if (auto* ru = std::get_if<dp::Rule>(&c.object)) {
      auto it = std::find_if(rules_.begin(), rules_.end(), [&](auto& e) { return e.r == *ru; });
      if (act == A::Delete) {
        if (it == rules_.end() || it->protocol != o_.protocol) return "No such file or directory";
        rules_.erase(it);
        return std::nullopt;
      }
      if (it != rules_.end()) return act == A::Add ? std::optional<std::string>("File exists")
                                                   : std::nullopt;
      rules_.push_back({wireRule(*ru), o_.protocol});
      return std::nullopt;
    }
    if (auto* a = std::get_if<dp::Address>(&c.object)) {
      auto i = ifindexOf(a->dev);
      if (!i) return fmt::format("device {:?} does not exist", a->dev);
      auto it = std::find_if(addrs_.begin(), addrs_.end(), [&](auto& e) { return e.a == *a; });
      if (act == A::Delete) {
        if (it == addrs_.end()) return "Cannot assign requested address";
        addrs_.erase(it);
        return std::nullopt;
      }
      if (it != addrs_.end()) return act == A::Add ? std::optional<std::string>("File exists")
                                                   : std::nullopt;
      addrs_.push_back({wireAddress(*a, *i), o_.protocol});
      return std::nullopt;
    }
    if (auto* p = std::get_if<dp::MplsPop>(&c.object)) {
      if (!ifindexOf(p->dev)) return fmt::format("device {:?} does not exist", p->dev);
      auto it = std::find(pops_.begin(), pops_.end(), *p);
      if (act == A::Delete) {
        if (it == pops_.end()) return "No such process";
        pops_.erase(it);
        return std::nullopt;
      }
      if (it != pops_.end()) return act == A::Add ? std::optional<std::string>("File exists")
                                                  : std::nullopt;
      pops_.push_back(*p);
      return std::nullopt;
    }
    return "unknown object";
  }

  Options o_;
  uint32_t nextIfindex_ = 1;
  std::vector<dp::Link> links_;
  std::vector<AddressEntry> addrs_;
  std::vector<NexthopEntry> nhs_;
  std::vector<RouteEntry> routes_;
  std::vector<RuleEntry> rules_;
  std::vector<dp::MplsPop> pops_;
  std::vector<std::pair<std::function<bool(const dp::Change&)>, int>> failRules_;
  Counted counts_;
  std::vector<dp::Change> log_;
};

/** The router's nftables table, driven by the scripts desired/nft_render.cpp renders. */
class FakeNft : public dp::NftClient {
 public:
  explicit FakeNft(std::string table = "kube_service_tunnel") : table_(std::move(table)) {}

  Result<dp::NftState> observe() override {
    ++observes;
    if (failObserve) return fail(EIO, "fake nft: listing failed");
    dp::NftState s = state_;
    s.skeleton.clear();  // a listing only yields the id kept in the comment
    // As the real observer: a VIP is present when it is in its VIP set and its refused set.
    std::erase_if(s.vips, [&](const IpAddress& v) { return !refused_.contains(v); });
    return s;
  }

  /** linksChanged() calls (the reconciler created, recreated or resized links). */
  size_t linkRefreshes = 0;
  Status linksChanged() override {
    ++linkRefreshes;
    return {};
  }

  /** Every element counter of the table at zero (the fake forwards no packet), or `counters`
   *  when a test set it. */
  Result<dp::NftCounterSnapshot> readCounters() override {
    if (counters) return *counters;
    dp::NftCounterSnapshot snap;
    if (!state_.present) return snap;
    for (auto& v : state_.vips) snap.vip[v];
    for (auto& v : refused_) snap.refusedByVip[v];
    for (auto& [vip, eps] : state_.endpoints)
      for (auto& [mark, ep] : eps) snap.endpoint[{vip, ep}];
    snap.refused["no_bucket"];
    snap.refused["source_range"];
    return snap;
  }
  std::optional<dp::NftCounterSnapshot> counters;

  Status run(const std::string& script) override {
    scripts.push_back(script);
    if (failRuns) return fail(EINVAL, "fake nft: injected failure");
    dp::NftState next = state_;
    std::set<IpAddress> refusedNext = refused_;
    std::istringstream in(script);
    std::string line;
    const std::string prefix = "inet " + table_;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      if (line == "delete table " + prefix) {
        if (!next.present) return fail(ENOENT, "fake nft: no such table");
        next = dp::NftState{};
        refusedNext.clear();
        continue;
      }
      if (line == "table " + prefix + " {") {
        next.present = true;
        std::string body, l;
        bool first = true;
        while (std::getline(in, l) && l != "}") {
          if (first) {
            first = false;
            const std::string c = "  comment \"kst:";
            if (!l.starts_with(c) || !l.ends_with("\""))
              return fail(EINVAL, "fake nft: table without kst comment: " + l);
            next.skeletonId = l.substr(c.size(), l.size() - c.size() - 1);
            continue;
          }
          body += l + "\n";
        }
        if (l != "}") return fail(EINVAL, "fake nft: unterminated table");
        next.skeleton = body;
        continue;
      }
      if (auto s = element(line, next, refusedNext); !s) return s;
    }
    state_ = std::move(next);
    refused_ = std::move(refusedNext);
    ++applied;
    if (journal) journal->push_back("nft: " + script);
    return {};
  }

  /** As NftClientImpl: the step rendered as nft text and run(). */
  Status applyStep(dp::TableStep step, const std::string& skeletonId, const std::string& skeleton,
                   const dp::NftElementChanges& elements) override {
    DataplaneConfig cfg;
    cfg.nftTable = table_;
    std::string script = renderNftStep(cfg, step, skeletonId, skeleton, elements);
    if (script.empty()) return {};
    return run(script);
  }

  /** See the header comment: the encoded batch, decoded and applied as one transaction.
   *  Successful batches are recorded in `batches` (and the journal) as nft statements. */
  Status applyElements(const dp::NftElementChanges& ch) override {
    if (ch.size() == 0) return {};
    if (failRuns) return fail(EINVAL, "fake nft: injected failure");
    std::vector<uint32_t> acked;
    const nft::Bytes bytes = nft::encodeElementChanges(table_, ch, seq_, acked);
    auto batch = nft::decodeBatch(bytes);
    if (!batch) return std::unexpected(batch.error());
    if (batch->messages.size() != acked.size())
      return fail(EINVAL, "fake nft: batch messages and acked sequence numbers differ");
    if (!state_.present) return fail(ENOENT, "fake nft: no such table");
    dp::NftState next = state_;
    std::set<IpAddress> refusedBefore = refused_;
    std::string text;
    for (const auto& m : batch->messages) {
      if (auto s = elementMessage(m, next, text); !s) {
        refused_ = std::move(refusedBefore);
        return s;
      }
    }
    state_ = std::move(next);
    ++applied;
    batches.push_back(text);
    if (journal) journal->push_back("nft: " + text);
    return {};
  }

  const dp::NftState& state() const { return state_; }
  dp::NftState& mutableState() { return state_; }

  std::vector<std::string> scripts;
  /** Every successful applyElements() batch, decoded, as nft statements (one per message). */
  std::vector<std::string> batches;
  /** See FakeKernel::journal; successful scripts are appended as "nft: <script>". */
  std::vector<std::string>* journal = nullptr;
  uint64_t observes = 0, applied = 0;
  bool failRuns = false, failObserve = false;

 private:
  static std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    size_t pos = 0;
    while (true) {
      auto n = s.find(", ", pos);
      out.push_back(s.substr(pos, n == std::string::npos ? n : n - pos));
      if (n == std::string::npos) return out;
      pos = n + 2;
    }
  }

  Status element(const std::string& line, dp::NftState& st, std::set<IpAddress>& refused) {
    std::istringstream ls(line);
    std::string verb, what, fam, table, set, brace;
    ls >> verb >> what >> fam >> table >> set >> brace;
    if ((verb != "add" && verb != "delete") || what != "element" || fam != "inet" ||
        table != table_ || brace != "{" || !line.ends_with(" }"))
      return fail(EINVAL, "fake nft: unsupported statement: " + line);
    if (!st.present) return fail(ENOENT, "fake nft: no such table: " + line);
    auto open = line.find("{ ");
    auto items = split(line.substr(open + 2, line.size() - open - 4));
    const bool add = verb == "add";
    for (auto& item : items) {
      const bool v4set = set.ends_with("4");
      if (set == "vip4" || set == "vip6" || set == "refused4" || set == "refused6" ||
          set == "ranged4" || set == "ranged6") {
        auto ip = IpAddress::parse(item);
        if (!ip || ip->isV4() != v4set) return fail(EINVAL, "fake nft: bad element " + item);
        if (auto s = plainElement(set, add, *ip, st, refused); !s) return s;
      } else if (set == "ep4" || set == "ep6") {
        auto dot = item.find(" . ");
        auto ip = IpAddress::parse(item.substr(0, dot));
        if (dot == std::string::npos || !ip || ip->isV4() != v4set)
          return fail(EINVAL, "fake nft: bad element " + item);
        auto rest = item.substr(dot + 3);
        auto sp = rest.find(' ');
        uint32_t mark = static_cast<uint32_t>(std::stoul(rest.substr(0, sp), nullptr, 0));
        std::optional<IpAddress> ep;
        if (add) {
          const std::string c = " comment \"";
          if (sp == std::string::npos || !rest.substr(sp).starts_with(c) || !rest.ends_with("\""))
            return fail(EINVAL, "fake nft: endpoint counter without comment " + item);
          ep = IpAddress::parse(rest.substr(sp + c.size(), rest.size() - sp - c.size() - 1));
          if (!ep) return fail(EINVAL, "fake nft: bad comment " + item);
        }
        if (auto s = endpointElement(add, *ip, mark, ep, st); !s) return s;
      } else if (set == "src4" || set == "src6") {
        auto dot = item.find(" . ");
        auto dash = item.find('-', dot == std::string::npos ? 0 : dot);
        auto ip = IpAddress::parse(item.substr(0, dot));
        if (dot == std::string::npos || dash == std::string::npos || !ip || ip->isV4() != v4set)
          return fail(EINVAL, "fake nft: bad element " + item);
        auto a = IpAddress::parse(item.substr(dot + 3, dash - dot - 3));
        auto b = IpAddress::parse(item.substr(dash + 1));
        if (!a || !b) return fail(EINVAL, "fake nft: bad interval " + item);
        if (auto s = sourceElement(add, *ip, {*a, *b}, st); !s) return s;
      } else if (set == "bcount4" || set == "bcount6") {
        auto colon = item.find(" : ");
        if (add != (colon != std::string::npos)) return fail(EINVAL, "fake nft: bad element " + item);
        auto ip = IpAddress::parse(item.substr(0, colon));
        if (!ip || ip->isV4() != (set == "bcount4")) return fail(EINVAL, "fake nft: bad key " + item);
        if (add) {
          uint32_t value = static_cast<uint32_t>(std::stoul(item.substr(colon + 3), nullptr, 0));
          if (!(value & kCountMarkBase)) return fail(EINVAL, "fake nft: bad count " + item);
          auto [it, added] = st.vipBuckets.emplace(*ip, value & ~kCountMarkBase);
          if (!added && it->second != (value & ~kCountMarkBase))
            return fail(EBUSY, "fake nft: element exists with another value: " + item);
        } else if (!st.vipBuckets.erase(*ip)) {
          return fail(ENOENT, "fake nft: no such element " + item);
        }
      } else if (set == "live4" || set == "live6") {
        auto dot = item.find(" . ");
        auto ip = dot == std::string::npos ? std::nullopt : IpAddress::parse(item.substr(0, dot));
        if (!ip || ip->isV4() != (set == "live4")) return fail(EINVAL, "fake nft: bad key " + item);
        dp::SlotMark l{*ip, static_cast<uint32_t>(std::stoul(item.substr(dot + 3), nullptr, 0))};
        if (add) st.live.insert(l);  // (nft's add ignores an existing element)
        else if (!st.live.erase(l)) return fail(ENOENT, "fake nft: no such element " + item);
      } else if (set == "b2s4" || set == "b2s6") {
        auto dot = item.find(" . ");
        auto colon = item.find(" : ");
        if (dot == std::string::npos || (add != (colon != std::string::npos)))
          return fail(EINVAL, "fake nft: bad element " + item);
        auto ip = IpAddress::parse(item.substr(0, dot));
        if (!ip || ip->isV4() != (set == "b2s4")) return fail(EINVAL, "fake nft: bad key " + item);
        uint32_t mark = static_cast<uint32_t>(std::stoul(item.substr(dot + 3), nullptr, 0));
        if (mark < kBucketMarkBase) return fail(EINVAL, "fake nft: bad bucket mark " + item);
        std::pair<IpAddress, uint32_t> key{*ip, mark - kBucketMarkBase};
        if (add) {
          uint32_t value = static_cast<uint32_t>(std::stoul(item.substr(colon + 3), nullptr, 0));
          // As the real observer reports it (dp::BucketMap holds 0 as "no element").
          if (value == 0) value = dp::BucketMap::kForeignZeroMark;
          if (key.second >= dp::BucketMap::kMaxBuckets)
            return fail(EINVAL, "fake nft: bucket outside the modelled range: " + item);
          auto have = st.buckets.find(key);
          if (!have) st.buckets.set(key.first, key.second, value);
          else if (*have != value)
            return fail(EBUSY, "fake nft: element exists with another value: " + item);
        } else if (!st.buckets.erase(key)) {
          return fail(ENOENT, "fake nft: no such element " + item);
        }
      } else {
        return fail(EINVAL, "fake nft: unknown set " + set);
      }
    }
    return {};
  }

  /** One decoded element message applied to st with the kernel's checks; appends it to text
   *  as the nft statement it stands for. */
  Status elementMessage(const nft::DecodedBatch::Message& m, dp::NftState& st, std::string& text) {
    const auto& l = m.list;
    const bool add = l.type == NFT_MSG_NEWSETELEM;
    if (l.family != NFPROTO_INET || l.table != table_)
      return fail(ENOENT, fmt::format("fake nft: no such table {}", l.table));
    const nft::SetShape* shape = nft::setShape(l.set);
    const std::string set(l.set);
    const bool vipSet = set == "vip4" || set == "vip6" || set == "refused4" ||
                        set == "refused6" || set == "ranged4" || set == "ranged6";
    const bool epSet = set == "ep4" || set == "ep6", srcSet = set == "src4" || set == "src6";
    const bool countMap = set == "bcount4" || set == "bcount6";
    const bool liveSet = set == "live4" || set == "live6";
    if (!shape || (!vipSet && !epSet && !srcSet && !countMap && !liveSet && l.set != "b2s4" && l.set != "b2s6"))
      return fail(ENOENT, fmt::format("fake nft: no such set {}", l.set));
    if (add != ((l.flags & NLM_F_CREATE) != 0) || !(l.flags & NLM_F_ACK))
      return fail(EINVAL, fmt::format("fake nft: unexpected flags {:#x}", l.flags));
    std::vector<std::string> items;
    for (const auto& e : m.elements) {
      if (e.key.size() != shape->keyLen || e.data.size() != (add ? shape->dataLen : 0))
        return fail(EINVAL, fmt::format("fake nft: element of {} with key/data length {}/{}",
                                        l.set, e.key.size(), e.data.size()));
      if (vipSet) {
        IpAddress ip = *nft::vipElement(e);
        items.push_back(ip.str());
        if (auto s = plainElement(set, add, ip, st, refused_); !s) return s;
        continue;
      }
      if (epSet) {
        uint32_t mark;
        std::memcpy(&mark, e.key.data() + e.key.size() - 4, 4);
        IpAddress ip = IpAddress::fromBytes(epSet && e.key.size() == 8 ? Family::V4 : Family::V6,
                                            e.key.data());
        std::optional<IpAddress> ep;
        std::string item = fmt::format("{} . {:#x}", ip.str(), mark);
        if (add) {
          auto parsed = nft::endpointElement(e);
          if (!parsed) return fail(EINVAL, "fake nft: endpoint counter without comment " + item);
          ep = parsed->endpoint;
          item += fmt::format(" comment \"{}\"", ep->str());
        }
        if (auto s = endpointElement(add, ip, mark, ep, st); !s) return s;
        items.push_back(std::move(item));
        continue;
      }
      if (srcSet) {
        auto r = nft::sourceElement(e);
        if (!r) return fail(EINVAL, "fake nft: source interval without key end in " + set);
        if (auto s = sourceElement(add, r->first, r->second, st); !s) return s;
        items.push_back(fmt::format("{} . {}-{}", r->first.str(), r->second.first.str(),
                                    r->second.last.str()));
        continue;
      }
      if (countMap) {
        IpAddress ip = *nft::vipElement(e);
        std::string item = ip.str();
        if (add) {
          uint32_t value;
          std::memcpy(&value, e.data.data(), 4);
          item += fmt::format(" : {:#x}", value);
          auto [it, added] = st.vipBuckets.emplace(ip, value & ~kCountMarkBase);
          if (!added && it->second != (value & ~kCountMarkBase))
            return fail(EBUSY, "fake nft: element exists with another value: " + item);
        } else if (!st.vipBuckets.erase(ip)) {
          return fail(ENOENT, "fake nft: no such element " + item);
        }
        items.push_back(std::move(item));
        continue;
      }
      if (liveSet) {
        dp::SlotMark sm = *nft::liveElement(e);
        std::string item = fmt::format("{} . {:#x}", sm.vip.str(), sm.mark);
        // The kernel ignores an existing element on NEWSETELEM without NLM_F_EXCL.
        if (add) st.live.insert(sm);
        else if (!st.live.erase(sm)) return fail(ENOENT, "fake nft: no such element " + item);
        items.push_back(std::move(item));
        continue;
      }
      uint32_t keyMark;
      std::memcpy(&keyMark, e.key.data() + e.key.size() - 4, 4);
      IpAddress ip = IpAddress::fromBytes(e.key.size() == 8 ? Family::V4 : Family::V6, e.key.data());
      std::string item = fmt::format("{} . {:#x}", ip.str(), keyMark);
      if (keyMark < kBucketMarkBase || keyMark - kBucketMarkBase >= dp::BucketMap::kMaxBuckets)
        return fail(EINVAL, "fake nft: bucket outside the modelled range: " + item);
      const uint32_t bucket = keyMark - kBucketMarkBase;
      if (add) {
        uint32_t value;
        std::memcpy(&value, e.data.data(), 4);
        item += fmt::format(" : {}", value);
        if (value == 0) value = dp::BucketMap::kForeignZeroMark;  // as the observer reports it
        auto have = st.buckets.find({ip, bucket});
        if (!have) st.buckets.set(ip, bucket, value);
        else if (*have != value)
          return fail(EBUSY, "fake nft: element exists with another value: " + item);
      } else if (!st.buckets.erase({ip, bucket})) {
        return fail(ENOENT, "fake nft: no such element " + item);
      }
      items.push_back(std::move(item));
    }
    text += fmt::format("{} element inet {} {} {{ {} }}\n", add ? "add" : "delete", table_, l.set,
                        fmt::join(items, ", "));
    return {};
  }

  /** vip, refused and ranged sets (element without data). */
  static Status plainElement(const std::string& set, bool add, const IpAddress& ip,
                             dp::NftState& st, std::set<IpAddress>& refused) {
    if (set.starts_with("vip")) {
      if (add) st.vips.insert(ip);
      else if (!st.vips.erase(ip)) return fail(ENOENT, "fake nft: no such element " + ip.str());
    } else if (set.starts_with("refused")) {
      if (add) refused.insert(ip);
      else if (!refused.erase(ip)) return fail(ENOENT, "fake nft: no such element " + ip.str());
    } else if (add) {
      st.sourceRanges[ip];
    } else if (!st.sourceRanges.contains(ip)) {
      return fail(ENOENT, "fake nft: no such element " + ip.str());
    } else if (!st.sourceRanges[ip].empty()) {
      // The fake keeps the intervals under their filtered VIP: the daemon deletes intervals
      // before (never after) the VIP's ranged element only when none is left.
      return fail(EINVAL, "fake nft: ranged element deleted before its intervals " + ip.str());
    } else {
      st.sourceRanges.erase(ip);
    }
    return {};
  }
  /** ep4/ep6: adding an existing key keeps its comment (as the kernel: no NLM_F_EXCL). */
  static Status endpointElement(bool add, const IpAddress& vip, uint32_t mark,
                                const std::optional<IpAddress>& ep, dp::NftState& st) {
    auto& m = st.endpoints[vip];
    if (add) {
      m.emplace(mark, *ep);
    } else if (!m.erase(mark)) {
      if (m.empty()) st.endpoints.erase(vip);
      return fail(ENOENT, fmt::format("fake nft: no such element {} . {:#x}", vip.str(), mark));
    }
    if (m.empty()) st.endpoints.erase(vip);
    return {};
  }
  /** src4/src6, kept under the VIP's ranged element (which must exist). */
  static Status sourceElement(bool add, const IpAddress& vip, const dp::SourceInterval& iv,
                              dp::NftState& st) {
    auto it = st.sourceRanges.find(vip);
    if (add) {
      if (it == st.sourceRanges.end())
        return fail(EINVAL, "fake nft: source interval of a VIP not (yet) in ranged " + vip.str());
      auto& l = it->second;
      if (std::find(l.begin(), l.end(), iv) == l.end())
        l.insert(std::upper_bound(l.begin(), l.end(), iv), iv);
      return {};
    }
    if (it == st.sourceRanges.end() || !std::erase(it->second, iv))
      return fail(ENOENT, "fake nft: no such source interval of " + vip.str());
    return {};
  }

  std::string table_;
  dp::NftState state_;
  std::set<IpAddress> refused_;
  uint32_t seq_ = 0;
};

}  // namespace kst::fake
