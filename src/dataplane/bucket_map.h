// The router's bucket map contents ((VIP, bucket) → slot fwmark), stored compactly.
//
// Why it exists: at V = 10k VIPs × B = 64 buckets a std::map keyed by (VIP, bucket) is 640k
// tree nodes (≈ 64 bytes each, 41 MB per copy), and a whole-model pass holds the desired and
// the observed copy at once. Here each VIP has one dense vector indexed by bucket (4 bytes per
// bucket, ≈ 3 MB for the same state), and per-VIP vectors can be copied or moved as a whole
// (the reconciler's cache, incremental passes).
//
// Mark 0 means "no element": a slot's mark is tableOffset + slot and `--table-offset` is at
// least 1, so a desired mark is never 0 (set()/insert() reject it). A kernel element whose
// data is 0 (not written by the daemon) is recorded as kForeignZeroMark so that it stays
// visible to the diff (which deletes or replaces it).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <optional>
#include <stdexcept>
#include <utility>
#include <vector>

#include "common/ip.h"

namespace kst::dp {

class BucketMap {
 public:
  using Key = std::pair<IpAddress, uint32_t>;       // (VIP, bucket)
  using value_type = std::pair<Key, uint32_t>;      // ((VIP, bucket), mark)
  using size_type = size_t;
  using PerVip = std::map<IpAddress, std::vector<uint32_t>>;
  /** Stands for an observed element whose mark is 0 (never a desired mark). */
  static constexpr uint32_t kForeignZeroMark = 0xffffffffu;
  /** Bucket indices are dense: set()/insert() reject a bucket at or above this (`--buckets` is
   *  at most 2^20; an observed foreign element beyond it is not representable). */
  static constexpr uint32_t kMaxBuckets = 1u << 22;

  /** Elements in (VIP, bucket) order, yielded by value (as a const pair, so that both
   *  `const auto&` and `auto&` structured bindings work). */
  class const_iterator {
   public:
    using iterator_concept = std::forward_iterator_tag;
    using iterator_category = std::input_iterator_tag;  // operator* yields a value
    using value_type = BucketMap::value_type;
    using difference_type = std::ptrdiff_t;
    using reference = const value_type;
    using pointer = void;

    const_iterator() = default;
    const value_type operator*() const { return {{it_->first, b_}, it_->second[b_]}; }
    const_iterator& operator++() {
      ++b_;
      settle();
      return *this;
    }
    const_iterator operator++(int) {
      auto c = *this;
      ++*this;
      return c;
    }
    bool operator==(const const_iterator& o) const { return it_ == o.it_ && b_ == o.b_; }

   private:
    friend class BucketMap;
    const_iterator(PerVip::const_iterator it, PerVip::const_iterator end, uint32_t b)
        : it_(it), end_(end), b_(b) {
      settle();
    }
    // Moves to the next non-zero mark at or after (it_, b_); b_ = 0 at the end.
    void settle() {
      while (it_ != end_) {
        const auto& v = it_->second;
        while (b_ < v.size() && v[b_] == 0) ++b_;
        if (b_ < v.size()) return;
        ++it_;
        b_ = 0;
      }
      b_ = 0;
    }
    PerVip::const_iterator it_{}, end_{};
    uint32_t b_ = 0;
  };
  using iterator = const_iterator;

  const_iterator begin() const { return {vips_.begin(), vips_.end(), 0}; }
  const_iterator end() const { return {vips_.end(), vips_.end(), 0}; }

