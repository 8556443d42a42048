#include "runtime/json_simd.h"

#include <simdjson.h>

#include <cstring>
#include <new>
#include <string_view>

struct HeraldJsonSimd {
  simdjson::dom::parser parser;
};

namespace {

// jansson refuses NUL inside strings and keys unless asked to allow it.
bool has_nul(std::string_view s) { return std::memchr(s.data(), '\0', s.size()) != nullptr; }

// The jansson value of e, or nullptr where json_loadb must decide.
json_t *convert(simdjson::dom::element e) {
  switch (e.type()) {
    case simdjson::dom::element_type::OBJECT: {
      simdjson::dom::object obj;
      if (e.get_object().get(obj) != simdjson::SUCCESS) return nullptr;
      json_t *o = json_object();
      if (o == nullptr) return nullptr;
      for (simdjson::dom::key_value_pair field : obj) {
        std::string_view key = field.key;
        json_t *v = has_nul(key) ? nullptr : convert(field.value);
        size_t before = json_object_size(o);
        // A repeated key replaces a value instead of adding one; json_loadb with
        // JSON_REJECT_DUPLICATES refuses such a text. (One hash lookup per key, not two.)
        if (v == nullptr || json_object_setn_new_nocheck(o, key.data(), key.size(), v) != 0 ||
            json_object_size(o) == before) {
          json_decref(o);
          return nullptr;
        }
      }
      return o;
    }
    case simdjson::dom::element_type::ARRAY: {
      simdjson::dom::array arr;
      if (e.get_array().get(arr) != simdjson::SUCCESS) return nullptr;
      json_t *a = json_array();
      if (a == nullptr) return nullptr;
      for (simdjson::dom::element item : arr) {
        json_t *v = convert(item);
        if (v == nullptr || json_array_append_new(a, v) != 0) {
          json_decref(a);
          return nullptr;
        }
      }
      return a;
    }
    case simdjson::dom::element_type::STRING: {
      std::string_view s;
      if (e.get_string().get(s) != simdjson::SUCCESS || has_nul(s)) return nullptr;
      // simdjson has validated the UTF-8, which is all the check would do.
      return json_stringn_nocheck(s.data(), s.size());
    }
    case simdjson::dom::element_type::INT64: {
      int64_t i;
      if (e.get_int64().get(i) != simdjson::SUCCESS) return nullptr;
      return json_integer(static_cast<json_int_t>(i));
    }
    case simdjson::dom::element_type::DOUBLE: {
      double d;
      if (e.get_double().get(d) != simdjson::SUCCESS) return nullptr;
      return json_real(d);
    }
    case simdjson::dom::element_type::BOOL: {
      bool b;
      if (e.get_bool().get(b) != simdjson::SUCCESS) return nullptr;
      return json_boolean(b);
    }
    case simdjson::dom::element_type::NULL_VALUE:
      return json_null();
    case simdjson::dom::element_type::UINT64:
      // Above INT64_MAX: jansson's integers are 64-bit signed and it refuses the text.
      return nullptr;
  }
  return nullptr;
}

}  // namespace

extern "C" HeraldJsonSimd *herald_json_simd_new(void) {
  return new (std::nothrow) HeraldJsonSimd();
}

extern "C" void herald_json_simd_free(HeraldJsonSimd *reader) { delete reader; }

extern "C" json_t *herald_json_simd_load(HeraldJsonSimd *reader, const char *text, size_t len) {
  simdjson::dom::element root;
  // The text is copied into the parser's padded buffer: simdjson reads past the end.
  if (reader->parser.parse(text, len, true).get(root) != simdjson::SUCCESS) return nullptr;
  // json_loadb without JSON_DECODE_ANY takes only an object or an array at the top.
  simdjson::dom::element_type t = root.type();
  if (t != simdjson::dom::element_type::OBJECT && t != simdjson::dom::element_type::ARRAY)
    return nullptr;
  return convert(root);
}
