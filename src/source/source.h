// The seam between where objects come from and the rest of the daemon. A source delivers
// changes: the latest version of each object that changed (or, first, the complete set).
// Level-triggered per object: deliveries fold into one another (ObjectChanges::merge), so a
// consumer that was busy sees only the newest state of each object and missed or reordered
// intermediate versions cannot leave it inconsistent.
#pragma once

#include <functional>
#include <string>

#include "common/error.h"
#include "model/objects.h"

namespace kst {

class Source {
 public:
  using Callback = std::function<void(ObjectChanges)>;
  virtual ~Source() = default;
  /** Starts delivering changes to cb (from the source's own thread). The first delivery is
   *  the complete set (replaceAll) and marks the source as synced; empty deliveries are not
   *  made. */
  virtual Status start(Callback cb) = 0;
  virtual void stop() = 0;
  virtual std::string name() const = 0;
};

}  // namespace kst
