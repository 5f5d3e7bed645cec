"""One worker process of the fleet test: a kernel on its host's data dir, sharing the PostgreSQL store.

    python fleet_worker.py DATA_DIR DSN OUT_FILE CALLS CAP_ID[,CAP_ID...]

Prints ``ready``, waits for a line on stdin (the start signal, so all workers run at once), then
evaluates CALLS calls round-robin over the capabilities (each call declares a cost of 7 USD minor
units) and appends ``<receipt id> <verdict> <capability id>`` to OUT_FILE as soon as each receipt
is handed back (flushed: a ``kill -9`` loses no line written before it). CALLS = 0 runs until killed.
"""

from __future__ import annotations

import itertools
import sys


def main() -> None:
    data_dir, dsn, out_file, calls, caps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    from chio_kernel import Kernel

    kernel = Kernel(data_dir, store=dsn)
    cap_ids = caps.split(",")
    print("ready", kernel.public_key_hex, flush=True)
    sys.stdin.readline()
    counter = itertools.count() if calls == 0 else range(calls)
    with open(out_file, "a", encoding="utf-8", buffering=1) as out:
        for i in counter:
            cap_id = cap_ids[i % len(cap_ids)]
            receipt = kernel.evaluate(cap_id, "fs", "read_file", {"path": f"/data/{i}.txt"},
                                      cost={"units": 7, "currency": "USD"})
            out.write(f"{receipt.id} {receipt.decision.verdict} {cap_id}\n")
            out.flush()
    kernel.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
