#include "core/io/file_util.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace hl::io {

Status write_file_atomically(const std::filesystem::path& path,
                             const std::function<void(std::ostream&)>& write) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (path.has_parent_path() && !fs::is_directory(path.parent_path(), ec)) {
    return make_error("directory does not exist", {path.parent_path().string()});
  }
  fs::path temp = path;
  temp += ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) {
      return make_error(std::string("cannot create file: ") + std::strerror(errno),
                        {temp.string()});
    }
    write(out);
    out.flush();
    if (!out) {
      out.close();
      fs::remove(temp, ec);
      return make_error("write failed (disk full?)", {temp.string()});
    }
  }
  fs::rename(temp, path, ec);
  if (ec) {
    fs::remove(temp, ec);
    return make_error("cannot rename temporary file into place: " + ec.message(), {path.string()});
  }
  return Status::Ok();
}

Result<std::string> read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(std::string("cannot open file: ") + std::strerror(errno), {path.string()});
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return make_error("read failed", {path.string()});
  return buffer.str();
}

}  // namespace hl::io
