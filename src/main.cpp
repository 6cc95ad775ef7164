// kube-service-tunnel: makes externally routable VIPs arrive as normal IP packets in pods.
// main() only parses flags and wires real implementations together (Envoy's source/exe rule).
#include <pthread.h>

#include <csignal>
#include <cstdlib>
#include <expected>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "daemon/daemon.h"
#include "daemon/drain.h"
#include "daemon/health.h"
#include "desired/nft_render.h"
#include "linux/netlink_client.h"
#include "linux/netns.h"
#include "linux/netns_provider.h"
#include "linux/bpf_classifier.h"
#include "linux/nft_client.h"
#include "linux/nft_inspect.h"
#include "linux/route_lookup.h"
#include "k8s/event_sink.h"
#include "k8s/publisher.h"
#include "k8s/kube_source.h"
#include "k8s/lb_status.h"
#include "model/vip_policy.h"
#include "reconcile/inspect.h"
#include "k8s/pod_gate.h"
#include "source/manifest_source.h"

namespace {

// SIGTERM/SIGINT are blocked in every thread (set before any thread starts) and taken by
// sigwait() on a dedicated thread, which may then lock mutexes: a signal handler may not.
sigset_t stopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

struct Flags {
  std::string nodeName;
  std::string role = "both";
  std::string mode = "vxlan-gpe";
  std::string manifests;
  std::string kubeconfig;
  std::string kubeContext;
  int healthPort = 0;
  size_t apiMaxResponseMiB = kst::k8s::HttpRequest::kDefaultMaxBody >> 20;
  bool publish = true;
  std::string leaseNamespace = "kube-service-tunnel";
  std::string healthAddress = "0.0.0.0";
  std::string annotation = "cmd.nu/tunnel";
  std::vector<std::string> netnsDirs{"/run/netns", "/var/run/netns"};
  bool scanProc = true;
  int resyncSeconds = 60;
  double verifySeconds = 2;
  bool readinessGate = true;
  std::string logLevel = "info";
  std::string algorithm = "rendezvous";
  bool once = false;
  uint32_t announceTable = 0;
  std::string stateDir = "/var/lib/kube-service-tunnel";
  double drainHold = 2, drainTimeout = 60;
  std::vector<std::string> vipPools, clusterRanges;  // as given; parsed into policy
  kst::VipPolicy policy;
  kst::DataplaneConfig dp;
  std::string datapath = "nft";  // the router's classifier: nft or bpf
  std::string podDecap = "device";  // the agent's pod-side decapsulation: device or bpf
  kst::BpfOptions bpf;
  std::string drainFile() const { return stateDir + "/drained"; }
};

void addCommon(CLI::App* app, Flags& f) {
  app->add_option("--node-name", f.nodeName, "This node's name (matches EndpointSlice nodeName)")
      ->envname("NODE_NAME");
  app->add_option("--role", f.role, "router (tunnel node), agent (pod side) or both")
      ->envname("TUNNEL_ROLE")
      ->check(CLI::IsMember({"router", "agent", "both"}));
  app->add_option("--mode", f.mode, "Encapsulation: " + kst::modeHelp())
      ->envname("TUNNEL_ROUTER_MODE");
  app->add_option("--buckets", f.dp.buckets, "Minimum hash buckets per VIP: a VIP with n endpoints gets this times 2^k >= 2n, "
                  "at most max(this, 4096)")
      ->envname("TUNNEL_ROUTER_BUCKETS")
      ->check(CLI::Range(1u, 1u << 20));
  app->add_option("--bucket-algorithm", f.algorithm,
                  "Bucket to endpoint assignment: rendezvous (balanced, derived from the published "
                  "table: only a leaving endpoint's buckets move) or maglev (even spread, a few "
                  "extra moves)")
      ->envname("TUNNEL_BUCKET_ALGORITHM")
      ->check(CLI::IsMember({"rendezvous", "maglev"}));
  app->add_option("--hash-seed", f.dp.hashSeed,
                  "jhash seed; must be identical on every router for hitless failover")
      ->envname("TUNNEL_HASH_SEED");
  app->add_option("--manifests", f.manifests,
                  "Directory of Kubernetes YAML manifests (Services, EndpointSlices) to follow")
      ->envname("TUNNEL_MANIFESTS");
  app->add_option("--annotation", f.annotation, "Service annotation holding the VIP")
      ->envname("TUNNEL_ROUTER_TUNNEL_ANNOTATION");
  app->add_option("--table-offset", f.dp.tableOffset,
                  "First routing table id and fwmark owned (slot s uses offset+s)")
      ->envname("TUNNEL_ROUTER_TABLE_OFFSET")
      ->check(CLI::Range(1u, 0x3fff0000u));
  app->add_option("--max-slots", f.dp.maxSlots, "Tables/rules owned: max endpoints per VIP")
      ->envname("TUNNEL_MAX_SLOTS");
  app->add_option("--rule-priority", f.dp.rulePriority, "Priority of the first owned ip rule")
      ->envname("TUNNEL_RULE_PRIORITY");
  app->add_option("--route-protocol", f.dp.routeProtocol,
                  "rtnetlink protocol number tagging owned routes, rules, nexthops, addresses")
      ->envname("TUNNEL_ROUTE_PROTOCOL");
  app->add_option("--link-prefix", f.dp.linkPrefix, "Name prefix of owned interfaces")
      ->envname("TUNNEL_LINK_PREFIX");
  app->add_option("--nft-table", f.dp.nftTable, "Name of the owned nftables table (inet family)")
      ->envname("TUNNEL_NFT_TABLE");
  app->add_option("--datapath", f.datapath,
                  "Router classifier: nft (the nftables table) or bpf (a tc program on the "
                  "--bpf-ingress interfaces, the same decisions; docs/bpf-datapath.md)")
      ->envname("TUNNEL_DATAPATH")
      ->check(CLI::IsMember({"nft", "bpf"}));
  app->add_option("--pod-decap", f.podDecap,
                  "Agent: how tunnel packets to a pod's VIPs are decapsulated: device (the "
                  "pod's tunnel device) or bpf (also a tc program on the pod's interface, the "
                  "device staying the fallback; docs/bpf-datapath.md \"Pod side\")")
      ->envname("TUNNEL_POD_DECAP")
      ->check(CLI::IsMember({"device", "bpf"}));
  app->add_option("--bpf-ingress", f.bpf.ingress,
                  "bpf datapath: an interface whose ingress runs the program (repeatable; "
                  "default: every interface but lo and the daemon's own links)")
      ->envname("TUNNEL_BPF_INGRESS")
      ->delimiter(',');
  app->add_option("--bpf-encap", f.bpf.encap,
                  "bpf datapath, flow modes: headers (the program writes the outer headers and "
                  "forwards), device (redirect to the collect-md device: vxlan-gpe, ipip) or mark "
                  "(set the slot mark, the policy rules route)")
      ->envname("TUNNEL_BPF_ENCAP")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, kst::BpfEncap>{{"headers", kst::BpfEncap::Headers},
                                          {"device", kst::BpfEncap::Device},
                                          {"mark", kst::BpfEncap::Mark}},
          CLI::ignore_case));
  app->add_option_function<bool>(
         "--bpf-redirect",
         [&f](const bool& v) { f.bpf.encap = v ? kst::BpfEncap::Device : kst::BpfEncap::Mark; },
         "bpf datapath: the older spelling of --bpf-encap device (true) / mark (false)")
      ->envname("TUNNEL_BPF_REDIRECT");
  app->add_option("--bpf-pin-dir", f.bpf.pinDir,
                  "bpf datapath: bpffs directory of the program and its maps (bpffs is mounted "
                  "at /sys/fs/bpf when absent)")
      ->envname("TUNNEL_BPF_PIN_DIR");
  app->add_option("--vxlan-port", f.dp.vxlanPort, "UDP port of vxlan-gpe")->envname("TUNNEL_VXLAN_PORT");
  app->add_option("--flow-timeout", f.dp.flowTimeoutSeconds,
                  "Seconds an idle flow stays pinned to its endpoint (draining, failover)")
      ->envname("TUNNEL_FLOW_TIMEOUT");
  app->add_option("--flow-table-size", f.dp.flowTableSize,
                  "Most flows pinned at once per family (flow4/flow6 map size); kernel memory "
                  "≈ 130 bytes per pinned flow (docs/load-balancing.md)")
      ->envname("TUNNEL_FLOW_TABLE_SIZE")
      ->check(CLI::Range(1024u, 1u << 26));
  app->add_option("--mpls-label", f.dp.mplsLabel, "MPLS label popped in pods")->envname("TUNNEL_MPLS_LABEL");
  app->add_option("--underlay-mtu", f.dp.underlayMtu,
                  "MTU between routers and pods (same on routers and agents): the router sets "
                  "its tunnel devices' MTU to it minus the encapsulation, the agent clamps the "
                  "MSS of TCP SYNs from VIPs to that minus the TCP/IP headers (0: kernel default "
                  "device MTU, no clamping)")
      ->envname("TUNNEL_UNDERLAY_MTU")
      ->check(CLI::IsMember({0u}) | CLI::Range(576u, 65535u));
  app->add_option("--netns-dir", f.netnsDirs, "Directories of namespace bind mounts to scan")
      ->envname("TUNNEL_NETNS_DIRS");
  app->add_option("--scan-proc", f.scanProc, "Also scan /proc/<pid>/ns/net (needs hostPID)")
      ->envname("TUNNEL_SCAN_PROC");
  app->add_option("--announce-table", f.announceTable,
                  "Router: routing table holding one route per VIP this node is fit to serve, "
                  "exported to the DC routers by bird2 (docs/announce.md; 0 = off)")
      ->envname("TUNNEL_ANNOUNCE_TABLE")
      ->check(CLI::Range(0u, 0xfffffffeu));
  app->add_option("--state-dir", f.stateDir,
                  "Directory of state that survives restarts (the drained marker of `drain`)")
      ->envname("TUNNEL_STATE_DIR");
  app->add_option("--log-level", f.logLevel, "trace|debug|info|warn|error")->envname("TUNNEL_LOG_LEVEL");
}

