// Announce table, pure: router plan → the routes a routing daemon (bird2) exports to the DC
// routers (docs/announce.md).
//
// One route per VIP this router is fit to serve: the VIP is in the plan (so it is neither
// refused by policy nor lost in a conflict: the model drops those), at least one of its
// endpoints holds buckets (serving and not draining, and usable in this router's mode), and the
// router is not drained. Whether the VIP is programmed and the router has completed a pass is
// the caller's part (reconcile/announce_reconciler.h).
//
// The routes are `unreachable` host routes in the announce table, tagged with the route
// protocol like every owned route. bird2's `protocol kernel { learn; }` imports them (they are
// "alien" routes for it: their protocol is neither bird's nor the kernel's); no ip rule points
// at the table, so they never take part in forwarding. An `unreachable` route needs no device
// or nexthop, so it exists even when no tunnel device does.
#pragma once

#include <cstdint>
#include <vector>

#include "dataplane/types.h"
#include "desired/router.h"

namespace kst {

/** True when the VIP has at least one endpoint that receives new flows. */
bool fitToAnnounce(const VipPlan& vip);

/** The announce routes of a plan, sorted by key (empty when drained). */
std::vector<dp::Route> announceRoutes(const RouterPlan& plan, uint32_t table, bool drained);

/** A route of the announce table for one VIP. */
dp::Route announceRoute(const IpAddress& vip, uint32_t table);

}  // namespace kst
