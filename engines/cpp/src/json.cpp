#include "json.hpp"

#include <cstdlib>
#include <stdexcept>

namespace prtk::json {

namespace {

class Parser {
 public:
  explicit Parser(const std::string& text) : text_(text) {}

  Value document() {
    Value value = parse_value(0);
    skip_space();
    if (position_ != text_.size()) fail("text after the JSON value");
    return value;
  }

 private:
  static constexpr int kMaxDepth = 64;
  const std::string& text_;
  size_t position_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON at offset " + std::to_string(position_) + ": " + what);
  }

  void skip_space() {
    while (position_ < text_.size() &&
           (text_[position_] == ' ' || text_[position_] == '\n' || text_[position_] == '\r' ||
            text_[position_] == '\t')) {
      ++position_;
    }
  }

  char peek() {
    skip_space();
    if (position_ >= text_.size()) fail("unexpected end");
    return text_[position_];
  }

  void expect(const char* word) {
    for (const char* c = word; *c; ++c, ++position_) {
      if (position_ >= text_.size() || text_[position_] != *c) fail(std::string("expected ") + word);
    }
  }

  Value parse_value(int depth) {
    if (depth > kMaxDepth) fail("nested too deeply");
    Value value;
    const char c = peek();
    if (c == '{') {
      value.kind = Value::Kind::Object;
      ++position_;
      if (peek() == '}') {
        ++position_;
        return value;
      }
      while (true) {
        if (peek() != '"') fail("expected a key");
        std::string key = parse_string();
        if (peek() != ':') fail("expected ':'");
        ++position_;
        value.object[key] = parse_value(depth + 1);
        const char next = peek();
        ++position_;
        if (next == '}') return value;
        if (next != ',') fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      value.kind = Value::Kind::Array;
      ++position_;
      if (peek() == ']') {
        ++position_;
        return value;
      }
      while (true) {
        value.array.push_back(parse_value(depth + 1));
        const char next = peek();
        ++position_;
        if (next == ']') return value;
        if (next != ',') fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      value.kind = Value::Kind::String;
      value.string = parse_string();
      return value;
    }
    if (c == 't' || c == 'f') {
      value.kind = Value::Kind::Bool;
      value.boolean = c == 't';
      expect(value.boolean ? "true" : "false");
      return value;
    }
    if (c == 'n') {
      expect("null");
      return value;
    }
    value.kind = Value::Kind::Number;
    value.number = parse_number();
    return value;
  }

  double parse_number() {
    const size_t start = position_;
    while (position_ < text_.size() && std::string("+-0123456789.eE").find(text_[position_]) != std::string::npos) {
      ++position_;
    }
    const std::string token = text_.substr(start, position_ - start);
    if (token.empty()) fail("unexpected character");
    char* end = nullptr;
    const double number = std::strtod(token.c_str(), &end);
    if (end != token.c_str() + token.size()) fail("bad number '" + token + "'");
    return number;
  }

  unsigned parse_hex4() {
    if (position_ + 4 > text_.size()) fail("short \\u escape");
    unsigned code = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[position_++];
      code <<= 4;
      if (h >= '0' && h <= '9') code |= h - '0';
      else if (h >= 'a' && h <= 'f') code |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') code |= h - 'A' + 10;
      else fail("bad \\u escape");
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  std::string parse_string() {
    ++position_;  // the opening quote
    std::string out;
    while (true) {
      if (position_ >= text_.size()) fail("unterminated string");
      const char c = text_[position_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (position_ >= text_.size()) fail("unterminated escape");
      const char e = text_[position_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned code = parse_hex4();
          if (code >= 0xD800 && code < 0xDC00) {  // a surrogate pair
            if (position_ + 2 > text_.size() || text_[position_] != '\\' || text_[position_ + 1] != 'u') {
              fail("lone surrogate");
            }
            position_ += 2;
            const unsigned low = parse_hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("bad surrogate pair");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, code);
          break;
        }
        default: fail("bad escape");
      }
    }
  }
};

}  // namespace

bool Value::operator==(const Value& other) const {
  if (kind != other.kind) return false;
  switch (kind) {
    case Kind::Null: return true;
    case Kind::Bool: return boolean == other.boolean;
    case Kind::Number: return number == other.number;
    case Kind::String: return string == other.string;
    case Kind::Array: return array == other.array;
    case Kind::Object: return object == other.object;
  }
  return false;
}

const Value& Value::at(const std::string& key) const {
  if (kind != Kind::Object) throw std::runtime_error("'" + key + "' looked up in a value that is not an object");
  const auto found = object.find(key);
  if (found == object.end()) throw std::runtime_error("no '" + key + "'");
  return found->second;
}

Value parse(const std::string& text) { return Parser(text).document(); }

}  // namespace prtk::json
