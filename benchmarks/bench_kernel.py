"""Kernel benchmark: one command, one table, ratios measured side by side in one run.

    python benchmarks/bench_kernel.py            # default: --n 2000, flatness up to 1,000,000 receipts
    python benchmarks/bench_kernel.py --quick    # smaller: --n 400, flatness up to 100,000 receipts

Rows (p50 / p99 latency of ONE sequential evaluation, and evaluations per second = 1 / mean):

* ``chio_sdk.testing.allow_all()`` mock — what a unit test with the SDK's test double costs;
* physical floor — one Ed25519 sign of a receipt-sized body + one SQLite WAL commit of one row
  (a store opened with the kernel's own ``open_store``, so the same pragmas);
* ``Kernel.evaluate`` in process;
* sidecar ``/v1/evaluate`` over loopback, driven by the real ``chio_sdk.ChioClient``;
* plain loopback HTTP round-trip: the same client to a trivial endpoint on the same server stack
  (Starlette + uvicorn, same settings, no kernel), for the sidecar ratio.

* ``Kernel.evaluate``, integration shape: what the Prefect/Temporal layers send - an idempotency key
  per call and an attenuated capability (a child of the root) whose grant carries a ``path_prefix``
  constraint and a ``max_invocations`` budget.

Group commit (throughput, interleaved rounds, integration-shaped calls; each with its goal):

* one sequential caller on a ``LocalChioClient`` vs. 8 asyncio callers on the same client
  (evaluations/s; commits per evaluation counted by the store);
* the sidecar with 4 client processes x 8 asyncio callers each (``SidecarClient``, the
  ``chio_sdk.ChioClient`` subclass the integrations use),
  batching on vs. a second sidecar started with ``CHIO_GROUP_COMMIT=1`` (one transaction per
  evaluation: the kernel as it was before group commit), side by side in the same run;
* the same against the sidecar of the code before issue 9 (``--baseline-rev``, default the commit
  where issue 8 was complete: its ``src/`` is extracted with ``git archive`` and run with this
  interpreter and these packages; skipped, saying why, outside a git checkout). Goal: now / before
  issue 9 >= 2x.

Server CPU per request, from the same rounds (``/proc`` of the server processes): the sidecar vs
the trivial endpoint vs the kernel in process (LocalChioClient, 8 callers, integration shape);
goal: sidecar <= trivial + kernel.

Bounded work on big inputs (each in a subprocess, now and with the ``--baseline-rev`` code, side by
side): ``Kernel.attenuate_capability`` of 5,000 of 5,000 grants (one tool, a ``path_prefix`` each;
goal: now / before <= 0.05x), the first evaluation of a capability 200 delegations deep on a cold
kernel (goal: now / before <= 0.20x), and the length of a 10,000-grant capability's deny reason.

The PostgreSQL rows (``bench_postgres.py``: p50 vs SQLite, evaluations/s with 16 callers across 4
processes) follow the main table.

Every row is measured in interleaved rounds (A B C D E A B C D E ...) so background load hits
them alike. Flatness: in-process p50 on a store of 1,000 receipts vs. the same store grown to
``--max-receipts`` (default 1,000,000) by a bulk insert of valid signed, hash-chained receipt rows
(see ``benchmarks/README.md``), again interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

PARAMS = {"path": "/data/reports/2026/q3-summary.txt", "max_bytes": 65536}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not healthy after {timeout}s")


# --- the trivial server of the same stack ---------------------------------------------------------


def serve_echo(port: int) -> None:
    """Starlette + uvicorn with the sidecar's settings and one trivial JSON endpoint."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def echo(request: Request) -> Response:
        data = json.loads(await request.body())
        return Response(json.dumps({"ok": True, "n": len(data)}), media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    try:  # the sidecar's choice: httptools + uvloop when installed
        from chio_kernel.sidecar._server import server_stack

        stack = server_stack()
    except ImportError:  # a chio_kernel from before the choice: uvicorn's own ("auto": the same rule)
        stack = {"http": "auto", "loop": "auto"}
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/chio/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off",
                server_header=False, date_header=False, http=stack["http"], loop=stack["loop"], proxy_headers=False)


# --- measurement ----------------------------------------------------------------------------------


@dataclass
class Bench:
    """One row: ``run(k)`` performs k sequential operations and returns their latencies (ns)."""

    name: str
    run: Callable[[int], list[int]]
    samples: list[int] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.samples) / 1e3  # µs

    @property
    def p99(self) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(0.99 * len(s)))] / 1e3

    @property
    def per_second(self) -> float:
        return 1e9 / statistics.fmean(self.samples)


