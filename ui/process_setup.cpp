#include "ui/process_setup.hpp"

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace hl::ui {

void keep_freed_memory() {
#ifdef __GLIBC__
  // Blocks up to 32 MiB (glibc's ceiling for this setting) come from the heap, not from mmap,
  // and the heap keeps up to 256 MiB of free memory at its top.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

}  // namespace hl::ui