/** Flags → DataplaneConfig and log level; false (after logging why) on a bad value. */
bool buildConfig(Flags& f) {
  spdlog::set_level(spdlog::level::from_str(f.logLevel));
  f.dp.podDecapBpf = f.podDecap == "bpf";
  f.dp.algorithm = f.algorithm == "maglev" ? kst::BucketAlgorithm::Maglev
                                            : kst::BucketAlgorithm::Rendezvous;
  if (!kst::parseMode(f.mode, f.dp.mode)) {
    spdlog::error("unknown --mode {:?}", f.mode);
    return false;
  }
  uint32_t t = f.announceTable;
  if (t != 0 && (t == 253 || t == 254 || t == 255 ||
                 (t >= f.dp.tableOffset && t < f.dp.tableOffset + f.dp.maxSlots))) {
    spdlog::error("--announce-table {} is a kernel table (253-255) or one of the slot tables "
                  "{}..{}", t, f.dp.tableOffset, f.dp.tableOffset + f.dp.maxSlots - 1);
    return false;
  }
  // Pools and ranges: each flag value, or the environment's list, may hold several separated
  // by white space (a ConfigMap value may span lines).
  auto joined = [](const std::vector<std::string>& v) {
    std::string all;
    for (const auto& s : v) all += s + " ";
    return all;
  };
  auto pools = kst::parseVipPools(joined(f.vipPools));
  if (!pools) {
    spdlog::error("--vip-pool / TUNNEL_VIP_POOLS: {}", pools.error().message);
    return false;
  }
  f.policy.pools = std::move(*pools);
  auto ranges = kst::parseVipPools(joined(f.clusterRanges));  // a CIDR list without '@'
  if (!ranges) {
    spdlog::error("--cluster-range / TUNNEL_CLUSTER_RANGES: {}", ranges.error().message);
    return false;
  }
  for (auto& r : *ranges) {
    if (!r.namespaces.empty()) {
      spdlog::error("--cluster-range {}: a cluster range has no namespaces", r.prefix.str());
      return false;
    }
    f.policy.clusterRanges.push_back(r.prefix);
  }
  return true;
}

