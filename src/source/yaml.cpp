#include "source/yaml.h"

#include <yaml.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include <fmt/format.h>

namespace kst {

namespace {

struct Parser {
  yaml_parser_t p;
  Parser() { yaml_parser_initialize(&p); }
  ~Parser() { yaml_parser_delete(&p); }
};

struct Event {
  yaml_event_t e;
  bool live = false;
  ~Event() { reset(); }
  void reset() {
    if (live) yaml_event_delete(&e);
    live = false;
  }
};

nlohmann::json scalarValue(const yaml_event_t& e) {
  std::string s(reinterpret_cast<const char*>(e.data.scalar.value), e.data.scalar.length);
  // Quoted, block or tagged scalars are strings; only untagged plain ones are typed.
  if (e.data.scalar.style != YAML_PLAIN_SCALAR_STYLE || e.data.scalar.tag) return s;
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  if (s.empty() || s == "null" || s == "Null" || s == "NULL" || s == "~") return nullptr;
  if (std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-' || s[0] == '+') {
    errno = 0;
    char* end = nullptr;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (end && *end == '\0' && end != s.c_str() && errno == 0) return v;
  }
  return s;
}

std::string anchorOf(const unsigned char* a) {
  return a ? std::string(reinterpret_cast<const char*>(a)) : std::string();
}

}  // namespace

Result<std::vector<nlohmann::json>> yamlDocuments(std::string_view text, const YamlLimits& limits) {
  Parser parser;
  yaml_parser_set_input_string(&parser.p, reinterpret_cast<const unsigned char*>(text.data()),
                               text.size());
  std::vector<nlohmann::json> docs;
  // Open collections: the value being built, and for mappings the key waiting for its value.
  struct Frame {
    nlohmann::json value;
    std::string anchor;
    bool map = false;
    bool haveKey = false;
    std::string key;
    size_t values = 0;  // values inside (for aliases of it)
  };
  std::vector<Frame> stack;
  struct Anchored {
    nlohmann::json value;
    size_t values;
  };
  std::map<std::string, Anchored> anchors;  // of the current document
  size_t produced = 0, aliased = 0;
  nlohmann::json root;
  bool haveRoot = false;

  // Adds a finished value to its parent (or makes it the document's root).
  auto add = [&](nlohmann::json v, size_t values, const std::string& anchor) -> Status {
    if (!anchor.empty()) anchors.insert_or_assign(anchor, Anchored{v, values});
    if (stack.empty()) {
      root = std::move(v);
      haveRoot = true;
      return {};
    }
    Frame& f = stack.back();
    f.values += values;
    if (!f.map) {
      f.value.push_back(std::move(v));
      return {};
    }
    if (!f.haveKey) {
      if (!v.is_string()) {
        if (v.is_object() || v.is_array())
          return fail(EINVAL, "YAML: a mapping key must be a scalar");
        v = v.dump();  // a plain key like 1 or true is its text
      }
      f.key = v.get<std::string>();
      f.haveKey = true;
      return {};
    }
    f.value[f.key] = std::move(v);
    f.haveKey = false;
    return {};
  };

  while (true) {
    Event ev;
    if (!yaml_parser_parse(&parser.p, &ev.e)) {
      const char* problem = parser.p.problem ? parser.p.problem : "syntax error";
      size_t line = parser.p.problem_mark.line + 1;
      if (parser.p.context)
        return fail(EINVAL, fmt::format("YAML error at line {}: {} {}", line, parser.p.context,
                                        problem));
      return fail(EINVAL, fmt::format("YAML error at line {}: {}", line, problem));
    }
    ev.live = true;
    const yaml_event_t& e = ev.e;
    switch (e.type) {
      case YAML_STREAM_END_EVENT: return docs;
      case YAML_DOCUMENT_START_EVENT:
        haveRoot = false;
        root = nullptr;
        anchors.clear();
        break;
      case YAML_DOCUMENT_END_EVENT:
        docs.push_back(haveRoot ? std::move(root) : nlohmann::json());
        break;
      case YAML_SEQUENCE_START_EVENT:
      case YAML_MAPPING_START_EVENT: {
        if (stack.size() >= limits.maxDepth)
          return fail(EINVAL, fmt::format("YAML error at line {}: nested deeper than {}",
                                          e.start_mark.line + 1, limits.maxDepth));
        if (++produced > limits.maxValues)
          return fail(EINVAL, fmt::format("YAML: more than {} values", limits.maxValues));
        bool map = e.type == YAML_MAPPING_START_EVENT;
        Frame f;
        f.map = map;
        f.value = map ? nlohmann::json::object() : nlohmann::json::array();
        f.anchor = anchorOf(map ? e.data.mapping_start.anchor : e.data.sequence_start.anchor);
        stack.push_back(std::move(f));
        break;
      }
      case YAML_SEQUENCE_END_EVENT:
      case YAML_MAPPING_END_EVENT: {
        Frame f = std::move(stack.back());
        stack.pop_back();
        if (auto s = add(std::move(f.value), f.values + 1, f.anchor); !s)
          return std::unexpected(s.error());
        break;
      }
      case YAML_SCALAR_EVENT: {
        if (++produced > limits.maxValues)
          return fail(EINVAL, fmt::format("YAML: more than {} values", limits.maxValues));
        if (auto s = add(scalarValue(e), 1, anchorOf(e.data.scalar.anchor)); !s)
          return std::unexpected(s.error());
        break;
      }
      case YAML_ALIAS_EVENT: {
        auto it = anchors.find(anchorOf(e.data.alias.anchor));
        if (it == anchors.end())
          return fail(EINVAL, fmt::format("YAML error at line {}: unknown alias",
                                          e.start_mark.line + 1));
        // Every copy counts: aliases of aliases cannot multiply past the limit.
        produced += it->second.values;
        aliased += it->second.values;
        if (aliased > limits.maxAliasValues)
          return fail(EINVAL, fmt::format("YAML: more than {} values from aliases expanded",
                                          limits.maxAliasValues));
        if (produced > limits.maxValues)
          return fail(EINVAL, fmt::format("YAML: more than {} values (aliases expanded)",
                                          limits.maxValues));
        if (auto s = add(it->second.value, it->second.values, ""); !s)
          return std::unexpected(s.error());
        break;
      }
      case YAML_NO_EVENT:
      case YAML_STREAM_START_EVENT: break;
    }
  }
}

}  // namespace kst
