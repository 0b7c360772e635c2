"""Does the service hold under attack and faults? The replay behind docs/BENCHMARKS.md's reliability table.

    python benchmarks/reliability.py            # attacks + faults (kill -9 three times each), ~3 minutes
    python benchmarks/reliability.py --kills 1  # quicker

Sections, each against real ``lieprop serve`` / ``lieprop predict`` processes on 127.0.0.1:

1. **Attacks**: every request of the red-team catalogue tests/attacks.py (hostile bodies, bad molecules, path and
   SQL injection, keys, uploads and gzip bombs, oversize headers), checked by the catalogue's own rules (status,
   error code, per-molecule codes, time), then an ordinary request whose answer must equal its answer before.
2. **Faults**, each with the rows it could lose:
   - a REST job whose server is killed with SIGKILL ``--kills`` times while it runs, restarted each time;
   - ``lieprop predict`` killed with SIGKILL ``--kills`` times, resumed each time with ``--resume``;
   - another process holding the job database's write lock for 7 s while a job runs (predictions are sent
     meanwhile, every 0.2 s);
   - a finished job's results file damaged on disk (its download must fail loudly, never send a short 200);
   - a garbled job database at start (predictions must be served, job routes 503).

   Rows lost = input rows missing from the final output, plus rows whose values differ from an uninterrupted run.

The light-request latency under heavy load is benchmarks/hostile_load.py. The server serves the bundled model.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import attacks  # noqa: E402  (tests/attacks.py: the catalogue)
from test_jobs import distinct_csv, upload  # noqa: E402
from test_service import start_server  # noqa: E402

from lieprop.inference import default_model_path  # noqa: E402
from lieprop.scoring.pipeline import ScoreOptions, score_file  # noqa: E402

PROPS = ("homo", "gap")


@dataclass
class Row:
    """One line of the table."""

    check: str
    tried: int
    as_specified: int
    served: int = 0  # requests answered (any status) during the check
    server_errors: int = 0  # 5xx nobody asked for
    rows_expected: int = 0
    rows_lost: int = 0
    notes: list[str] = field(default_factory=list)


def replay_attacks(tmp: Path, bundle: Path) -> Row:
    server = start_server(tmp, bundle, *attacks.server_args(), env=attacks.server_env())
    row = Row("attacks (tests/attacks.py)", len(attacks.ATTACKS), 0)
    golden = {"molecules": [attacks.WATER_ATOMS, {"smiles": "CCO"}, {"xyz": attacks.WATER_XYZ}]}
    try:
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            key = {"x-api-key": attacks.API_KEY}
            before = client.post("/v1/predict", json=golden, headers=key).json()["results"]
            for attack in attacks.ATTACKS:
                started = time.monotonic()
                r = client.request(attack.method, attack.path, **attacks.request_kwargs(attack))
                problems = attacks.violations(attack, r.status_code, dict(r.headers), r.content,
                                              time.monotonic() - started)
                row.served += 1
                row.server_errors += r.status_code >= 500 and r.status_code not in attack.expect
                row.as_specified += not problems
                row.notes += [f"{attack.name}: {p}" for p in problems]
            after = client.post("/v1/predict", json=golden, headers=key).json()["results"]
            if after != before:
                row.notes.append("an ordinary request's answer changed after the attacks")
            if server.process.poll() is not None:
                row.notes.append("the server died")
    finally:
        server.stop()
    return row


def _reference(source: Path, tmp: Path, bundle: Path) -> list[dict]:
    out = tmp / f"reference-{source.stem}.csv"
    score_file(source, out, ScoreOptions(chunk_size=5, properties=PROPS), model=bundle, workers=1)
    return list(csv.DictReader(io.StringIO(out.read_text())))


def _lost(expected: list[dict], got: list[dict]) -> int:
    """Rows missing from ``got`` or different from ``expected`` (same order; values to 1e-5 of max(1, |value|): float32
    batches of other sizes move a value by ~1e-7 and an ensemble's std, a difference of members, by up to ~4e-6)."""
    lost = max(0, len(expected) - len(got))
    for a, b in zip(expected, got, strict=False):
        for k, v in a.items():
            w = b.get(k)
            try:
                same = abs(float(v) - float(w)) <= 1e-5 * max(1.0, abs(float(v)))
            except (TypeError, ValueError):
                same = v == w
            if not same:
                lost += 1
                break
    return lost


def _wait(client: httpx.Client, job_id: str, condition, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if condition(job) or job["state"] in ("failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id}: {job}")


def descendants(pid: int) -> set[int]:
    """The process ids below ``pid`` (its pool workers and their fork server), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive_after(pids: set[int], seconds: float = 5.0) -> int:
    """How many of ``pids`` are still running ``seconds`` after their owner was killed."""
    deadline = time.monotonic() + seconds
    while True:
        alive = {p for p in pids if Path(f"/proc/{p}").exists()
                 and "zombie" not in Path(f"/proc/{p}/status").read_text(errors="replace")}
        if not alive or time.monotonic() > deadline:
            return len(alive)
        time.sleep(0.1)


def rest_job_killed(tmp: Path, bundle: Path, kills: int, n: int = 200) -> Row:
    source = distinct_csv(tmp / "rest.csv", n)
    expected = _reference(source, tmp, bundle)
    data = tmp / "rest-data"
    args = ("--data-dir", str(data), "--job-workers", "1", "--job-nice", "0")
    row = Row(f"REST job, server kill -9 x{kills}", 1, 0, rows_expected=n)
    job_id = None
    orphans = 0
    for k in range(kills):
        server = start_server(tmp, bundle, *args)
        try:
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                if job_id is None:
                    job_id = upload(client, source, chunk_size=5, properties=",".join(PROPS))["id"]
                target = (k + 1) * n // (kills + 2)
                _wait(client, job_id, lambda j, t=target: j["progress"]["rows_done"] >= t)
        finally:
            children = descendants(server.process.pid)
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(30)
            orphans += alive_after(children)
    row.notes.append(f"{orphans} of the killed servers' child processes still running 5 s after each kill")
    server = start_server(tmp, bundle, *args)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            job = _wait(client, job_id, lambda j: j["state"] == "succeeded")
            row.notes.append(f"state {job['state']} after {job['attempts']} attempts")
            got = list(csv.DictReader(io.StringIO(client.get(f"/v1/jobs/{job_id}/results",
                                                             params={"format": "csv"}).text)))
    finally:
        server.stop()
    row.rows_lost = _lost(expected, got)
    row.as_specified = int(job["state"] == "succeeded" and row.rows_lost == 0 and orphans == 0)
    return row


def cli_killed(tmp: Path, bundle: Path, kills: int, n: int = 300) -> Row:
    source = distinct_csv(tmp / "cli.csv", n)
    whole = tmp / "cli-whole.csv"
    score_file(source, whole, ScoreOptions(chunk_size=5, properties=PROPS), model=bundle, workers=1)
    out = tmp / "cli-out.csv"
    progress = tmp / "cli-out.csv.partial" / "progress.json"
    cmd = [sys.executable, "-m", "lieprop.cli", "predict", str(source), "--out", str(out), "--model", str(bundle),
           "--chunk-size", "5", "--properties", *PROPS, "--no-progress", "--workers", "1", "-q"]
    row = Row(f"lieprop predict, kill -9 x{kills}", 1, 0, rows_expected=n)
    for k in range(kills):
        process = subprocess.Popen(cmd + (["--resume"] if k else []), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        target = (k + 1) * n // (kills + 2)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if json.loads(progress.read_text())["rows_done"] >= target:
                    break
            except (FileNotFoundError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    same = out.exists() and out.read_bytes() == whole.read_bytes()
    got = list(csv.DictReader(io.StringIO(out.read_text()))) if out.exists() else []
    row.rows_lost = _lost(list(csv.DictReader(io.StringIO(whole.read_text()))), got)
    row.as_specified = int(done.returncode == 0 and same)
    row.notes.append("byte-identical to an uninterrupted run" if same else f"differs (exit {done.returncode})")
    return row


def database_locked(tmp: Path, bundle: Path, n: int = 100) -> Row:
    source = distinct_csv(tmp / "lock.csv", n)
    expected = _reference(source, tmp, bundle)
    data = tmp / "lock-data"
    server = start_server(tmp, bundle, "--data-dir", str(data), "--job-workers", "1", "--job-nice", "0")
    row = Row("job database write-locked 7 s", 1, 0, rows_expected=n)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            job_id = upload(client, source, chunk_size=5, properties=",".join(PROPS))["id"]
            locker = sqlite3.connect(data / "jobs.sqlite3", isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")
            ok = 0
            try:
                end = time.monotonic() + 7
                while time.monotonic() < end:
                    r = client.post("/v1/predict", json={"molecules": [attacks.WATER_ATOMS]})
                    row.served += 1
                    ok += r.status_code == 200
                    row.server_errors += r.status_code >= 500
                    time.sleep(0.2)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            job = _wait(client, job_id, lambda j: j["state"] == "succeeded")
            got = list(csv.DictReader(io.StringIO(client.get(f"/v1/jobs/{job_id}/results",
                                                             params={"format": "csv"}).text)))
    finally:
        server.stop()
    row.rows_lost = _lost(expected, got)
    row.as_specified = int(job["state"] == "succeeded" and row.rows_lost == 0 and ok == row.served)
    row.notes.append(f"{ok}/{row.served} predictions answered 200 during the lock; job {job['state']}")
    return row


def results_damaged(tmp: Path, bundle: Path) -> Row:
    data = tmp / "damage-data"
    server = start_server(tmp, bundle, "--data-dir", str(data), "--job-workers", "1", "--job-nice", "0")
    row = Row("finished job's results damaged on disk", 2, 0)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            job_id = upload(client, distinct_csv(tmp / "damage.csv", 30), properties="homo")["id"]
            _wait(client, job_id, lambda j: j["state"] == "succeeded")
            results = next((data / "jobs" / job_id).glob("results*.jsonl"))
            raw = bytearray(results.read_bytes())
            raw[len(raw) // 2] ^= 0x20
            results.write_bytes(bytes(raw))
            for fmt in ("jsonl", "csv"):
                r = client.get(f"/v1/jobs/{job_id}/results", params={"format": fmt})
                row.served += 1
                code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
                row.as_specified += code == "results_damaged"
                row.notes.append(f"{fmt}: {r.status_code} {code}")
    finally:
        server.stop()
    return row


def database_garbled(tmp: Path, bundle: Path) -> Row:
    data = tmp / "garbled-data"
    data.mkdir()
    (data / "jobs.sqlite3").write_bytes(b"this is not a database" * 100)
    server = start_server(tmp, bundle, "--data-dir", str(data))
    row = Row("garbled job database at start", 2, 0)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            predict = client.post("/v1/predict", json={"molecules": [attacks.WATER_ATOMS]})
            jobs = client.get("/v1/jobs")
            row.served = 2
            row.as_specified = int(predict.status_code == 200) + int(jobs.status_code == 503)
            row.notes.append(f"predict {predict.status_code}, jobs {jobs.status_code}")
    finally:
        server.stop()
    return row


def print_table(rows: list[Row]) -> None:
    print("| check | tried | as specified | requests served | unasked 5xx | rows expected | rows lost |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.check} | {r.tried} | {r.as_specified} | {r.served} | {r.server_errors} | "
              f"{r.rows_expected or '-'} | {r.rows_lost if r.rows_expected else '-'} |")
    print()
    for r in rows:
        for note in r.notes:
            print(f"- {r.check}: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per killed run (default 3)")
    parser.add_argument("--model", type=Path, default=None, help="bundle to serve (default: the bundled model)")
    args = parser.parse_args(argv)
    bundle = args.model or default_model_path()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for step in (lambda: replay_attacks(tmp, bundle), lambda: rest_job_killed(tmp, bundle, args.kills),
                     lambda: cli_killed(tmp, bundle, args.kills), lambda: database_locked(tmp, bundle),
                     lambda: results_damaged(tmp, bundle), lambda: database_garbled(tmp, bundle)):
            started = time.monotonic()
            rows.append(step())
            print(f"{rows[-1].check}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print_table(rows)
    return 0 if all(r.as_specified == r.tried and r.rows_lost == 0 for r in rows) else 1


if __name__ == "__main__":
    threading.excepthook = lambda a: None  # a killed server's reader threads: nothing to report
    raise SystemExit(main())