void addRunFlags(CLI::App* run, Flags& f) {
  addCommon(run, f);
  run->add_option("--resync-interval", f.resyncSeconds, "Seconds between full resyncs")
      ->envname("TUNNEL_RESYNC_INTERVAL");
  run->add_option("--verify-interval", f.verifySeconds,
                  "Agent: seconds between re-reads of the pod namespaces (repairs, and confirms "
                  "the VIP readiness gate after a repair); 0: only at the resync")
      ->envname("TUNNEL_VERIFY_INTERVAL")
      ->check(CLI::Range(0.0, 3600.0));
  run->add_option("--readiness-gate", f.readinessGate,
                  "Agent: write the pod condition cmd.nu/vip-ready of endpoint pods that carry "
                  "it as a readiness gate (docs/readiness-gate.md)")
      ->envname("TUNNEL_READINESS_GATE");
  run->add_flag("--once", f.once, "One reconcile pass, then exit (0 = converged)");
  run->add_option("--kubeconfig", f.kubeconfig,
                  "Kubernetes API source: kubeconfig file(s), a:b as in $KUBECONFIG (without it "
                  "and without --manifests, the in-cluster ServiceAccount config is used)")
      ->envname("KUBECONFIG");
  run->add_option("--kube-context", f.kubeContext, "kubeconfig context (default: current-context)")
      ->envname("TUNNEL_KUBE_CONTEXT");
  run->add_option("--api-max-response-mib", f.apiMaxResponseMiB,
                  "Largest Kubernetes API list page or watch event accepted, in MiB (a list page "
                  "over it is fetched again in smaller pages; nothing larger is buffered)")
      ->envname("TUNNEL_API_MAX_RESPONSE_MIB")
      ->check(CLI::Range(size_t(1), size_t(4096)));
  run->add_option("--publish-decisions", f.publish,
                  "Router with the Kubernetes source: take part in the Lease election and, as the "
                  "elected writer, publish each Service's bucket table in a ConfigMap of "
                  "--namespace and write the address of our LoadBalancer Services' status")
      ->envname("TUNNEL_PUBLISH_DECISIONS");
  run->add_option("--namespace,--lease-namespace", f.leaseNamespace,
                  "The daemon's own namespace: the publisher Lease (kube-service-tunnel-publisher) "
                  "and the bucket table ConfigMaps (only the tunnel tier can write there)")
      ->envname("POD_NAMESPACE");
  run->add_option("--vip-pool", f.vipPools,
                  "Allowed VIP range CIDR[@namespace,…] (repeatable; the environment variable "
                  "holds them separated by spaces). Default-deny: a VIP outside every pool open "
                  "to its Service's namespace is refused; LoadBalancer Services of our class get "
                  "addresses from these pools")
      ->envname("TUNNEL_VIP_POOLS");
  run->add_option("--cluster-range", f.clusterRanges,
                  "The cluster's pod, Service and node ranges (CIDR, repeatable; the environment "
                  "variable holds them separated by spaces): never a VIP, whatever a pool says")
      ->envname("TUNNEL_CLUSTER_RANGES");
  run->add_option("--health-port", f.healthPort,
                  "Serve /healthz, /readyz and /metrics on this TCP port (0 = off)")
      ->envname("TUNNEL_HEALTH_PORT")
      ->check(CLI::Range(0, 65535));
  run->add_option("--health-address", f.healthAddress, "Address of the health endpoint")
      ->envname("TUNNEL_HEALTH_ADDRESS");
}

