#include "desired/config.h"

#include <algorithm>
#include <cctype>

namespace kst {

const char* modeName(Mode m) {
  switch (m) {
    case Mode::VxlanGpe: return "vxlan-gpe";
    case Mode::Ipip: return "ipip";
    case Mode::GreFlow: return "gre-flow";
    case Mode::Gre: return "gre";
    case Mode::Mpls: return "mpls";
  }
  return "?";
}

bool parseMode(const std::string& s, Mode& out) {
  std::string l = s;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
  if (l == "vxlan-gpe" || l == "vxlan") out = Mode::VxlanGpe;
  else if (l == "ipip" || l == "ipip-flow") out = Mode::Ipip;
  else if (l == "gre-flow") out = Mode::GreFlow;
  else if (l == "gre") out = Mode::Gre;
  else if (l == "mpls") out = Mode::Mpls;
  else return false;
  return true;
}

std::string DataplaneConfig::tunnelLinkName() const {
  switch (mode) {
    case Mode::VxlanGpe: return linkPrefix + "-vxg";
    case Mode::Ipip: return linkPrefix + "-ipip";
    case Mode::GreFlow: return linkPrefix + "-gre";
    case Mode::Gre: return linkPrefix + "-gre";  // pod side; router side is per endpoint
    case Mode::Mpls: return "lo";
  }
  return linkPrefix;
}

}  // namespace kst
