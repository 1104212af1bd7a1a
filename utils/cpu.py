"""CPU training speed: keep freed memory in the process (glibc's malloc).

glibc hands every block over 32 MB straight back to the kernel when it is freed (munmap) and maps
fresh pages for the next one, which the kernel must fault in and zero. A training step at 256 px
frees and re-allocates several GB of activations, so on a 2-core machine a third of the step went
to the kernel (RevDist, wide_resnet50_2, batch 16: 31 s per step, 20.5 s with this setting;
benchmarks/README.md). mallopt(M_MMAP_MAX, 0) makes malloc serve large blocks from its heap, where a
freed block is reused by the next allocation, and M_TRIM_THRESHOLD (2 GB, mallopt's largest) stops
it from handing the free top of the heap back to the kernel. The price is a higher peak RSS (freed blocks are
kept, and the heap fragments): +1 to 1.5 GiB in that step. Torch-free, and a no-op where the C
library has no mallopt (macOS, Windows).
"""
import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc malloc.h


def keep_freed_memory():
    """True if malloc was told to stop returning large freed blocks to the system."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return False
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
