// Checks of the probes' SVG files without an XML library: the document is well formed (every element
// closed in order, attribute values quoted, one root <svg>), and its elements can be listed with their
// attributes, so a test can count the marks it expects (cells of a heatmap, points of a plot).
#pragma once

#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

namespace ferry::test {

struct SvgElement {
  std::string name;
  std::map<std::string, std::string> attributes;
};

struct SvgParse {
  std::string error;                 // empty when well formed
  std::vector<SvgElement> elements;  // in document order, the root included

  // Elements named `name` whose class attribute holds the word `css_class` ("" matches any).
  std::vector<SvgElement> find(const std::string& name, const std::string& css_class = "") const {
    std::vector<SvgElement> out;
    for (const auto& e : elements) {
      if (e.name != name) continue;
      if (!css_class.empty()) {
        auto it = e.attributes.find("class");
        if (it == e.attributes.end()) continue;
        const std::string padded = " " + it->second + " ";
        if (padded.find(" " + css_class + " ") == std::string::npos) continue;
      }
      out.push_back(e);
    }
    return out;
  }
};

inline SvgParse parse_svg(const std::string& text) {
  SvgParse parse;
  std::vector<std::string> open;
  std::size_t at = 0;
  bool seen_root = false;
  auto error = [&](const std::string& what) {
    parse.error = what + " at byte " + std::to_string(at);
    return parse;
  };
  while ((at = text.find('<', at)) != std::string::npos) {
    if (text.compare(at, 5, "<?xml") == 0) {
      at = text.find("?>", at);
      if (at == std::string::npos) return error("unterminated declaration");
      continue;
    }
    const std::size_t end = text.find('>', at);
    if (end == std::string::npos) return error("unterminated tag");
    std::string tag = text.substr(at + 1, end - at - 1);
    if (!tag.empty() && tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (open.empty() || open.back() != name) return error("closing </" + name + "> does not match");
      open.pop_back();
      at = end + 1;
      continue;
    }
    const bool self_closing = !tag.empty() && tag.back() == '/';
    if (self_closing) tag.pop_back();
    SvgElement element;
    std::size_t i = 0;
    while (i < tag.size() && tag[i] != ' ' && tag[i] != '\n') element.name += tag[i++];
    if (element.name.empty()) return error("element without a name");
    while (i < tag.size()) {
      while (i < tag.size() && (tag[i] == ' ' || tag[i] == '\n')) ++i;
      if (i >= tag.size()) break;
      const std::size_t equals = tag.find('=', i);
      if (equals == std::string::npos || equals + 1 >= tag.size() || tag[equals + 1] != '"') {
        return error("attribute without a quoted value in <" + element.name + ">");
      }
      const std::size_t close = tag.find('"', equals + 2);
      if (close == std::string::npos) return error("unterminated attribute in <" + element.name + ">");
      const std::string value = tag.substr(equals + 2, close - equals - 2);
      if (value.find('<') != std::string::npos) return error("'<' inside an attribute");
      element.attributes[tag.substr(i, equals - i)] = value;
      i = close + 1;
    }
    if (open.empty()) {
      if (seen_root || element.name != "svg") return error("root is not one <svg>");
      seen_root = true;
    }
    if (!self_closing) open.push_back(element.name);
    parse.elements.push_back(std::move(element));
    at = end + 1;
  }
  if (!seen_root) parse.error = "no <svg> element";
  if (!open.empty()) parse.error = "<" + open.back() + "> is never closed";
  return parse;
}

// parse_svg() of a file the test wrote, which is removed afterwards.
inline SvgParse parse_svg_file(const std::string& path) {
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(path.c_str());
  return parse_svg(text);
}

}  // namespace ferry::test
