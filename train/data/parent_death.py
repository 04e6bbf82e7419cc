"""Worker processes that die with their parent, however the parent ends (kill -9 included).

Without this, the DALI reader workers of train.run and the decoding pool of train.pack outlived a
killed parent for minutes (about 400 MB each, re-parented to PID 1). On Linux the kernel sends the
worker SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`); elsewhere a daemon thread polls
the parent's PID. Called first thing in each worker (a pool initializer, or DALI's unpickling of
the source). The workers hold nothing that needs a clean shutdown: readers and decoders only.
"""
import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1           # from <linux/prctl.h>
# How often the portable fallback looks at its parent: a dead parent's workers linger at most this long.
POLL_SECONDS = 1.0


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when `parent_pid` (the process that started it) ends."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:   # the parent died before the prctl: no signal will come
            os._exit(1)
    else:
        threading.Thread(target=_watch, args=(parent_pid,), daemon=True, name="parent-watch").start()
