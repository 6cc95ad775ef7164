// A Source that delivers one fixed set of objects on start() (daemon-level unit tests).
#pragma once

#include "source/source.h"

namespace kst::fake {

class SnapshotSource : public Source {
 public:
  explicit SnapshotSource(ClusterObjects o) : objs_(std::move(o)) {}
  Status start(Callback cb) override {
    ++starts;
    cb(ObjectChanges::all(objs_));
    return {};
  }
  void stop() override { ++stops; }
  std::string name() const override { return "snapshot"; }
  int starts = 0, stops = 0;

 private:
  ClusterObjects objs_;
};

}  // namespace kst::fake