  /** Sets (or replaces) one element. mark must not be 0, bucket < kMaxBuckets (else throws). */
  void set(const IpAddress& vip, uint32_t bucket, uint32_t mark) {
    uint32_t& m = slot(vip, bucket, mark);
    if (m == 0) ++size_;
    m = mark;
  }
  /** Adds one element unless the key exists (std::map::emplace). @return true if added. */
  bool insert(const IpAddress& vip, uint32_t bucket, uint32_t mark) {
    uint32_t& m = slot(vip, bucket, mark);
    if (m != 0) return false;
    m = mark;
    ++size_;
    return true;
  }
  /** @return true if the element existed. A VIP left without elements is removed. */
  bool erase(const IpAddress& vip, uint32_t bucket) {
    auto it = vips_.find(vip);
    if (it == vips_.end() || bucket >= it->second.size() || it->second[bucket] == 0) return false;
    it->second[bucket] = 0;
    --size_;
    if (countOf(it->second) == 0) vips_.erase(it);
    return true;
  }
  bool erase(const Key& k) { return erase(k.first, k.second); }
  std::optional<uint32_t> find(const Key& k) const {
    auto it = vips_.find(k.first);
    if (it == vips_.end() || k.second >= it->second.size() || it->second[k.second] == 0)
      return std::nullopt;
    return it->second[k.second];
  }
  bool contains(const Key& k) const { return find(k).has_value(); }
  uint32_t at(const Key& k) const {
    auto m = find(k);
    if (!m) throw std::out_of_range("BucketMap::at: no such (VIP, bucket)");
    return *m;
  }

  /** Replaces all elements of a VIP: marks[b] is bucket b's mark, 0 = none. */
  void setVip(const IpAddress& vip, std::vector<uint32_t> marks) {
    eraseVip(vip);
    size_t n = countOf(marks);
    if (n == 0) return;
    size_ += n;
    vips_.emplace(vip, std::move(marks));
  }
  /** @return true if the VIP had elements. */
  bool eraseVip(const IpAddress& vip) {
    auto it = vips_.find(vip);
    if (it == vips_.end()) return false;
    size_ -= countOf(it->second);
    vips_.erase(it);
    return true;
  }
  /** The VIP's marks indexed by bucket (0 = none; any length), or nullptr without elements. */
  const std::vector<uint32_t>* marksOf(const IpAddress& vip) const {
    auto it = vips_.find(vip);
    return it == vips_.end() ? nullptr : &it->second;
  }
  /** Every VIP with at least one element, in order. */
  const PerVip& perVip() const { return vips_; }

  /** Number of elements. */
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  void clear() {
    vips_.clear();
    size_ = 0;
  }
  /** Adds other's elements whose key is not here yet (std::map::merge keeps the existing
   *  element); other is left empty. */
  void merge(BucketMap&& other) {
    if (vips_.empty()) {
      *this = std::move(other);
      other.clear();
      return;
    }
    for (auto& [vip, marks] : other.vips_) {
      auto [it, added] = vips_.try_emplace(vip);
      if (added) {
        it->second = std::move(marks);
        size_ += countOf(it->second);
        continue;
      }
      auto& mine = it->second;
      if (mine.size() < marks.size()) mine.resize(marks.size(), 0);
      for (size_t b = 0; b < marks.size(); ++b)
        if (marks[b] != 0 && mine[b] == 0) {
          mine[b] = marks[b];
          ++size_;
        }
    }
    other.clear();
  }

  /** Same elements (vector lengths and trailing zeros do not matter). */
  bool operator==(const BucketMap& o) const {
    if (size_ != o.size_ || vips_.size() != o.vips_.size()) return false;
    for (auto a = vips_.begin(), b = o.vips_.begin(); a != vips_.end(); ++a, ++b) {
      if (a->first != b->first) return false;
      const auto& x = a->second;
      const auto& y = b->second;
      size_t n = std::max(x.size(), y.size());
      for (size_t i = 0; i < n; ++i)
        if ((i < x.size() ? x[i] : 0) != (i < y.size() ? y[i] : 0)) return false;
    }
    return true;
  }

 private:
  static size_t countOf(const std::vector<uint32_t>& v) {
    size_t n = 0;
    for (uint32_t m : v) n += m != 0;
    return n;
  }
  uint32_t& slot(const IpAddress& vip, uint32_t bucket, uint32_t mark) {
    if (mark == 0) throw std::invalid_argument("BucketMap: mark 0 means no element");
    if (bucket >= kMaxBuckets) throw std::out_of_range("BucketMap: bucket index too large");
    auto& v = vips_[vip];
    if (bucket >= v.size()) v.resize(static_cast<size_t>(bucket) + 1, 0);
    return v[bucket];
  }

  PerVip vips_;
  size_t size_ = 0;
};

}  // namespace kst::dp
