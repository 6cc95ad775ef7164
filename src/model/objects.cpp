#include "model/objects.h"

namespace kst {

namespace {

template <typename T>
void fold(bool replaceAll, std::map<ObjectKey, std::optional<T>>& into,
          std::map<ObjectKey, std::optional<T>>&& later) {
  for (auto& [k, v] : later) {
    if (replaceAll && !v) into.erase(k);  // a complete set holds no deletions
    else into.insert_or_assign(k, std::move(v));
  }
}

template <typename T>
void applyTo(bool replaceAll, std::map<ObjectKey, T>& objs,
             const std::map<ObjectKey, std::optional<T>>& changes) {
  if (replaceAll) objs.clear();
  for (auto& [k, v] : changes) {
    if (v) objs.insert_or_assign(k, *v);
    else objs.erase(k);
  }
}

}  // namespace

void ObjectChanges::merge(ObjectChanges&& later) {
  if (later.replaceAll) {
    *this = std::move(later);
    return;
  }
  fold(replaceAll, services, std::move(later.services));
  fold(replaceAll, slices, std::move(later.slices));
  fold(replaceAll, tables, std::move(later.tables));
}

ObjectChanges ObjectChanges::all(const ClusterObjects& objects) {
  ObjectChanges c;
  c.replaceAll = true;
  for (auto& [k, s] : objects.services) c.services.emplace_hint(c.services.end(), k, s);
  for (auto& [k, s] : objects.slices) c.slices.emplace_hint(c.slices.end(), k, s);
  for (auto& [k, t] : objects.tables) c.tables.emplace_hint(c.tables.end(), k, t);
  return c;
}

void applyChanges(ClusterObjects& objects, const ObjectChanges& changes) {
  applyTo(changes.replaceAll, objects.services, changes.services);
  applyTo(changes.replaceAll, objects.slices, changes.slices);
  applyTo(changes.replaceAll, objects.tables, changes.tables);
}

}  // namespace kst
