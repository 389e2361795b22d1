#include "manifest_writer.hpp"

#include "checksum.hpp"

#include <cstdio>

namespace ckptlab {
namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

void put_le(std::string& out, uint64_t v, int nbytes) {
  for (int i = 0; i < nbytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

}  // namespace

std::string manifest_trailer(const std::string& body, bool corrupt_checksum) {
  std::string t(kManifestMagic, 8);
  put_le(t, body.size(), 8);
  uint32_t crc = crc32c(0, body.data(), body.size());
  put_le(t, corrupt_checksum ? ~crc : crc, 4);
  put_le(t, kFormatVersion, 4);
  return t;
}

std::string encode_manifest(const ManifestInput& in, bool corrupt_checksum) {
  std::string b;
  b.reserve(256 + in.chunks.size() * 48 + in.meta_json.size());
  b += "{\"format\":\"ckptlab\",\"format_version\":" + std::to_string(kFormatVersion);
  b += ",\"writer\":" + json_string(in.writer);
  b += ",\"step\":" + std::to_string(in.step);
  b += ",\"checksum\":\"crc32c\"";
  b += ",\"io_mode\":" + json_string(in.io_mode);
  b += ",\"chunk_bytes\":" + std::to_string(in.chunk_bytes);
  b += ",\"total_bytes\":" + std::to_string(in.total_bytes);
  b += ",\"stream_bytes\":" + std::to_string(in.stream_bytes);
  b += ",\"files\":[";
  for (size_t i = 0; i < in.file_names.size(); ++i) {
    if (i) b += ",";
    b += "{\"name\":" + json_string(in.file_names[i]) + ",\"nbytes\":" + std::to_string(in.file_sizes[i]) + "}";
  }
  b += "],\"chunks\":[";
  for (size_t i = 0; i < in.chunks.size(); ++i) {
    const auto& c = in.chunks[i];
    if (i) b += ",";
    b += "[" + std::to_string(c.file) + "," + std::to_string(c.offset) + "," + std::to_string(c.nbytes) +
         "," + std::to_string(c.crc) + "]";
  }
  b += "],\"meta\":" + (in.meta_json.empty() ? std::string("{}") : in.meta_json) + "}\n";
  return b + manifest_trailer(b, corrupt_checksum);
}

}  // namespace ckptlab
