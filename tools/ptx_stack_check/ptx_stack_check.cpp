#include "ptx_stack_check/ptx_stack_check.hpp"

#include <algorithm>
#include <cctype>
#include <set>
#include <string>

namespace ferry::tools::ptx_stack_check {

namespace {

// The text with every comment replaced by spaces (newlines kept, so offsets and lines stay), string
// literals (.file directives) left alone.
std::string without_comments(std::string_view text) {
  std::string out(text);
  bool in_string = false;
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (in_string) {
      if (out[i] == '"') in_string = false;
      continue;
    }
    if (out[i] == '"') {
      in_string = true;
    } else if (out.compare(i, 2, "//") == 0) {
      while (i < out.size() && out[i] != '\n') out[i++] = ' ';
    } else if (out.compare(i, 2, "/*") == 0) {
      const std::size_t end = out.find("*/", i + 2);
      const std::size_t stop = end == std::string::npos ? out.size() : end + 2;
      for (; i < stop; ++i) {
        if (out[i] != '\n') out[i] = ' ';
      }
      --i;
    }
  }
  return out;
}

bool is_name_start(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '$' || c == '%';
}
bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '$';
}

// Registers (%rd12, %SP) and symbols (__local_depot0) named in an operand.
std::vector<std::string> names_in(std::string_view operand) {
  std::vector<std::string> names;
  for (std::size_t i = 0; i < operand.size();) {
    if (!is_name_start(operand[i])) {
      ++i;
      continue;
    }
    const std::size_t begin = i++;
    while (i < operand.size() && is_name_char(operand[i])) ++i;
    names.emplace_back(operand.substr(begin, i - begin));
  }
  return names;
}

// Index just past the bracket that closes the one at `open` ('(' or '{'), or npos.
std::size_t past_closing(const std::string& text, std::size_t open) {
  const char opening = text[open];
  const char closing = opening == '(' ? ')' : '}';
  int depth = 0;
  for (std::size_t i = open; i < text.size(); ++i) {
    if (text[i] == opening) ++depth;
    if (text[i] == closing && --depth == 0) return i + 1;
  }
  return std::string::npos;
}

std::size_t skip_space(const std::string& text, std::size_t i) {
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i])) != 0) ++i;
  return i;
}

std::string collapse_space(std::string_view text) {
  std::string out;
  bool space = false;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c)) != 0) {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

struct Statement {
  std::size_t offset = 0;  // of its first character in the module
  std::string text;        // guard, opcode and operands, without the ';'
};

struct Instruction {
  std::string opcode;
  std::vector<std::string> operands;
};

Instruction parse(const std::string& text) {
  Instruction instruction;
  std::size_t i = 0;
  if (!text.empty() && text[0] == '@') {  // guard predicate
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i])) == 0) ++i;
    i = skip_space(text, i);
  }
  const std::size_t opcode_begin = i;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i])) == 0) ++i;
  instruction.opcode = text.substr(opcode_begin, i - opcode_begin);
  int depth = 0;
  std::string operand;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') --depth;
    if (c == ',' && depth == 0) {
      instruction.operands.push_back(collapse_space(operand));
      operand.clear();
      continue;
    }
    operand += c;
  }
  operand = collapse_space(operand);
  if (!operand.empty()) instruction.operands.push_back(operand);
  return instruction;
}

std::vector<std::string> split_opcode(const std::string& opcode) {
  std::vector<std::string> parts;
  std::size_t begin = 0;
  while (begin <= opcode.size()) {
    const std::size_t dot = opcode.find('.', begin);
    parts.push_back(opcode.substr(begin, dot == std::string::npos ? std::string::npos : dot - begin));
    if (dot == std::string::npos) break;
    begin = dot + 1;
  }
  return parts;
}

// An access to memory in the global state space (not cvta.to.global or isspacep.global, which only compute).
bool is_global_access(const std::vector<std::string>& parts) {
  if (parts.empty() || parts[0] == "cvta" || parts[0] == "isspacep") return false;
  return std::find(parts.begin() + 1, parts.end(), "global") != parts.end();
}

// Whether the instruction's first operand is a register it writes with a value computed from its other
// operands. Loads (and atomics, which return what was in memory) write what memory held: not "from the
// stack" because of their address.
bool computes_destination(const Instruction& instruction, const std::vector<std::string>& parts) {
  static const std::set<std::string> loads_or_control = {"ld",   "ldu",  "atom", "tex", "tld4",
                                                         "suld", "call", "ret",  "bra", "exit"};
  if (instruction.operands.empty() || instruction.operands[0].empty()) return false;
  if (instruction.operands[0][0] == '[') return false;  // st, red, prefetch, cp.async ...: no destination
  return loads_or_control.count(parts[0]) == 0;
}

struct Function {
  std::string name;
  std::vector<Statement> statements;
  std::set<std::string> local_symbols;
};

