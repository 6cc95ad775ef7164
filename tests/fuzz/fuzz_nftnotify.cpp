// libFuzzer target: a datagram of nf_tables announcements (linux/nft_codec.h), split into
// messages and fed to a CommitFollower as the client's monitor socket does (first byte: how
// many times the buffer is fed, so that generations and recorded commits accumulate), then
// applied to a small state (both with lookups and as an exhaustive dump).
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "linux/nft_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int rounds = 1 + data[0] % 4;
  // A netlink datagram starts 4-byte aligned (the client receives into an aligned buffer);
  // data + 1 is not, so the bytes are copied into 4-byte words first.
  std::vector<uint32_t> words((size - 1 + 3) / 4 + 1);  // never empty: memcpy needs a pointer
  std::memcpy(words.data(), data + 1, size - 1);
  std::span<const uint8_t> in(reinterpret_cast<const uint8_t*>(words.data()), size - 1);
  kst::nft::CommitFollower f("kube_service_tunnel", 8, 256);
  f.setOwnPort(777);
  const uint32_t start = 0xfffffff0u;
  f.reset(start);
  for (int r = 0; r < rounds; ++r) {
    auto msgs = kst::nft::split(in);
    if (!msgs) {
      f.lost();
      break;
    }
    for (const nlmsghdr* m : *msgs) {
      (void)kst::nft::decodeNotification(m);
      f.feed(m);
    }
  }
  kst::dp::NftState st;
  kst::nft::RawSets raw;
  auto vip = *kst::IpAddress::parse("198.51.100.20");
  st.present = true;
  st.vips = raw.vipSet = raw.refused = {vip};
  for (uint32_t b = 0; b < 8; ++b) st.buckets.set(vip, b, 1000);
  kst::dp::NftState dumped = st;
  kst::nft::RawSets dumpedRaw = raw;
  (void)f.catchUp(st, raw, start);
  (void)f.catchUp(dumped, dumpedRaw, start, false);
  return 0;
}
