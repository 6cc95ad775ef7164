#include "dataplane/types.h"

#include "dataplane/modes.h"

namespace kst::dp {

const char* kindName(Link::Kind k) { return linkKindTraits(k).name; }

bool operator==(const Link& a, const Link& b) { return a.sameConfig(b) && a.sameMtu(b); }

}  // namespace kst::dp
