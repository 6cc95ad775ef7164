#include "desired/config.h"

namespace kst {

std::string DataplaneConfig::tunnelLinkName() const {
  const char* suffix = modeTraits(mode).suffix;
  return *suffix ? linkPrefix + suffix : std::string("lo");
}

}  // namespace kst
