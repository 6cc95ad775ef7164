// The seam between where objects come from and the rest of the daemon. A source publishes
// whole snapshots (level-triggered): the reconciler never sees individual events, so missed
// or reordered events cannot leave it inconsistent.
#pragma once

#include <functional>
#include <string>

#include "common/error.h"
#include "model/objects.h"

namespace kst {

class Source {
 public:
  using Callback = std::function<void(const ClusterObjects&)>;
  virtual ~Source() = default;
  /** Starts delivering snapshots to cb (from the source's own thread). The first call of cb
   *  marks the source as synced. */
  virtual Status start(Callback cb) = 0;
  virtual void stop() = 0;
  virtual std::string name() const = 0;
};

}  // namespace kst
