"""cProfile every fscsync process of one `bench.py --profile` run.

benchmarks/profiling.py puts this directory first on PYTHONPATH for that run, so
every Python process it starts imports this module at start-up; it does nothing
unless FSCSYNC_BENCH_PROFILE (the output prefix) is set.

The main thread's profile goes to PREFIX-ROLE.prof, each other thread's (cProfile sees
one thread only) to PREFIX-ROLE-thread-NAME.prof when that thread finishes. A local
server is a forked client: it starts a profiler of its own after the fork.
"""
import os
import re
import sys

_out = os.environ.get("FSCSYNC_BENCH_PROFILE")
if _out:
    import atexit
    import cProfile
    import threading

    _role = "server" if "--server" in sys.argv else "client"
    _prof = cProfile.Profile()
    _prof.enable()

    def _dump():
        _prof.disable()
        _prof.dump_stats(f"{_out}-{_role}.prof")

    atexit.register(_dump)

    # A local server is a fork of the client that leaves through os._exit (no
    # atexit): give it its own profiler and dump that on the way out.
    def _forked():
        global _prof, _role
        _prof.disable()
        _prof, _role = cProfile.Profile(), "server"
        _prof.enable()

    os.register_at_fork(after_in_child=_forked)
    _real_exit = os._exit

    def _exit(code):
        _dump()
        _real_exit(code)

    os._exit = _exit
    _thread_run = threading.Thread.run

    def _profiled_run(self):
        prof = cProfile.Profile()
        prof.enable()
        try:
            _thread_run(self)
        finally:
            prof.disable()
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
            prof.dump_stats(f"{_out}-{_role}-thread-{name}.prof")

    threading.Thread.run = _profiled_run
