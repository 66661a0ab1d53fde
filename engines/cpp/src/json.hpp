// A small JSON reader for artifact descriptions (objects, arrays, strings, numbers, booleans, null).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace prtk::json {

struct Value {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0.0;
  std::string string;
  std::vector<Value> array;
  std::map<std::string, Value> object;

  bool operator==(const Value& other) const;
  bool operator!=(const Value& other) const { return !(*this == other); }

  // Member `key` of an object; throws std::runtime_error naming `key` when absent or not an object.
  const Value& at(const std::string& key) const;
  bool has(const std::string& key) const { return kind == Kind::Object && object.count(key) != 0; }
};

// Parses `text` (one JSON value, surrounded by whitespace only); throws std::runtime_error with the offset.
Value parse(const std::string& text);

}  // namespace prtk::json
