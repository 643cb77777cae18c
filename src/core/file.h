// Opening files named by users: only regular files. A FIFO blocks open() and read() forever, a
// character device can be endless, a directory "opens" but reads as nothing; each is refused with
// an error naming the path and what it is.
#pragma once
#include <cstddef>
#include <string>

namespace minillm {

// Opens `path` read-only when it is a regular file (without blocking on a FIFO), returns the file
// descriptor and its size. Throws minillm::Error "<what>: cannot open '<path>': ..." otherwise.
int open_regular_file(const std::string& path, const char* what, size_t* size);

// The whole of a regular file of at most `max_bytes` bytes.
std::string read_regular_file(const std::string& path, const char* what, size_t max_bytes);

}  // namespace minillm
