#include "dataplane/modes.h"

#include <algorithm>
#include <cctype>

namespace kst {

const char* modeName(Mode m) { return modeTraits(m).name; }

bool parseMode(const std::string& s, Mode& out) {
  std::string l = s;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const auto& t : kModeTraits) {
    if (l == t.name || (*t.alias && l == t.alias)) {
      out = t.mode;
      return true;
    }
  }
  return false;
}

std::string modeHelp() {
  std::string out;
  for (const auto& t : kModeTraits) {
    if (!out.empty()) out += " | ";
    out += std::string(t.name) + " (" + t.summary + ")";
  }
  return out;
}

}  // namespace kst