/** The kernel side of both roles: rtnetlink, nft, pod namespaces and the two reconcilers. */
struct Kernel {
  std::unique_ptr<kst::NetlinkClientImpl> nl;
  std::unique_ptr<kst::dp::NftClient> nft;  // --datapath: NftClientImpl or BpfClassifier
  // /metrics reads the router's counters from HTTP threads: a client (socket) of its own,
  // one scrape at a time, never the reconciler's.
  std::unique_ptr<kst::dp::NftClient> nftScrape;
  std::unique_ptr<std::mutex> nftScrapeLock = std::make_unique<std::mutex>();
  std::unique_ptr<kst::NetnsProviderImpl> netns;
  std::unique_ptr<kst::RouterReconciler> router;
  std::unique_ptr<kst::AgentReconciler> agent;
  std::unique_ptr<kst::AnnounceReconciler> announce;
};

kst::Result<Kernel> openKernel(const Flags& f) {
  auto sock = kst::nl::Socket::open();
  if (!sock) return std::unexpected(sock.error());
  kst::nl::Socket* rtSock = sock->get();  // owned by nl; MPLS route lookups share it
  Kernel k;
  k.nl = std::make_unique<kst::NetlinkClientImpl>(std::move(*sock), f.dp);
  if (f.datapath == "bpf") {
    k.nft = std::make_unique<kst::BpfClassifier>(f.dp, f.bpf);
    k.nftScrape = std::make_unique<kst::BpfClassifier>(f.dp, f.bpf);
  } else {
    k.nft = std::make_unique<kst::NftClientImpl>(f.dp);
    k.nftScrape = std::make_unique<kst::NftClientImpl>(f.dp);
  }
  k.netns = std::make_unique<kst::NetnsProviderImpl>(f.dp, f.netnsDirs, f.scanProc);
  k.router = std::make_unique<kst::RouterReconciler>(
      f.dp, *k.nl, *k.nft,
      [rtSock](const kst::IpAddress& ip) { return kst::directDevice(*rtSock, ip); });
  k.agent = std::make_unique<kst::AgentReconciler>(f.dp, f.nodeName, *k.netns);
  k.announce = std::make_unique<kst::AnnounceReconciler>(f.announceTable, *k.nl, f.drainFile());
  return k;
}

/** Removes the classifier of the datapath not chosen (left by a run with the other
 *  --datapath): an nft table would classify again what the program marked, a program would
 *  classify before the nft table. */
void removeOtherDatapath(const Flags& f) {
  std::unique_ptr<kst::dp::NftClient> other;
  kst::BpfOptions removeOnly = f.bpf;
  removeOnly.repair = false;
  if (f.datapath == "bpf") other = std::make_unique<kst::NftClientImpl>(f.dp);
  else other = std::make_unique<kst::BpfClassifier>(f.dp, removeOnly);
  auto st = other->observe();
  if (!st || !st->present) return;
  if (auto r = other->applyStep(kst::dp::TableStep::Delete, {}, {}, {}); !r)
    spdlog::warn("removing the {} classifier: {}", f.datapath == "bpf" ? "nft" : "bpf",
                 r.error().message);
  else
    spdlog::info("removed the {} classifier (--datapath {})",
                 f.datapath == "bpf" ? "nft" : "bpf", f.datapath);
}

/** `mount-bpffs`, the router pod's init container (deploy/20-router.yaml): with --datapath bpf,
 *  bpffs at /sys/fs/bpf when nothing is mounted there — through the container's Bidirectional
 *  volume onto the node, so that the pins outlive the router container — and the pin
 *  directory. Nothing with --datapath nft. */