// Leading braces of scoped blocks and labels ("$L__BB0_2:") come before a statement's guard or opcode.
std::size_t statement_start(const std::string& text, std::size_t i, std::size_t end) {
  while (true) {
    while (i < end &&
           (std::isspace(static_cast<unsigned char>(text[i])) != 0 || text[i] == '{' || text[i] == '}')) {
      ++i;
    }
    std::size_t j = i;
    while (j < end && is_name_char(text[j])) ++j;
    if (j > i && j < end && text[j] == ':' && (j + 1 >= end || text[j + 1] != ':')) {
      i = j + 1;  // a label
      continue;
    }
    return i;
  }
}

void read_body(const std::string& text, std::size_t begin, std::size_t end, Function& function) {
  std::size_t i = begin;
  while (i < end) {
    std::size_t semicolon = text.find(';', i);
    if (semicolon == std::string::npos || semicolon > end) semicolon = end;
    const std::size_t start = statement_start(text, i, semicolon);
    std::string statement = text.substr(start, semicolon - start);
    i = semicolon + 1;
    if (statement.find_first_not_of(" \t\r\n{}") == std::string::npos) continue;
    if (statement[0] == '.') {
      if (statement.compare(0, 6, ".local") == 0) {
        const std::vector<std::string> names = names_in(statement.substr(0, statement.find('[')));
        if (!names.empty()) function.local_symbols.insert(names.back());
      }
      continue;  // .reg, .shared, .pragma, .loc ...
    }
    function.statements.push_back({start, collapse_space(statement)});
  }
}

std::vector<Function> read_functions(const std::string& text) {
  std::vector<Function> functions;
  int depth = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '{') ++depth;
    if (c == '}') --depth;
    if (depth != 0 || c != '.') continue;
    const bool entry = text.compare(i, 6, ".entry") == 0;
    const bool func = text.compare(i, 5, ".func") == 0;
    if (!entry && !func) continue;
    std::size_t j = i + (entry ? 6 : 5);
    if (j < text.size() && is_name_char(text[j])) continue;  // .function... is not a keyword here
    j = skip_space(text, j);
    if (j < text.size() && text[j] == '(') j = skip_space(text, past_closing(text, j));  // return value
    const std::size_t name_begin = j;
    while (j < text.size() && is_name_char(text[j])) ++j;
    Function function;
    function.name = text.substr(name_begin, j - name_begin);
    // Parameters and performance directives, then a body or (a declaration) a ';'.
    while (j < text.size() && text[j] != '{' && text[j] != ';') {
      j = text[j] == '(' ? past_closing(text, j) : j + 1;
      if (j == std::string::npos) return functions;
    }
    if (j >= text.size() || text[j] == ';') {
      i = j;
      continue;
    }
    const std::size_t body_end = past_closing(text, j);
    if (body_end == std::string::npos) return functions;
    read_body(text, j + 1, body_end - 1, function);
    functions.push_back(std::move(function));
    i = body_end - 1;
  }
  return functions;
}

int line_of(const std::string& text, std::size_t offset) {
  return 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<long>(offset), '\n'));
}

}  // namespace

Scan scan_ptx(std::string_view ptx) {
  const std::string text = without_comments(ptx);
  Scan scan;
  for (const Function& function : read_functions(text)) {
    ++scan.functions;
    std::vector<Instruction> instructions;
    std::vector<std::vector<std::string>> opcodes;
    for (const Statement& statement : function.statements) {
      instructions.push_back(parse(statement.text));
      opcodes.push_back(split_opcode(instructions.back().opcode));
    }
    std::set<std::string> from_stack = function.local_symbols;
    from_stack.insert({"%SP", "%SPL"});
    auto any_from_stack = [&](const std::string& operand) {
      const std::vector<std::string> names = names_in(operand);
      return std::any_of(names.begin(), names.end(),
                         [&](const std::string& name) { return from_stack.count(name) != 0; });
    };
    for (bool changed = true; changed;) {  // until no register is added
      changed = false;
      for (std::size_t k = 0; k < instructions.size(); ++k) {
        const Instruction& instruction = instructions[k];
        if (!computes_destination(instruction, opcodes[k])) continue;
        bool tainted = false;
        for (std::size_t o = 1; o < instruction.operands.size() && !tainted; ++o)
          tainted = any_from_stack(instruction.operands[o]);
        if (!tainted) continue;
        for (const std::string& name : names_in(instruction.operands[0]))
          changed |= from_stack.insert(name).second;
      }
    }
    for (std::size_t k = 0; k < instructions.size(); ++k) {
      if (!is_global_access(opcodes[k])) continue;
      ++scan.global_accesses;
      for (const std::string& operand : instructions[k].operands) {
        if (operand.empty() || operand[0] != '[' || !any_from_stack(operand)) continue;
        const Statement& statement = function.statements[k];
        scan.findings.push_back({function.name, line_of(text, statement.offset), statement.text, operand});
      }
    }
  }
  return scan;
}

std::string describe(const Finding& finding, const std::string& file) {
  return file + ":" + std::to_string(finding.line) + ": in " + finding.function + ": `" +
         finding.instruction + "`: address " + finding.address +
         " comes from the thread's stack (local memory) but the access is "
         "in the global state space";
}

}  // namespace ferry::tools::ptx_stack_check
