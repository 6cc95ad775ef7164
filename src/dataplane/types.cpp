#include "dataplane/types.h"

namespace kst::dp {

const char* kindName(Link::Kind k) {
  switch (k) {
    case Link::Kind::VxlanGpe: return "vxlan-gpe";
    case Link::Kind::Ipip: return "ipip";
    case Link::Kind::Gre: return "gre";
    case Link::Kind::Ip6tnl: return "ip6tnl";
    case Link::Kind::Ip6gre: return "ip6gre";
    case Link::Kind::Other: return "other";
  }
  return "other";
}

bool operator==(const Link& a, const Link& b) { return a.sameConfig(b) && a.sameMtu(b); }

}  // namespace kst::dp
