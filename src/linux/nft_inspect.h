// dp::NftInspector over the kernel: the classifier chains read through libnftables' JSON
// listing (`nft -j list chain inet TABLE classify4`), single flow-map lookups as one nfnetlink
// GETSETELEM request (nft_codec.h). For the `status` and `explain` commands, never the daemon.
#pragma once

#include <string>
#include <string_view>

#include "dataplane/inspect.h"
#include "desired/config.h"

struct nft_ctx;

namespace kst {

/** The hash expressions of a chain from its JSON listing (pure; tests/unit). Rules without a
 *  jhash are skipped; an error when the text is not an nft JSON listing. */
Result<dp::ClassifierHashes> parseClassifierJson(std::string_view json);

class NftInspectorImpl : public dp::NftInspector {
 public:
  explicit NftInspectorImpl(const DataplaneConfig& cfg);
  ~NftInspectorImpl() override;
  NftInspectorImpl(const NftInspectorImpl&) = delete;
  NftInspectorImpl& operator=(const NftInspectorImpl&) = delete;
  Result<dp::ClassifierHashes> classifier(Family family) override;
  Result<std::optional<uint32_t>> flowMark(Family family, std::span<const uint8_t> key) override;

 private:
  DataplaneConfig cfg_;
  nft_ctx* ctx_;
};

}  // namespace kst