def interleave(benches: list[Bench], n: int, rounds: int, warmup: int) -> None:
    for b in benches:
        b.run(warmup)
    per = max(1, n // rounds)
    for _ in range(rounds):
        for b in benches:
            b.samples.extend(b.run(per))


def timed_sync(op: Callable[[], Any]) -> Callable[[int], list[int]]:
    clock = time.perf_counter_ns

    def run(k: int) -> list[int]:
        out = []
        for _ in range(k):
            t0 = clock()
            op()
            out.append(clock() - t0)
        return out

    return run


def timed_async(loop: asyncio.AbstractEventLoop, op: Callable[[], Any]) -> Callable[[int], list[int]]:
    clock = time.perf_counter_ns

    async def batch(k: int) -> list[int]:
        out = []
        for _ in range(k):
            t0 = clock()
            await op()
            out.append(clock() - t0)
        return out

    return lambda k: loop.run_until_complete(batch(k))


# --- goals (shared with the agent benchmarks) --------------------------------------------------------


def verdict(ok: bool) -> str:
    """How every benchmark here marks a goal: ``met`` or ``MISSED``."""
    return "[green]met[/]" if ok else "[red]MISSED[/]"


def goal_table(title: str) -> Table:
    """The goals table: ratio, value, target, met / MISSED (one row per goal, via ``add_row``)."""
    table = Table(title=title, title_justify="left")
    table.add_column("ratio")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("", justify="left")
    return table


# --- the rows -------------------------------------------------------------------------------------


def make_scope() -> Any:
    from chio_sdk.models import ChioScope, Operation, ToolGrant

    return ChioScope(grants=[ToolGrant(server_id="files", tool_name="read_file", operations=[Operation.INVOKE])])


def integration_scope() -> Any:
    """The child scope the integrations run under: constrained and budgeted."""
    from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant

    return ChioScope(grants=[ToolGrant(
        server_id="files", tool_name="read_file", operations=[Operation.INVOKE],
        constraints=[Constraint.path_prefix("/data/")], max_invocations=10**9,
    )])


class CallKeys:
    """Idempotency keys as the engines make them: run id + call position (unique per call)."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.run}/step-{self.n}"


def floor_bench(workdir: Path, sample_body: bytes) -> Bench:
    """Ed25519 sign of a receipt-sized body + one WAL commit of one row, with the store's own pragmas."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from chio_kernel._sqlite_store import open_store

    d = workdir / "floor"
    d.mkdir()
    conn = open_store(d)
    conn.execute("CREATE TABLE floor_rows (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")
    key = Ed25519PrivateKey.generate()
    counter = [0]
    text = sample_body.decode()

    def op() -> None:
        counter[0] += 1
        sig = key.sign(sample_body)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO floor_rows(seq, id, body) VALUES (?, ?, ?)",
                     (counter[0], f"r{counter[0]}-{sig[:8].hex()}", text))
        conn.execute("COMMIT")

    return Bench("physical floor: Ed25519 sign + 1 SQLite WAL commit", timed_sync(op))


def fresh_kernel(path: Path) -> tuple[Any, str]:
    from chio_kernel import Kernel

    kernel = Kernel(data_dir=path)
    cap = kernel.create_capability(subject="agent:bench", scope=make_scope(), ttl_seconds=86400)
    return kernel, cap.id


def kernel_bench(name: str, kernel: Any, cap_id: str) -> Bench:
    def op() -> None:
        r = kernel.evaluate(cap_id, "files", "read_file", PARAMS)
        if not r.decision.is_allowed:  # a benchmark of denies would measure the wrong path
            raise RuntimeError(f"benchmark call denied: {r.decision}")

    return Bench(name, timed_sync(op))


def integration_bench(name: str, kernel: Any, child_id: str) -> Bench:
    keys = CallKeys("flow-run-inproc")

    def op() -> None:
        r = kernel.evaluate(child_id, "files", "read_file", PARAMS, idempotency_key=keys())
        if not r.decision.is_allowed:
            raise RuntimeError(f"benchmark call denied: {r.decision}")

    return Bench(name, timed_sync(op))


# --- group commit (throughput) ------------------------------------------------------------------


