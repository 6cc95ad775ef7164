// libnftables access to the daemon's single table.
#pragma once

#include <memory>
#include <string>

#include "dataplane/kernel.h"
#include "desired/config.h"

struct nft_ctx;

namespace kst {

class NftClientImpl : public dp::NftClient {
 public:
  explicit NftClientImpl(const DataplaneConfig& cfg);
  ~NftClientImpl() override;
  Result<dp::NftState> observe() override;
  Status run(const std::string& script) override;

 private:
  Result<std::string> command(const std::string& cmd, bool json, bool terse);
  DataplaneConfig cfg_;
  nft_ctx* ctx_;
};

/** Parses `nft -j list set|map` output into the state (pure, unit-tested). */
Status parseNftElements(const std::string& json, dp::NftState& out);
/** Extracts "kst:<id>" from the terse text listing of the table. */
std::string parseSkeletonId(const std::string& text);

}  // namespace kst
