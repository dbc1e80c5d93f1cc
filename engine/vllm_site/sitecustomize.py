"""Grant this process the right to use Intel AMX tiles, before vLLM CPU needs it.

Why: on Linux a process must ask the kernel (``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``) before its first AMX instruction, or that instruction raises SIGILL; the
permission is cleared on ``execve``. vLLM CPU 0.32 picks its AMX attention kernel on CPUs that
have AMX (bfloat16, block size a multiple of 32) but does not ask for the permission: it works
only if oneDNN asked first, which oneDNN does when a matrix multiply is big enough to use AMX.
With ``--enforce-eager`` and an explicit KV-cache size (``VLLM_CPU_KVCACHE_SPACE``) vLLM skips its
warm-up, so if the first prompt is one or two tokens long the worker dies of SIGILL in
``cpu_attention_with_kv_cache`` and the engine with it (seen on a Sapphire Rapids VM). vLLM's
worker is a spawned (exec'd) process, so asking in the parent is not enough: this module runs in
every Python process that has this directory on ``PYTHONPATH``.

Harmless elsewhere: on other architectures, kernels or CPUs without AMX the request fails and
is ignored. No imports beyond ctypes and platform; nothing else is changed.
"""

from __future__ import annotations

import ctypes
import platform

SYS_ARCH_PRCTL_X86_64 = 158
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


def request_amx_permission() -> bool:
    """Ask the kernel for AMX tile data; True if granted (or already held)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return (
            int(libc.syscall(SYS_ARCH_PRCTL_X86_64, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) == 0
        )
    except (OSError, AttributeError):
        return False


request_amx_permission()