@dataclass
class Rate:
    """Throughput row: total evaluations and wall time over all rounds (+ commits if counted)."""

    name: str
    evals: int = 0
    seconds: float = 0.0
    commits: int | None = None
    retries: int = 0  # sidecar rows: calls retried once on a connection closed while idle
    cpu: float | None = None  # CPU seconds of the server process (or of this process, in-process rows)

    @property
    def cpu_us(self) -> float | None:
        return self.cpu / self.evals * 1e6 if self.cpu is not None and self.evals else None

    @property
    def per_second(self) -> float:
        return self.evals / self.seconds if self.seconds else 0.0


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time of process ``pid``, all its threads: the sum of ``/proc/<pid>/task/*/schedstat`` (ns
    on CPU; threads that exited are left out, the sidecar's event loop and pool threads live as long
    as it does), else ``/proc/<pid>/stat`` utime + stime (10 ms ticks); None where there is no procfs
    (then the CPU rows are skipped, saying so)."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, in ticks


def add_cpu(row: Rate, before: float | None, after: float | None) -> None:
    if before is not None and after is not None:
        row.cpu = (row.cpu or 0.0) + after - before


def local_rate_round(loop: asyncio.AbstractEventLoop, client: Any, cap_id: str, callers: int, per_caller: int,
                     keys: CallKeys | None, row: Rate) -> None:
    store = client.kernel._store

    async def caller() -> None:
        for _ in range(per_caller):
            r = await client.evaluate_tool_call(capability_id=cap_id, tool_server="files", tool_name="read_file",
                                                parameters=PARAMS, idempotency_key=keys() if keys else None)
            if not r.is_allowed:
                raise RuntimeError(f"benchmark call denied: {r.decision}")

    async def run() -> None:
        await asyncio.gather(*(caller() for _ in range(callers)))

    c0 = store.commits
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    loop.run_until_complete(run())
    row.seconds += time.perf_counter() - t0
    row.cpu = (row.cpu or 0.0) + time.process_time() - cpu0
    row.evals += callers * per_caller
    row.commits = (row.commits or 0) + store.commits - c0


def sidecar_client_worker(conn: Any, tag: str) -> None:
    """A client process: on ``(url, cap, callers, per_caller)`` runs that many asyncio callers with one
    ``SidecarClient`` (the ``chio_sdk.ChioClient`` subclass the integrations use: it sends the
    idempotency key) and answers ``(t_start, t_end, evaluations)`` (system-wide monotonic clock)."""
    from chio_kernel import SidecarClient

    loop = asyncio.new_event_loop()
    clients: dict[str, Any] = {}
    keys = CallKeys(f"flow-run-{tag}")
    retried = [0]
    while True:
        msg = conn.recv()
        if msg is None:
            break
        url, cap, callers, per_caller = msg
        client = clients.get(url)
        if client is None:
            client = clients[url] = SidecarClient(url, timeout=60.0)

        async def caller(c: Any = client, cap_id: str | None = cap, k: int = per_caller) -> None:
            for _ in range(k):
                key = keys()
                for attempt in (1, 2):
                    # A keep-alive connection the server closed while idle (uvicorn's 5 s timer; the
                    # gaps between one server's rounds can be that long on a loaded machine) may be
                    # picked just as it closes: retry once, with the same idempotency key (so the
                    # same receipt), and count it.
                    try:
                        if cap_id is None:  # the trivial endpoint of the same stack: the HTTP ceiling
                            await c._post("/echo", ECHO_BODY)
                            break
                        r = await c.evaluate_tool_call(capability_id=cap_id, tool_server="files",
                                                       tool_name="read_file", parameters=PARAMS, idempotency_key=key)
                        if not r.is_allowed:
                            raise RuntimeError(f"benchmark call denied: {r.decision}")
                        break
                    except (httpx.ReadError, httpx.RemoteProtocolError):
                        if attempt == 2:
                            raise
                        retried[0] += 1

        async def run(m: int = callers) -> None:
            await asyncio.gather(*(caller() for _ in range(m)))

        t0 = time.perf_counter()
        retried[0] = 0
        loop.run_until_complete(run())
        conn.send((t0, time.perf_counter(), callers * per_caller, retried[0]))
    for c in clients.values():
        loop.run_until_complete(c.close())
    loop.close()


ECHO_BODY = {"capability_id": "cap-" + "0" * 32, "tool_server": "files", "tool_name": "read_file",
             "parameters": PARAMS, "idempotency_key": "flow-run-echo/step-1"}


def sidecar_rate_round(workers: list[Any], url: str, cap: str | None, callers: int, per_caller: int,
                       row: Rate, server_pid: int | None = None) -> None:
    """One round of the client processes against ``url``; with ``server_pid`` the server process's CPU
    time over the round is added to ``row.cpu`` (read before the first request is sent and after
    the last answer arrived)."""
    cpu0 = process_cpu_seconds(server_pid) if server_pid is not None else None
    for w in workers:
        w.send((url, cap, callers, per_caller))
    answers = [w.recv() for w in workers]
    if server_pid is not None:
        add_cpu(row, cpu0, process_cpu_seconds(server_pid))
    row.seconds += max(a[1] for a in answers) - min(a[0] for a in answers)
    row.evals += sum(a[2] for a in answers)
    row.retries += sum(a[3] for a in answers)


def server_cpu_rows(ratios: Table, sidecar: Rate, echo: Rate, inproc: Rate, sc_url: str,
                    base: Rate | None = None) -> Table | None:
    """The sidecar's own work: server CPU µs per evaluation vs per trivial request vs the kernel in
    process, all from the rounds above; goal: sidecar <= trivial + kernel."""
    if sidecar.cpu_us is None or echo.cpu_us is None or inproc.cpu_us is None:
        ratios.add_row("server CPU per evaluation: sidecar / (trivial + kernel)", "skipped", "≤ 1.00x",
                       "no /proc/<pid>/stat on this system")
        return None
    stack = httpx.get(sc_url + "/chio/health", timeout=30).json().get("server", {})
    where = f"{stack.get('http', '?')} + {stack.get('loop', '?')}"
    table = Table(title=f"server CPU per request (4 processes x 8 callers, integration shape; server stack {where})",
                  title_justify="left")
    table.add_column("what")
    table.add_column("CPU µs / request", justify="right")
    table.add_row("sidecar /v1/evaluate (server process, all threads)", f"{sidecar.cpu_us:,.0f}")
    table.add_row("trivial endpoint, same stack (server process)", f"{echo.cpu_us:,.0f}")
    table.add_row("kernel in-process (LocalChioClient, 8 callers, this process)", f"{inproc.cpu_us:,.0f}")
    if base is not None and base.cpu_us is not None:
        table.add_row(f"{base.name.split(', ', 2)[-1]}: its sidecar /v1/evaluate", f"{base.cpu_us:,.0f}")
    r = sidecar.cpu_us / (echo.cpu_us + inproc.cpu_us)
    ratios.add_row("server CPU per evaluation: sidecar / (trivial + kernel)", f"{r:.2f}x", "≤ 1.00x", verdict(r <= 1))
    return table


#: The last commit before issue 9 (issue 8 complete): the "today" of issue 9's sidecar goal.
BASELINE_REV = "7885ab9"


def extract_baseline(rev: str, work: Path) -> tuple[Path | None, str]:
    """``src/`` of ``rev`` extracted from this checkout's git history into ``work`` (``git archive``):
    ``(path to put on PYTHONPATH, description)``, or ``(None, why not)`` without git, outside a git
    checkout (a tarball) or for an unknown revision."""
    repo = Path(__file__).resolve().parent.parent
    git = shutil.which("git")
    if git is None:
        return None, "git is not installed"
    try:
        full = subprocess.run([git, "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                              capture_output=True, text=True, timeout=30)
        if full.returncode != 0:
            return None, f"revision {rev!r} is not in {repo}'s git history (a tarball or shallow clone?)"
        dest = work / f"baseline-{rev}"
        dest.mkdir(parents=True)
        archive = subprocess.run([git, "-C", str(repo), "archive", full.stdout.strip(), "src"],
                                 capture_output=True, timeout=120, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"could not extract {rev}'s src: {err}"
    src = dest / "src"
    where = subprocess.run([sys.executable, "-c", "import chio_kernel; print(chio_kernel.__file__)"],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(src)})
    if not where.stdout.strip().startswith(str(src)):  # the installed package would shadow it: not a baseline
        return None, f"PYTHONPATH={src} does not import its chio_kernel ({where.stdout.strip() or where.stderr[-200:]})"
    return src, rev if full.stdout.startswith(rev) else f"{rev} = {full.stdout.strip()[:12]}"


# --- bulk fill (flatness) ----------------------------------------------------------------------


def bulk_fill(data_dir: Path, cap_id: str, total: int, console: Console) -> float:
    """Grow the store at ``data_dir`` to ``total`` receipts with valid signed, chained rows.

    Each row is the receipt the kernel would write for an allowed call (same fields, signed with
    the kernel's own key over the same signed body, ``content_hash`` = chain hash of the previous
    row), inserted with ``executemany`` in large transactions instead of one commit per receipt.
    """
    from chio_kernel import canonical_json
    from chio_kernel import receipt_signing_bytes
    from chio_kernel._ids import uuid7
    from chio_kernel.signing import load_or_create_key

    key = load_or_create_key(data_dir)
    kernel_key = key.public_key().public_bytes_raw().hex()
    conn = sqlite3.connect(data_dir / "kernel.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    head_seq, prev = conn.execute("SELECT seq, hash FROM chain_head WHERE k = 0").fetchone()
    last = json.loads(conn.execute("SELECT body FROM receipts ORDER BY seq DESC LIMIT 1").fetchone()[0])
    policy_hash = last["policy_hash"]
    todo = total - head_seq
    started = time.perf_counter()
    dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode
    seq = head_seq
    ts = int(time.time())
    chunk: list[tuple[Any, ...]] = []
    conn.execute("BEGIN IMMEDIATE")
    for i in range(todo):
        seq += 1
        params = {"path": f"/data/fill/{seq}.txt", "max_bytes": 65536}
        h = "%032x" % uuid7().int
        body = {
            "id": f"rcpt-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
            "timestamp": ts,
            "capability_id": cap_id,
            "tool_server": "files",
            "tool_name": "read_file",
            "action": {"parameters": params, "parameter_hash": hashlib.sha256(canonical_json(params)).hexdigest()},
            "decision": {"verdict": "allow"},
            "content_hash": prev,
            "policy_hash": policy_hash,
            "evidence": [],
            "kernel_key": kernel_key,
        }
        body["signature"] = key.sign(receipt_signing_bytes(body)).hex()
        stored = dumps(body)
        prev = hashlib.sha256(stored.encode()).hexdigest()
        chunk.append((seq, body["id"], cap_id, "allow", prev, stored))
        if len(chunk) >= 50_000:
            conn.executemany(
                "INSERT INTO receipts(seq, id, capability_id, verdict, chain_hash, body) VALUES (?,?,?,?,?,?)", chunk
            )
            chunk.clear()
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            done = i + 1
            rate = done / (time.perf_counter() - started)
            console.print(f"  filled {seq:,} receipts ({rate:,.0f}/s, ~{(todo - done) / rate:.0f}s left)",
                          highlight=False)
    if chunk:
        conn.executemany(
            "INSERT INTO receipts(seq, id, capability_id, verdict, chain_hash, body) VALUES (?,?,?,?,?,?)", chunk
        )
    conn.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE k = 0", (seq, prev))
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


def check_fill(kernel: Any, cap_id: str, tail: int = 1000) -> str:
    """Cheap proof the filled store is a valid chain the kernel continues: the last ``tail`` rows'
    signatures and links, and one new evaluation chaining onto the last filled row."""
    from chio_kernel import receipt_chain_hash

    count = kernel.receipt_count()
    rows = kernel.list_receipts_with_seq(after_seq=count - tail)
    receipts = [r for _, r in rows]
    sig_ok = all(kernel.verify_receipt(r) for r in receipts)
    links_ok = all(
        receipts[i].content_hash == receipt_chain_hash(receipts[i - 1]) for i in range(1, len(receipts))
    )
    nxt = kernel.evaluate(cap_id, "files", "read_file", PARAMS)
    continues = nxt.content_hash == receipt_chain_hash(receipts[-1])
    if not (sig_ok and links_ok and continues):
        raise RuntimeError(f"bulk fill is not a valid chain: signatures={sig_ok} links={links_ok} next={continues}")
    return f"last {len(receipts)} filled receipts verified (signatures + links); next evaluation chains onto them"


# --- main -----------------------------------------------------------------------------------------


DEPTH_SCRIPT = """
import sys, time
from chio_kernel import Kernel
where, depth = sys.argv[1], int(sys.argv[2])
def kernel():
    try:
        return Kernel(data_dir=where, max_delegation_depth=depth)
    except TypeError:  # the code before delegation limits
        return Kernel(data_dir=where)
k = kernel()
scope = {"grants": [{"server_id": "files", "tool_name": "tool_0", "operations": ["Invoke"]}]}
cap = k.create_capability("agent:bench", scope, 86400)
for _ in range(depth):
    cap = k.attenuate_capability(cap.id, scope)
k.close()
cold = kernel()  # an empty verified-capability cache: the first evaluation checks the whole chain
t0 = time.perf_counter()
verdict = cold.evaluate(cap.id, "files", "tool_0", {}).decision.verdict
print(time.perf_counter() - t0, verdict)
"""


ATTENUATE_SCRIPT = """
import sys, time
from chio_kernel import Kernel
where, n = sys.argv[1], int(sys.argv[2])
try:
    k = Kernel(data_dir=where, max_grants=n)
except TypeError:  # the code before grant limits
    k = Kernel(data_dir=where)
grants = [{"server_id": "files", "tool_name": "read_file", "operations": ["Invoke"],
           "constraints": [{"type": "path_prefix", "value": f"/data/{i}/"}]} for i in range(n)]
parent = k.create_capability("agent:bench", {"grants": grants}, 86400)
t0 = time.process_time()
k.attenuate_capability(parent.id, {"grants": grants[::-1]})  # each grant's match last in an all-pairs scan
print(time.process_time() - t0)
"""


def attenuate_cpu(src: Path | None, where: Path, grants: int) -> float:
    """CPU seconds of ``Kernel.attenuate_capability`` of ``grants``-of-``grants``, in a subprocess
    running ``src`` (None: this checkout's)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, "-c", ATTENUATE_SCRIPT, str(where), str(grants)], capture_output=True,
                         text=True, timeout=1800, env=env, check=True).stdout.split()
    return float(out[0])


def first_eval_at_depth(src: Path | None, where: Path, depth: int) -> tuple[float, str]:
    """Seconds of the first evaluation of a capability ``depth`` delegations deep on a cold kernel, in
    a subprocess running ``src`` (None: this checkout's)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, "-c", DEPTH_SCRIPT, str(where), str(depth)], capture_output=True,
                         text=True, timeout=900, env=env, check=True).stdout.split()
    return float(out[0]), out[1]


def capability_work_rows(work: Path, ratios: Table, base: tuple[Path | None, str], grants: int = 5_000,
                         depth: int = 200) -> Table:
    """Bounded work on big inputs, each measured in this run: attenuating ``grants``-of-``grants`` (one
    tool, each grant its own ``path_prefix``; the child's grants in reverse order) now and with the
    code before (``base``: its ``src``, else the SDK's all-pairs ``ChioScope.is_subset_of`` that code
    ran), the first evaluation at delegation depth ``depth`` on a cold kernel now and before, and the
    deny reason of a capability with 10,000 grants."""
    from chio_sdk.models import ChioScope

    from chio_kernel import Kernel

    base_src, base_what = base
    table = Table(title="bounded work on big inputs (one run)", title_justify="left")
    table.add_column("what")
    table.add_column("figure", justify="right")
    now = attenuate_cpu(None, work / "attenuate-now", grants)
    table.add_row(f"attenuate {grants:,}-of-{grants:,} grants (one tool, a path_prefix each), CPU s", f"{now:.2f}")
    if base_src is not None:
        before, what = attenuate_cpu(base_src, work / "attenuate-before", grants), f"the code before ({base_what})"
    else:  # the check the code before ran: every child grant against every parent grant
        scope = ChioScope(grants=[{"server_id": "files", "tool_name": "read_file", "operations": ["Invoke"],
                                   "constraints": [{"type": "path_prefix", "value": f"/data/{i}/"}]}
                                  for i in range(grants)])
        t0 = time.process_time()
        assert ChioScope(grants=scope.grants[::-1]).is_subset_of(scope)
        before, what = time.process_time() - t0, "all-pairs ChioScope.is_subset_of"
    table.add_row(f"  the same, {what}, CPU s", f"{before:.2f}")
    first_eval, verdict_depth = first_eval_at_depth(None, work / "depth-now", depth)
    table.add_row(f"first evaluation at delegation depth {depth}, cold kernel ({verdict_depth}), s", f"{first_eval:.3f}")
    depth_before = first_eval_at_depth(base_src, work / "depth-before", depth)[0] if base_src is not None else None
    if depth_before is not None:
        table.add_row(f"  the same, the code before ({base_what}), s", f"{depth_before:.3f}")
    with Kernel(data_dir=work / "wide", max_grants=10_000) as kernel:
        wide = kernel.create_capability(
            subject="agent:bench", ttl_seconds=86400,
            scope={"grants": [{"server_id": "files", "tool_name": f"tool_{i}", "operations": ["Invoke"]}
                              for i in range(10_000)]})
        reason = kernel.evaluate(wide.id, "files", "other_tool", {}).decision.reason or ""
    table.add_row("deny reason of a 10,000-grant capability, characters", f"{len(reason):,}")
    r = now / before
    ratios.add_row(f"attenuate {grants:,}-of-{grants:,}: now / before, CPU", f"{r:.3f}x", "≤ 0.05x", verdict(r <= 0.05))
    if depth_before is not None:
        r = first_eval / depth_before
        ratios.add_row(f"first evaluation at depth {depth}: now / before", f"{r:.3f}x", "≤ 0.20x", verdict(r <= 0.2))
    else:
        ratios.add_row(f"first evaluation at depth {depth}: now / before", "skipped", "≤ 0.20x", base_what)
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="samples per row (default 2000; 400 with --quick)")
    ap.add_argument("--quick", action="store_true", help="fewer samples, flatness up to 100,000 receipts")
    ap.add_argument("--max-receipts", type=int, default=None,
                    help="store size for the flatness check (default 1,000,000; 100,000 with --quick; 0 skips)")
    ap.add_argument("--verify-fill", action="store_true",
                    help="also run the full Kernel.verify_chain() over the filled store (slow at 1e6)")
    ap.add_argument("--baseline-rev", default=BASELINE_REV,
                    help=f"git revision whose sidecar is the 'before issue 9' row (default {BASELINE_REV}; "
                    "'' skips the row)")
    ap.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    n = args.n or (400 if args.quick else 2000)
    max_receipts = args.max_receipts if args.max_receipts is not None else (100_000 if args.quick else 1_000_000)
    rounds = 5
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="chio-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    loop = asyncio.new_event_loop()
    try:
        from chio_sdk import ChioClient
        from chio_sdk.testing import allow_all

        console.print(f"[bold]chio-durable kernel benchmark[/]  n={n} per row, {rounds} interleaved rounds, work dir {work}")

        # servers: the sidecar and the trivial echo server, same stack
        sc_port, echo_port = free_port(), free_port()
        cli = Path(sys.executable).parent / "chio-durable"
        cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "chio_kernel.cli"]
        procs.append(subprocess.Popen([*cmd, "sidecar", "--port", str(sc_port), "--data-dir", str(work / "sidecar")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve-echo", str(echo_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # the same sidecar with group commit off: one transaction per evaluation, as before it
        off_port = free_port()
        procs.append(subprocess.Popen([*cmd, "sidecar", "--port", str(off_port), "--data-dir", str(work / "sidecar-off")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ, "CHIO_GROUP_COMMIT": "1"}))
        sc_url, echo_url = f"http://127.0.0.1:{sc_port}", f"http://127.0.0.1:{echo_port}"
        off_url = f"http://127.0.0.1:{off_port}"
        # the sidecar of the code before issue 9 (same interpreter and packages, its own src first)
        base_src, base_what = (extract_baseline(args.baseline_rev, work) if args.baseline_rev
                               else (None, "--baseline-rev ''"))
        base_url: str | None = None
        if base_src is not None:
            base_port = free_port()
            base_url = f"http://127.0.0.1:{base_port}"
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "chio_kernel.cli", "sidecar", "--port", str(base_port),
                 "--data-dir", str(work / "sidecar-base")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={k: v for k, v in {**os.environ, "PYTHONPATH": str(base_src)}.items()
                     if k not in ("CHIO_STORE", "CHIO_GROUP_COMMIT")}))
        else:
            console.print(f"[yellow]no 'before issue 9' sidecar row: {base_what}[/]")
        wait_healthy(sc_url + "/chio/health", procs[0])
        wait_healthy(echo_url + "/chio/health", procs[1])
        wait_healthy(off_url + "/chio/health", procs[2])
        if base_url is not None:
            wait_healthy(base_url + "/chio/health", procs[3])

        mock = allow_all()
        sc_client = ChioClient(sc_url)
        echo_client = ChioClient(echo_url)
        sc_cap = loop.run_until_complete(
            sc_client.create_capability(subject="agent:bench", scope=make_scope(), ttl_seconds=86400)).id
        kernel, cap_id = fresh_kernel(work / "inproc")
        child_id = kernel.attenuate_capability(cap_id, integration_scope()).id

        async def sidecar_child(url: str) -> str:
            c = ChioClient(url)
            try:
                root = await c.create_capability(subject="agent:bench", scope=make_scope(), ttl_seconds=86400)
                return (await c.attenuate_capability(root, new_scope=integration_scope())).id
            finally:
                await c.close()

        sc_child = loop.run_until_complete(sidecar_child(sc_url))
        off_child = loop.run_until_complete(sidecar_child(off_url))
        base_child = loop.run_until_complete(sidecar_child(base_url)) if base_url is not None else None
        sample = kernel.evaluate(cap_id, "files", "read_file", PARAMS)
        from chio_kernel import receipt_signing_bytes

        sample_body = receipt_signing_bytes(sample)
        eval_body = {"capability_id": sc_cap, "tool_server": "files", "tool_name": "read_file",
                     "parameters": PARAMS, "parameter_hash": sample.action.parameter_hash}

        async def mock_op() -> None:
            await mock.evaluate_tool_call(capability_id="cap", tool_server="files", tool_name="read_file",
                                          parameters=PARAMS)

        async def sidecar_op() -> None:
            r = await sc_client.evaluate_tool_call(capability_id=sc_cap, tool_server="files", tool_name="read_file",
                                                   parameters=PARAMS)
            if not r.is_allowed:
                raise RuntimeError(f"benchmark call denied: {r.decision}")

        async def echo_op() -> None:
            await echo_client._post("/echo", eval_body)  # same client, same body size, trivial endpoint

        benches = [
            Bench("chio_sdk.testing.allow_all() mock", timed_async(loop, mock_op)),
            floor_bench(work, sample_body),
            kernel_bench("Kernel.evaluate (in-process)", kernel, cap_id),
            integration_bench("Kernel.evaluate, integration shape (attenuated + constrained, idempotency key)",
                              kernel, child_id),
            Bench("sidecar /v1/evaluate over loopback (ChioClient)", timed_async(loop, sidecar_op)),
            Bench("plain loopback HTTP round-trip (same stack)", timed_async(loop, echo_op)),
        ]
        interleave(benches, n, rounds, warmup=max(20, n // 20))
        mock_b, floor_b, inproc_b, integ_b, sidecar_b, http_b = benches

        table = Table(title="latency of one evaluation (sequential)", title_justify="left")
        table.add_column("what")
        table.add_column("p50 µs", justify="right")
        table.add_column("p99 µs", justify="right")
        table.add_column("evals/s", justify="right")
        for b in benches:
            table.add_row(b.name, f"{b.p50:,.1f}", f"{b.p99:,.1f}", f"{b.per_second:,.0f}")

        ratios = goal_table("ratios (p50)")

        r1 = inproc_b.p50 / floor_b.p50
        r1i = integ_b.p50 / floor_b.p50
        r2 = sidecar_b.p50 / (http_b.p50 + floor_b.p50)
        ratios.add_row("single call p50: in-process / floor", f"{r1:.2f}x", "≤ 2.00x", verdict(r1 <= 2))
        ratios.add_row("single call p50, integration shape / floor", f"{r1i:.2f}x", "≤ 2.00x", verdict(r1i <= 2))
        ratios.add_row("sidecar / (HTTP round-trip + floor)", f"{r2:.2f}x", "≤ 2.00x", verdict(r2 <= 2))

        # group commit: throughput rows, interleaved rounds
        console.print("group commit: LocalChioClient 1 vs 8 callers, sidecar 4 processes x 8 callers on / off ...")
        import multiprocessing

        from chio_kernel import LocalChioClient

        ctx = multiprocessing.get_context("spawn")
        pipes, workers = [], []
        for i in range(4):
            parent_end, child_end = ctx.Pipe()
            w = ctx.Process(target=sidecar_client_worker, args=(child_end, f"p{i}"), daemon=True)
            w.start()
            pipes.append(parent_end)
            workers.append(w)
        local = LocalChioClient(kernel=kernel)
        keys = CallKeys("flow-run-local")
        seq_row, par_row = Rate("LocalChioClient, 1 sequential caller"), Rate("LocalChioClient, 8 asyncio callers")
        iseq_row = Rate("LocalChioClient, 1 sequential caller, integration shape")
        ipar_row = Rate("LocalChioClient, 8 asyncio callers, integration shape")
        on_row = Rate("sidecar, 4 processes x 8 callers, group commit on")
        off_row = Rate("sidecar, 4 processes x 8 callers, CHIO_GROUP_COMMIT=1 (before)")
        echo_row = Rate("plain HTTP (same stack, trivial endpoint), 4 processes x 8 callers: the ceiling")
        base_row = Rate(f"sidecar, 4 processes x 8 callers, before issue 9 ({base_what})")
        per_caller = max(10, n // rounds // 4)
        sc_per = max(4, n // 200)
        local_rate_round(loop, local, child_id, 8, 2, keys, Rate("warm-up"))
        sidecar_rate_round(pipes, sc_url, sc_child, 8, 2, Rate("warm-up"))
        sidecar_rate_round(pipes, off_url, off_child, 8, 2, Rate("warm-up"))
        if base_url is not None:
            sidecar_rate_round(pipes, base_url, base_child, 8, 2, Rate("warm-up"))
        for _ in range(rounds):
            local_rate_round(loop, local, cap_id, 1, per_caller * 8, None, seq_row)
            local_rate_round(loop, local, cap_id, 8, per_caller, None, par_row)
            local_rate_round(loop, local, child_id, 1, per_caller * 8, keys, iseq_row)
            local_rate_round(loop, local, child_id, 8, per_caller, keys, ipar_row)
            sidecar_rate_round(pipes, sc_url, sc_child, 8, sc_per, on_row, server_pid=procs[0].pid)
            sidecar_rate_round(pipes, off_url, off_child, 8, sc_per, off_row)
            sidecar_rate_round(pipes, echo_url, None, 8, sc_per, echo_row, server_pid=procs[1].pid)
            if base_url is not None:
                sidecar_rate_round(pipes, base_url, base_child, 8, sc_per, base_row, server_pid=procs[3].pid)
        for pe in pipes:
            pe.send(None)
        for w in workers:
            w.join(30)

        rates = Table(title="group commit: evaluations/s (interleaved rounds; sidecar rows: integration shape)",
                      title_justify="left")
        rates.add_column("what")
        rates.add_column("evaluations", justify="right")
        rates.add_column("evals/s", justify="right")
        rates.add_column("commits/eval", justify="right")
        for row in (seq_row, par_row, iseq_row, ipar_row, on_row, off_row, *([base_row] if base_row.evals else []),
                    echo_row):
            cpe = f"{row.commits / row.evals:.2f}" if row.commits is not None else ""
            rates.add_row(row.name, f"{row.evals:,}", f"{row.per_second:,.0f}", cpe)
        g1 = par_row.per_second / seq_row.per_second
        g2 = (par_row.commits or 0) / par_row.evals
        g1i = ipar_row.per_second / iseq_row.per_second
        g2i = (ipar_row.commits or 0) / ipar_row.evals
        g3 = on_row.per_second / off_row.per_second
        ratios.add_row("8 asyncio callers / 1 sequential caller (LocalChioClient)", f"{g1:.2f}x", "≥ 1.50x",
                       verdict(g1 >= 1.5))
        ratios.add_row("  the same, integration shape", f"{g1i:.2f}x", "≥ 1.50x", verdict(g1i >= 1.5))
        ratios.add_row("commits per evaluation, 8 callers", f"{g2:.2f}", "≤ 0.30", verdict(g2 <= 0.3))
        ratios.add_row("  the same, integration shape", f"{g2i:.2f}", "≤ 0.30", verdict(g2i <= 0.3))
        ratios.add_row("sidecar 4x8 callers: group commit / CHIO_GROUP_COMMIT=1", f"{g3:.2f}x", "≥ 2.00x",
                       verdict(g3 >= 2))
        cpu_table = server_cpu_rows(ratios, on_row, echo_row, ipar_row, sc_url, base_row)
        if base_row.evals:
            g4 = on_row.per_second / base_row.per_second
            ratios.add_row("sidecar 4x8: now / before issue 9", f"{g4:.2f}x", "≥ 2.00x", verdict(g4 >= 2))
        else:
            ratios.add_row("sidecar 4x8: now / before issue 9", "skipped", "≥ 2.00x", base_what)

        flat_note = None
        if max_receipts and max_receipts > 1000:
            console.print(f"flatness: building a 1,000-receipt store, then a copy grown to {max_receipts:,} ...")
            small_dir, big_dir = work / "flat-1k", work / "flat-big"
            small, small_cap = fresh_kernel(small_dir)
            for i in range(1000 - small.receipt_count()):
                small.evaluate(small_cap, "files", "read_file", {"path": f"/data/warm/{i}.txt", "max_bytes": 1})
            small.close()
            shutil.copytree(small_dir, big_dir)
            took = bulk_fill(big_dir, small_cap, max_receipts, console)
            from chio_kernel import Kernel

            small, big = Kernel(data_dir=small_dir), Kernel(data_dir=big_dir)
            # The bulk insert wrote no checkpoints; a kernel that grew to this size cut them as it went.
            # Cut them now, before measuring: else the background cutter catches up on a million
            # receipts during the rounds and takes the GIL from the evaluations measured.
            t0 = time.perf_counter()
            cut = len(small.checkpoint_now()) + len(big.checkpoint_now())
            flat_note = (f"grown by bulk insert of {max_receipts - 1000:,} valid signed receipts in {took:.0f}s; "
                         f"{cut:,} checkpoints cut before measuring in {time.perf_counter() - t0:.0f}s; "
                         + check_fill(big, small_cap))
            if args.verify_fill:
                t0 = time.perf_counter()
                report = big.verify_chain()
                flat_note += f"; full verify_chain: ok={report.ok} count={report.count:,} in {time.perf_counter() - t0:.0f}s"
                if not report.ok:
                    raise RuntimeError(f"filled store does not verify: {report}")
            fb = [kernel_bench(f"Kernel.evaluate @ {small.receipt_count():,} receipts", small, small_cap),
                  kernel_bench(f"Kernel.evaluate @ {big.receipt_count():,} receipts", big, small_cap)]
            interleave(fb, n, rounds, warmup=max(20, n // 20))
            for b in fb:
                table.add_row(b.name, f"{b.p50:,.1f}", f"{b.p99:,.1f}", f"{b.per_second:,.0f}")
            r3 = fb[1].p50 / fb[0].p50
            ratios.add_row(f"p50 @ {max_receipts:,} / p50 @ 1,000 receipts", f"{r3:.2f}x", "≤ 1.20x", verdict(r3 <= 1.2))

        console.print("bounded work: attenuate 5,000 of 5,000 grants, depth 200, a 10,000-grant deny ...")
        work_table = capability_work_rows(work, ratios, (base_src, base_what))
        console.print(table)
        console.print(rates)
        console.print(work_table)
        if cpu_table is not None:
            console.print(cpu_table)
        console.print(ratios)
        if flat_note:
            console.print(f"[dim]flatness store: {flat_note}[/]")
        retried = {r.name: r.retries for r in (on_row, off_row, base_row, echo_row) if r.retries}
        if retried:
            console.print(f"[dim]calls retried once on a keep-alive connection the server closed: {retried}[/]")
        console.print(f"[dim]mock p50 {mock_b.p50:.1f} µs is the SDK test double (no signing, no storage).[/]")
        from bench_postgres import postgres_rows  # PostgreSQL vs SQLite (skipped, saying why, without a server)

        postgres_rows(console, work, n)
        loop.run_until_complete(sc_client.close())
        loop.run_until_complete(echo_client.close())
        return 0
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        loop.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
