"""One kernel process of the scaling test and benchmark: THREADS callers on one capability.

    python scaling_worker.py DATA_DIR DSN CAP_ID THREADS CALLS_PER_THREAD OUT_FILE [WARM_UP]

Opens a kernel on its own data dir (its own key, so its own chain) and the shared store, prints
``ready``, waits for a line on stdin (so every process starts at once), then runs THREADS threads
that each evaluate CALLS_PER_THREAD calls (CALLS_PER_THREAD = 0: until killed). Each receipt id is
appended to OUT_FILE with its verdict (WARM_UP = 0: no warm-up call before the start signal;
default 1) as soon as it is handed back (flushed line by line: a
``kill -9`` loses no line written before it). Prints ``done SECONDS`` (wall time from the start
signal to the last call) at the end.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time


def main() -> None:
    data_dir, dsn, cap_id, threads, calls, out_file = sys.argv[1:7]
    from chio_kernel import Kernel

    kernel = Kernel(data_dir, store=dsn)
    lock = threading.Lock()
    out = open(out_file, "a", encoding="utf-8", buffering=1)

    def caller(t: int) -> None:
        counter = itertools.count() if int(calls) == 0 else range(int(calls))
        for i in counter:
            receipt = kernel.evaluate(cap_id, "fs", "read_file", {"path": f"/data/{t}/{i}.txt"})
            with lock:
                out.write(f"{receipt.id} {receipt.decision.verdict}\n")
                out.flush()

    if (sys.argv[7] if len(sys.argv) > 7 else "1") == "1":  # connection and caches, before the clock
        kernel.evaluate(cap_id, "fs", "read_file", {"path": "/warm-up"})
    print("ready", kernel.public_key_hex, flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    pool = [threading.Thread(target=caller, args=(t,)) for t in range(int(threads))]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    took = time.perf_counter() - started
    out.close()
    kernel.close()
    print("done", took, flush=True)


if __name__ == "__main__":
    main()
