#include "core/util/error.hpp"

namespace hl {

std::string Error::to_string() const {
  std::string out;
  if (!where.file.empty()) {
    out += where.file;
    if (where.line > 0) out += ":" + std::to_string(where.line);
    out += ": ";
  }
  if (!where.key.empty()) out += where.key + ": ";
  out += message;
  return out;
}

}  // namespace hl