int mountBpffsCommand(const Flags& f) {
  if (f.datapath != "bpf") {
    spdlog::info("--datapath {}: no bpffs needed", f.datapath);
    return 0;
  }
  if (auto s = kst::bpf::preparePinDir(f.bpf.pinDir); !s) {
    spdlog::error("{}", s.error().message);
    return 1;
  }
  spdlog::info("bpffs ready: pin directory {}", f.bpf.pinDir);
  return 0;
}

/** `cleanup`: removes every owned kernel object of the roles asked for. */
int cleanupCommand(const Flags& f, Kernel& k, bool router, bool agent, bool announce) {
  int rc = 0;
  if (router) {
    removeOtherDatapath(f);
    auto r = k.router->cleanup();
    if (!r || !r->ok()) rc = 1;
    if (r) spdlog::info("router cleanup: {} objects removed", r->changes);
    else spdlog::error("router cleanup: {}", r.error().message);
    if (announce) {
      auto a = k.announce->cleanup();
      if (!a || !a->ok()) rc = 1;
      if (a) spdlog::info("announce cleanup: {} routes removed", a->changes);
      else spdlog::error("announce cleanup: {}", a.error().message);
    }
  }
  if (agent) {
    auto r = k.agent->cleanup();
    if (!r || !r->ok()) rc = 1;
    if (r) spdlog::info("agent cleanup: {} objects removed", r->changes);
  }
  return rc;
}

/** Arguments of `explain` and `status`. */
struct InspectArgs {
  std::string vip, src, protocol = "tcp";
  uint16_t sport = 0, dport = 0;
  std::string output = "text";
};

/** `explain`: where this node's kernel sends one packet (desired/inspect.h). */
int explainCommand(const Flags& f, Kernel& k, const InspectArgs& a) {
  kst::FlowQuery q;
  auto vip = kst::IpAddress::parse(a.vip), src = kst::IpAddress::parse(a.src);
  auto proto = kst::parseProtocol(a.protocol);
  if (!vip || !src || vip->family() != src->family() || !proto) {
    spdlog::error("explain: VIP and SRC must be addresses of one family, the protocol tcp, udp, "
                  "sctp, icmp, icmpv6 or a number");
    return 2;
  }
  q.vip = *vip;
  q.src = *src;
  q.sport = a.sport;
  q.dport = a.dport;
  q.protocol = *proto;
  // The classifier's hashes and flow pins where this router keeps them (--datapath).
  std::unique_ptr<kst::dp::NftInspector> inspector;
  if (f.datapath == "bpf") inspector = std::make_unique<kst::BpfInspector>(f.bpf.pinDir);
  else inspector = std::make_unique<kst::NftInspectorImpl>(f.dp);
  auto e = kst::explainOnNode(*k.router, *inspector, q);
  if (!e) {
    spdlog::error("explain: {}", e.error().message);
    return 1;
  }
  std::cout << (a.output == "json" ? kst::toJson(*e).dump(2) + "\n" : kst::toText(*e));
  return 0;
}

/** `status`: the VIPs, slots and pod VIPs this node's kernel holds. */
int statusCommand(const Flags& f, Kernel& k, bool router, bool agent, const InspectArgs& a) {
  kst::StatusSources src;
  if (router) src.router = k.router.get();
  if (router && f.announceTable) src.announce = k.announce.get();
  if (agent) src.pods = k.netns.get();
  src.decapDevice = f.dp.tunnelLinkName();
  src.datapath = f.datapath;
  auto s = kst::nodeStatus(src);
  std::cout << (a.output == "json" ? kst::toJson(s).dump(2) + "\n" : kst::toText(s));
  return s.errors.empty() ? 0 : 1;
}

/** Where the model comes from, and, with the Kubernetes API, where problems and decisions go. */
struct Sources {
  std::unique_ptr<kst::Source> source;
  kst::k8s::KubeSource* kube = nullptr;  // the source, when it is the Kubernetes API
  std::unique_ptr<kst::k8s::KubeEventSink> events;
  std::unique_ptr<kst::k8s::KubePublisher> publisher;
  std::unique_ptr<kst::k8s::LoadBalancerStatusWriter> lbStatus;  // with the publisher
  std::unique_ptr<kst::k8s::PodGateWriter> gates;  // agent: the VIP readiness gate
};

