// desired vs observed → ordered changes (pure). Order keeps traffic flowing: objects that
// others depend on are created first and removed last.
#pragma once

#include <vector>

#include "dataplane/kernel.h"
#include "dataplane/types.h"

namespace kst::dp {

/** Router: links, nexthops, routes, rules (nft is rendered separately, see nft_render.h).
 *  observed.links must already be filtered to owned links. */
std::vector<Change> diffRouter(const RouterState& desired, const RouterState& observed);

/** One pod namespace. observed.links: owned links only; observed.addresses: owned only. */
std::vector<Change> diffPod(const PodState& desired, const PodState& observed,
                            uint32_t mplsLabel);

}  // namespace kst::dp
