// Agent role, pure: the endpoints on this node → what each pod's namespace must hold.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "dataplane/types.h"
#include "desired/config.h"
#include "model/model.h"

namespace kst {

struct PodPlan {
  IpAddress podIp;
  std::vector<ObjectKey> services;
  dp::PodState state;
};

/** One plan per local endpoint address (draining endpoints keep their VIPs). */
std::vector<PodPlan> planAgent(const Model& model, const DataplaneConfig& cfg,
                               const std::string& nodeName);

/** The decapsulation link the agent puts into a pod with address podIp. */
dp::Link podLink(const DataplaneConfig& cfg, const IpAddress& podIp);

}  // namespace kst