/** The Kubernetes client configuration: --kubeconfig / $KUBECONFIG, then in-cluster. */
kst::Result<kst::k8s::ClientConfig> kubeClientConfig(const Flags& f) {
  if (!f.kubeconfig.empty()) return kst::k8s::loadKubeconfig(f.kubeconfig, f.kubeContext);
  if (kst::k8s::inClusterAvailable()) {
    std::map<std::string, std::string> env;
    for (const char* k : {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"})
      if (const char* v = std::getenv(k)) env[k] = v;
    return kst::k8s::inClusterConfig(env);
  }
  return kst::fail(EINVAL,
                   "no source: give --manifests DIR, --kubeconfig PATH (or $KUBECONFIG), or run "
                   "in a pod with a ServiceAccount token");
}

/** Source selection: an explicit --manifests wins; then the Kubernetes API. @return the exit
 *  code on failure (2: configuration, 1: runtime). */
std::expected<Sources, int> openSources(const Flags& f, bool router, bool agent) {
  Sources s;
  if (!f.manifests.empty()) {
    s.source = std::make_unique<kst::ManifestSource>(f.manifests);
    return s;
  }
  auto cfg = kubeClientConfig(f);
  if (!cfg) {
    spdlog::error("{}", cfg.error().message);
    return std::unexpected(2);
  }
  spdlog::info("kubernetes API {} from {}", cfg->server, cfg->origin);
  kst::k8s::TransportFactory factory =
      [c = *cfg]() -> kst::Result<std::unique_ptr<kst::k8s::HttpTransport>> {
    auto t = kst::k8s::CurlTransport::create(c);
    if (!t) return std::unexpected(t.error());
    return std::unique_ptr<kst::k8s::HttpTransport>(std::move(*t));
  };
  kst::k8s::KubeSourceOptions ko;
  ko.router = router;
  ko.agent = agent;
  ko.nodeName = f.nodeName;
  ko.keepAnnotations = {f.annotation};
  // Routers follow the published tables (agents do not plan buckets).
  if (router) ko.tablesNamespace = f.leaseNamespace;
  ko.listWatch.maxResponseBytes = f.apiMaxResponseMiB << 20;
  auto ks = std::make_unique<kst::k8s::KubeSource>(factory, ko);
  s.kube = ks.get();
  s.source = std::move(ks);
  if (agent && f.readinessGate) {
    kst::k8s::PodGateOptions go;
    go.nodeName = f.nodeName;
    s.gates = std::make_unique<kst::k8s::PodGateWriter>(factory, go);
    s.gates->start();
  }
  // Events come from routers only: one report per problem per router instead of one per node.
  if (!router) return s;
  auto t = factory();
  if (!t) {
    spdlog::error("{}", t.error().message);
    return std::unexpected(1);
  }
  kst::k8s::EventSinkOptions eo;
  eo.reportingInstance =
      "kube-service-tunnel-" + (f.nodeName.empty() ? std::string("router") : f.nodeName);
  eo.uidOf = [kube = s.kube](const kst::ObjectKey& k) { return kube->serviceUid(k); };
  s.events = std::make_unique<kst::k8s::KubeEventSink>(std::move(*t), eo);
  if (f.publish) {
    kst::k8s::PublisherOptions po;
    po.ns = f.leaseNamespace;
    po.identity = f.nodeName.empty() ? eo.reportingInstance : f.nodeName;
    po.uidOf = [kube = s.kube](const kst::ObjectKey& k) { return kube->serviceUid(k); };
    po.staleTables = [kube = s.kube] { return kube->staleTables(); };
    s.publisher = std::make_unique<kst::k8s::KubePublisher>(factory, po);
    // The Lease holder also writes our LoadBalancer Services' status (one writer).
    kst::k8s::LoadBalancerStatusOptions lo;
    lo.annotation = f.annotation;
    lo.maxResponseBytes = f.apiMaxResponseMiB << 20;
    s.lbStatus = std::make_unique<kst::k8s::LoadBalancerStatusWriter>(factory, lo);
    s.publisher->start();
  }
  return s;
}

/** The policy at start: default-deny is said loudly, it refuses every VIP. */
void logVipPolicy(const kst::VipPolicy& p) {
  if (p.pools.empty()) {
    spdlog::error("no VIP pool configured (--vip-pool / TUNNEL_VIP_POOLS): default-deny, EVERY "
                  "VIP is refused and no LoadBalancer address is allocated");
    return;
  }
  std::string pools, ranges;
  for (const auto& pool : p.pools) {
    pools += (pools.empty() ? "" : " ") + pool.prefix.str();
    if (!pool.namespaces.empty()) {
      std::string ns;
      for (const auto& n : pool.namespaces) ns += (ns.empty() ? "" : ",") + n;
      pools += "@" + ns;
    }
  }
  for (const auto& r : p.clusterRanges) ranges += (ranges.empty() ? "" : " ") + r.str();
  spdlog::info("VIP pools: {}; cluster ranges (never a VIP): {}", pools,
               ranges.empty() ? std::string("none given") : ranges);
}

/** /metrics: what the Kubernetes API client knows about itself, read at each scrape. */
kst::ApiStatsSource apiStatsOf(const Sources& s, bool router) {
  if (!s.kube) return {};
  return [&s, router] {
    kst::ApiStats a;
    std::vector<std::string> resources{"services", "endpointslices"};
    if (router) resources.push_back("configmaps");  // the published bucket tables
    for (auto& r : resources) {
      auto w = s.kube->stats(r);
      a.watches.push_back({r, uint64_t(w.lists), uint64_t(w.gone), uint64_t(w.errors),
                           uint64_t(w.events), uint64_t(w.bookmarks), w.synced});
    }
    if (s.events)
      a.events = kst::ApiStats::Events{uint64_t(s.events->posted()),
                                       uint64_t(s.events->dropped()), s.events->queued()};
    if (s.publisher) {
      a.publisher.emplace();
      a.publisher->leader = s.publisher->isLeader();
      a.publisher->publications = s.publisher->publications();
      if (auto d = s.publisher->sinceLastPublication())
        a.publisher->lastPublicationAge = std::chrono::duration<double>(*d).count();
    }
    return a;
  };
}

/** `run`: the daemon until SIGTERM/SIGINT (or one pass with --once). */
int runCommand(const Flags& f, Kernel& k, bool router, bool agent) {
  if (agent && f.nodeName.empty()) {
    spdlog::error("--node-name is required for the agent role");
    return 2;
  }
  auto sources = openSources(f, router, agent);
  if (!sources) return sources.error();
  Sources& s = *sources;
  if (router) removeOtherDatapath(f);
  if (router) {
    // A tunnel node forwards VIP traffic.
    (void)kst::writeSysctl("net/ipv4/ip_forward", "1");
    (void)kst::writeSysctl("net/ipv6/conf/all/forwarding", "1");
  }
  kst::DaemonOptions opts;
  opts.router = router;
  opts.agent = agent;
  opts.nodeName = f.nodeName;
  opts.model.annotation = f.annotation;
  opts.model.policy = f.policy;  // routers and agents: a refused VIP gets no kernel object
  opts.resyncInterval = std::chrono::seconds(f.resyncSeconds);
  opts.agentVerifyInterval = std::chrono::milliseconds(int64_t(f.verifySeconds * 1000));
  opts.model.startingEndpoints = agent;
  opts.once = f.once;
  kst::Daemon daemon(opts, *s.source, router ? k.router.get() : nullptr,
                     agent ? k.agent.get() : nullptr, s.events.get(), s.publisher.get());
  if (s.publisher) s.publisher->setOnAcquired([&daemon] { daemon.poke(); });
  if (s.lbStatus) daemon.setLoadBalancerStatus(s.lbStatus.get());
  logVipPolicy(f.policy);
  // The one metrics registry (daemon/metrics.h), served as /metrics on the health port. The
  // router's traffic counters come in through metrics.setCounterSource().
  kst::Metrics metrics;
  daemon.setMetrics(&metrics);
  metrics.setApiStatsSource(apiStatsOf(s, router));
  if (router)
    metrics.setCounterSource([&k]() -> std::optional<kst::dp::NftCounterSnapshot> {
      std::lock_guard lock(*k.nftScrapeLock);
      auto snap = k.nftScrape->readCounters();
      if (!snap) {
        spdlog::warn("/metrics: reading the nft counters: {}", snap.error().message);
        return std::nullopt;
      }
      return std::move(*snap);
    });
  if (s.gates) daemon.setPodGateSink(s.gates.get());
  kst::DrainWatcher drainWatch(f.drainFile(), [&daemon] { daemon.poke(); });
  if (router && f.announceTable) {
    daemon.setAnnouncer(k.announce.get());
    if (auto st = drainWatch.start(); !st)  // the periodic resync still reads the file
      spdlog::warn("drain state {}: {}", f.drainFile(), st.error().message);
    spdlog::info("announcing fit VIPs in table {}{}", f.announceTable,
                 k.announce->drained() ? " (drained: none)" : "");
  }
  kst::HealthServer health([&]() -> std::string {
    if (s.kube && !s.kube->synced()) return "not synced with the Kubernetes API yet";
    if (daemon.passes() == 0) return "no reconcile pass yet";
    if (!daemon.lastPassOk()) return "the last reconcile pass failed";
    return "";
  });
  metrics.serve(health);
  if (f.healthPort > 0) {
    if (auto st = health.start(f.healthAddress, uint16_t(f.healthPort)); !st) {
      spdlog::error("{}", st.error().message);
      return 1;
    }
    spdlog::info("health endpoint on {}:{} (/healthz, /readyz, /metrics)", f.healthAddress, health.port());
  }
  std::thread([&daemon] {
    sigset_t set = stopSignals();
    int sig = 0;
    if (sigwait(&set, &sig) == 0) {
      spdlog::info("signal {}: stopping", sig);
      daemon.stop();
    }
  }).detach();
  spdlog::info("kube-service-tunnel starting: role={} mode={} node={} buckets={} seed={:#x} source={}",
               f.role, kst::modeName(f.dp.mode), f.nodeName, f.dp.buckets, f.dp.hashSeed,
               s.source->name());
  int rc = daemon.run();
  drainWatch.stop();
  if (s.publisher) s.publisher->stop();
  if (s.gates) s.gates->stop();
  health.stop();
  spdlog::info("kube-service-tunnel stopped (kernel state left in place)");
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kube-service-tunnel: VIPs delivered as normal IP packets inside pods"};
  app.require_subcommand(1);
  Flags f;
  auto* run = app.add_subcommand("run", "Run the daemon");
  addRunFlags(run, f);
  auto* cleanup = app.add_subcommand("cleanup", "Remove every kernel object this daemon owns on this node");
  addCommon(cleanup, f);
  auto* drain = app.add_subcommand(
      "drain", "Tunnel node: withdraw every VIP from the DC routers, wait until they can have "
               "moved the traffic away (survives restarts until `undrain`)");
  addCommon(drain, f);
  drain->add_option("--hold", f.drainHold,
                    "Seconds to wait after the withdrawal (BGP propagation to the DC routers)")
      ->check(CLI::Range(0.0, 3600.0));
  drain->add_option("--timeout", f.drainTimeout,
                    "Seconds to wait for the daemon to empty the announce table")
      ->check(CLI::Range(0.0, 3600.0));
  auto* undrain = app.add_subcommand("undrain", "Tunnel node: announce the VIPs again");
  addCommon(undrain, f);
  InspectArgs ia;
  auto* status = app.add_subcommand(
      "status", "The VIPs, buckets per endpoint and endpoint states this node's kernel holds, "
                "and (agent) the pod namespaces holding VIPs");
  addCommon(status, f);
  auto* explain = app.add_subcommand(
      "explain", "Tunnel node: which bucket, slot mark and endpoint a packet takes, computed "
                 "with the kernel's hash from the running node's state");
  addCommon(explain, f);
  explain->add_option("VIP", ia.vip, "Destination (the VIP)")->required();
  explain->add_option("SRC", ia.src, "Source address")->required();
  explain->add_option("SPORT", ia.sport, "Source port (0 for protocols without ports)")->required();
  explain->add_option("DPORT", ia.dport, "Destination port")->required();
  explain->add_option("PROTOCOL", ia.protocol, "tcp (default), udp, sctp, icmp, icmpv6 or a number");
  for (auto* c : {status, explain})
    c->add_option("-o,--output", ia.output, "text or json")->check(CLI::IsMember({"text", "json"}));
  auto* bpffs = app.add_subcommand(
      "mount-bpffs", "Router pod's init container, --datapath bpf: bpffs at /sys/fs/bpf when "
                     "nothing is mounted there, and the --bpf-pin-dir directory");
  addCommon(bpffs, f);
  auto* version = app.add_subcommand("version", "Print the version");
  CLI11_PARSE(app, argc, argv);
  {
    sigset_t set = stopSignals();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
  }
  if (version->parsed()) {
    std::cout << "kube-service-tunnel 0.1.0\n";
    return 0;
  }
  if (!buildConfig(f)) return 2;
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  if (bpffs->parsed()) return mountBpffsCommand(f);
  bool router = f.role != "agent", agent = f.role != "router";
  // Only where the daemon programs the table (status and explain print JSON and never write).
  if (router && f.datapath == "nft" && run->parsed()) {
    f.dp.nftMapLookup = kst::NftClientImpl::mapLookupWorks(f.dp);
    if (!f.dp.nftMapLookup)
      spdlog::info("nft: this kernel refuses a lookup in a map without data; new flows are "
                   "counted with the packets of stale pins (docs/metrics.md)");
  }
  // status and explain only read: the bpf datapath's observation repairs nothing for them.
  if (status->parsed() || explain->parsed()) f.bpf.repair = false;
  auto kernel = openKernel(f);
  if (!kernel) {
    spdlog::error("{}", kernel.error().message);
    return 1;
  }
  if (undrain->parsed()) return kst::undrainNode(f.drainFile(), std::cout);
  if (drain->parsed()) {
    if (f.announceTable == 0) {
      spdlog::error("drain: give the daemon's --announce-table (or TUNNEL_ANNOUNCE_TABLE)");
      return 2;
    }
    kst::DrainOptions o;
    o.hold = std::chrono::milliseconds(int64_t(f.drainHold * 1000));
    o.timeout = std::chrono::milliseconds(int64_t(f.drainTimeout * 1000));
    return kst::drainNode(*kernel->announce, f.drainFile(), o, std::cout);
  }
  if (cleanup->parsed()) return cleanupCommand(f, *kernel, router, agent, f.announceTable != 0);
  if (explain->parsed()) return explainCommand(f, *kernel, ia);
  if (status->parsed()) return statusCommand(f, *kernel, router, agent, ia);
  return runCommand(f, *kernel, router, agent);
}
