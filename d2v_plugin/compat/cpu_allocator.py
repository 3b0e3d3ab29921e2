"""Keep freed CPU memory in the process instead of handing it back to the OS after every tensor (glibc).

Training on CPU allocates and frees the same large activations at every update (a base audio model's
conv feature encoder alone makes tensors of 65 MB). glibc's ``malloc`` serves every request above its
mmap threshold (dynamic, at most 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` on
``free``, and trims the heap top whenever more than twice that threshold is free. Either way the next
update's tensor lands on new pages that the kernel has to fault in and zero: measured on the 2-core
machine of STACK.md, a base audio update spent ~1/4 of its wall time in the kernel (``sys`` time), and
a large ``copy_`` or ``gelu`` took 10x the time its memory traffic needs.

:func:`keep_freed_memory` sets, once per process, the two glibc knobs documented in ``mallopt(3)``:
``M_MMAP_MAX = 0`` (large blocks come from the heap too, so they can be reused) and
``M_TRIM_THRESHOLD = -1`` (freed heap memory is kept). The process's peak memory is unchanged (freed
blocks are reused, not added to), but it no longer shrinks between updates. This is what PyTorch's CPU
tuning guides get with jemalloc/tcmalloc via ``LD_PRELOAD``, without preloading anything. It changes
no arithmetic. It is a process-wide setting, so it is applied only where training on CPU asks for it:
the ``data2vec`` criterion calls it when it is built and no GPU is visible (``criterion.cpu_keep_freed_memory=false``
or ``D2V_KEEP_FREED_MEMORY=0`` turns it off). Building a model, decoding, feature extraction and GPU runs leave
the allocator alone. It is a no-op off Linux/glibc.
"""

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt(3) parameter numbers (glibc's malloc.h)
_M_MMAP_MAX = -4

_applied = None


def keep_freed_memory() -> bool:
    """Apply the glibc settings above (once per process). Returns whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("D2V_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    if _applied:
        logger.info("glibc malloc keeps freed memory for reuse (D2V_KEEP_FREED_MEMORY=0 turns this off)")
    return _applied
