"""Batch scoring: ``lieprop predict`` (streaming, resumable), REST jobs (real uvicorn, restarts) and the Ray engine."""

from __future__ import annotations

import csv
import datetime
import io
import itertools
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from crashing_parser import parse_or_crash
from test_service import Server, make_tiny_bundle, start_server

import lieprop
from lieprop.cli import main as cli
from lieprop.scoring.output import OutputError
from lieprop.scoring.pipeline import ScoreOptions, score_file

DATA = Path(__file__).parent / "data"
PROPS = ["homo", "gap", "u0", "u0_atomization", "cv"]
# Thousands of different small molecules (C, N, O; 2-8 heavy atoms), so that no embedding is served from the cache.
DISTINCT = ["".join(p) for n in (2, 3, 4)
            for p in itertools.product(["C", "N", "O", "C(C)", "C(=O)", "C(O)", "C(N)", "C#C"], repeat=n)]
#: (id, SMILES, expected error code or None): valid, invalid and out-of-domain rows.
MIXED = [
    ("ethanol", "CCO", None), ("benzene", "c1ccccc1", None), ("ring-not-closed", "C1CC", "invalid_smiles"),
    ("ammonium", "[NH4+]", "charged_molecule"), ("chloroethane", "CCCl", "unsupported_element"),
    ("decane", "CCCCCCCCCC", "too_many_atoms"), ("two-pieces", "C.O", "invalid_smiles"), ("empty", "", "empty_input"),
    ("water", "O", None), ("sodium", "[Na]", "unsupported_element"), ("acetic acid", "CC(=O)O", None),
    ("not smiles", "hello world", "invalid_smiles"), ("fluoro", "FC(F)F", None),
]


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.pt")


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("name", "smiles")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def mixed_csv(path: Path) -> Path:
    return write_csv(path, [(ident, smiles) for ident, smiles, _ in MIXED])


def distinct_csv(path: Path, n: int) -> Path:
    """``n`` rows of different SMILES; every 7th row is an invalid SMILES."""
    return write_csv(path, [(f"m{i}", DISTINCT[i] if i % 7 else "C1CC") for i in range(n)])


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_csv(a: bytes, b: bytes, rel: float = 1e-6) -> None:
    """Two result CSVs hold the same rows in the same order, with the same values to float32 rounding: a molecule whose
    frames share a model call with other molecules' frames may differ in the last bits (docs/DESIGN.md)."""
    ra, rb = list(csv.reader(io.StringIO(a.decode()))), list(csv.reader(io.StringIO(b.decode())))
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb, strict=True):
        assert len(x) == len(y)
        for u, v in zip(x, y, strict=True):
            try:
                fu, fv = float(u), float(v)
            except ValueError:
                assert u == v
                continue
            assert abs(fu - fv) <= rel * max(1.0, abs(fu)), (x, y)


def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lieprop.cli", "predict", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """Ctrl-C as a terminal gives it: a test run started in the background (``cmd &``) inherits SIGINT ignored,
    and Python keeps an ignored SIGINT ignored, so the child would never see the interrupt the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


# --------------------------------------------------------------------------------------------------
# lieprop predict


def test_every_input_row_gets_one_output_row_in_order(tmp_path, bundle_path, capsys):
    source = mixed_csv(tmp_path / "mixed.csv")
    assert cli(["predict", str(source), "--out", str(tmp_path / "out.csv"), "--model", str(bundle_path),
                "--workers", "2", "--chunk-size", "4", "--properties", *PROPS]) == 0
    rows = read_rows(tmp_path / "out.csv")
    assert [r["index"] for r in rows] == [str(i) for i in range(len(MIXED))]
    assert [(r["id"], r["smiles"]) for r in rows] == [(i, s) for i, s, _ in MIXED]
    assert [r["error"] or None for r in rows] == [code for _, _, code in MIXED]
    for row, (_, _, code) in zip(rows, MIXED, strict=True):
        assert row["ok"] == ("false" if code else "true")
        assert bool(row["error_message"]) == bool(code)
        assert all(bool(row[f"{p} [{u}]"]) != bool(code) for p, u in
                   [("homo", "eV"), ("gap", "eV"), ("u0", "eV"), ("u0_atomization", "eV"), ("cv", "cal/(mol K)")])
    err = capsys.readouterr().err
    assert "scoring" in err and ("mol/s" in err or "s/ mol" in err)  # the tqdm bar, with its rate
    summary = err[err.index("done: 13 rows"):].splitlines()
    counts = {line.split()[0]: int(line.split()[1]) for line in summary[1:-1]}
    assert counts == {"ok": 5, "failed": 8, "invalid_smiles": 3, "unsupported_element": 2, "charged_molecule": 1,
                      "too_many_atoms": 1, "empty_input": 1}
    assert "rows/s" in summary[-1] and "peak memory" in summary[-1]


def test_csv_jsonl_and_parquet_carry_the_same_values(tmp_path, bundle_path):
    import pyarrow.parquet as pq

    source = mixed_csv(tmp_path / "mixed.csv")
    for ext in ("csv", "jsonl", "parquet"):
        assert cli(["predict", str(source), "--out", str(tmp_path / f"out.{ext}"), "--model", str(bundle_path),
                    "--workers", "1", "--properties", *PROPS, "-q"]) == 0
    flat = read_rows(tmp_path / "out.csv")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(flat) == len(lines) == len(table) == len(MIXED)
    assert pq.read_schema(tmp_path / "out.parquet").field("homo [eV]").metadata == {b"unit": b"eV",
                                                                                     b"property": b"homo"}
    for c, j, p in zip(flat, lines, table, strict=True):
        assert int(c["index"]) == j["index"] == p["index"] and c["id"] == j["id"] == p["id"]
        if j["ok"]:
            for name in PROPS:
                unit = j["properties"][name]["unit"]
                assert float(c[f"{name} [{unit}]"]) == j["properties"][name]["value"] == p[f"{name} [{unit}]"]
        else:
            assert c["error"] == j["error"]["code"] == p["error"]
            assert c["error_message"] == j["error"]["message"] == p["error_message"]


def test_xyz_and_sdf_inputs_match_the_readers(tmp_path, bundle_path):
    from lieprop.data.readers import read_file

    for name in ("multi_broken.extxyz", "multi_one_bad.sdf"):
        out = tmp_path / f"{name}.jsonl"
        assert cli(["predict", str(DATA / name), "--out", str(out), "--model", str(bundle_path), "--workers", "2",
                    "--properties", "homo", "-q"]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        items = list(read_file(DATA / name))
        assert [(r["index"], r["id"], r["ok"]) for r in rows] == [(i.index, i.id, i.ok) for i in items]
        assert [r["error"] for r in rows if not r["ok"]] == [i.error.to_dict() for i in items if not i.ok]


def test_existing_output_and_mismatched_resume_are_refused(tmp_path, bundle_path, capsys):
    source = mixed_csv(tmp_path / "mixed.csv")
    out = tmp_path / "out.csv"
    args = ["predict", str(source), "--out", str(out), "--model", str(bundle_path), "--workers", "1", "-q"]
    assert cli(args) == 0
    assert cli(args) == 2 and "exists; add --overwrite" in capsys.readouterr().err
    assert cli([*args, "--resume"]) == 0 and "nothing to resume" not in capsys.readouterr().err  # quiet
    assert cli([*args, "--overwrite"]) == 0
    # an interrupted run: stopped after one chunk
    summary = score_file(source, tmp_path / "part.csv", ScoreOptions(chunk_size=4), model=bundle_path,
                         workers=1, should_stop=lambda: True)
    assert not summary.complete and summary.counts.rows == 4
    with pytest.raises(OutputError, match="add --resume"):
        score_file(source, tmp_path / "part.csv", ScoreOptions(chunk_size=4), model=bundle_path, workers=1)
    with pytest.raises(OutputError, match="chunk_size"):
        score_file(source, tmp_path / "part.csv", ScoreOptions(chunk_size=5), model=bundle_path, workers=1,
                   resume=True)
    with pytest.raises(OutputError, match="conformers"):  # other conformers would give other values
        score_file(source, tmp_path / "part.csv", ScoreOptions(chunk_size=4, conformers=3), model=bundle_path,
                   workers=1, resume=True)
    assert cli(["predict", str(source), "--out", str(tmp_path / "x.txt"), "--model", str(bundle_path)]) == 2
    assert "output format" in capsys.readouterr().err
    assert cli(["predict", str(source), "--out", str(tmp_path / "y.csv"), "--smiles-column", "smi",
                "--model", str(bundle_path)]) == 2
    assert "no column 'smi'" in capsys.readouterr().err


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_resume_drops_a_half_written_chunk(tmp_path, bundle_path, ext):
    """A run dies after committing 2 chunks and while writing the 3rd: resuming gives the uninterrupted file."""
    source = distinct_csv(tmp_path / "in.csv", 40)
    options = ScoreOptions(chunk_size=6, properties=tuple(PROPS))
    whole = tmp_path / f"whole.{ext}"
    score_file(source, whole, options, model=bundle_path, workers=1)
    out = tmp_path / f"out.{ext}"
    chunks = iter(range(100))
    stopped = score_file(source, out, options, model=bundle_path, workers=1, should_stop=lambda: next(chunks) == 1)
    assert (stopped.complete, stopped.counts.rows) == (False, 12)
    work = tmp_path / f"out.{ext}.partial"
    if ext == "csv":
        with open(work / "data", "ab") as f:
            f.write(b"12,m12,CC,true,0.1,0.2")  # the chunk being written when the process died
    else:
        (work / "part-00000002.parquet.tmp").write_bytes(b"PAR1 half a file")
    done = score_file(source, out, options, model=bundle_path, workers=2, resume=True)
    assert done.complete and done.resumed_from == 12 and done.counts.rows == 40
    assert out.read_bytes() == whole.read_bytes()
    assert not work.exists()


def _wait_for_chunks(process: subprocess.Popen, progress: Path, chunks: int) -> int:
    """Poll a running ``lieprop predict``'s progress file until ``chunks`` chunks are committed; rows done."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            state = json.loads(progress.read_text())
            if state["chunks_done"] >= chunks:
                return state["rows_done"]
        except (FileNotFoundError, ValueError, KeyError):
            pass
        assert process.poll() is None, f"the run ended before it could be interrupted: {process.communicate()}"
        time.sleep(0.01)
    raise AssertionError("no progress")


def test_ctrl_c_and_kill_9_then_resume_give_the_same_file(tmp_path, bundle_path):
    n = 450
    source = distinct_csv(tmp_path / "in.csv", n)
    common = ["--model", str(bundle_path), "--chunk-size", "6", "--properties", *PROPS, "--no-progress"]
    whole = tmp_path / "whole.csv"
    assert cli(["predict", str(source), "--out", str(whole), *common, "--workers", "1", "-q"]) == 0
    out = tmp_path / "out.csv"
    progress = tmp_path / "out.csv.partial" / "progress.json"

    first = run_cli(str(source), "--out", str(out), *common, "--workers", "2")
    _wait_for_chunks(first, progress, 2)
    first.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends
    code, err = finish(first)
    assert code == 130, err
    assert "--resume" in err and "Traceback" not in err
    ctrl_c_rows = json.loads(progress.read_text())["rows_done"]

    second = run_cli(str(source), "--out", str(out), *common, "--workers", "1", "--resume")
    killed_after = _wait_for_chunks(second, progress, ctrl_c_rows // 6 + 3)
    second.send_signal(signal.SIGKILL)  # kill -9: no chance to clean up
    second.communicate()
    assert second.returncode == -signal.SIGKILL and not out.exists()
    killed_at = json.loads(progress.read_text())["rows_done"]
    assert 12 <= ctrl_c_rows < killed_after <= killed_at < n

    code, err = finish(run_cli(str(source), "--out", str(out), *common, "--workers", "1", "--resume"))
    assert code == 0, err
    assert f"resumed after {killed_at:,} rows" in err and f"done: {n} rows" in err
    assert out.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "out.csv.partial").exists()


def _library_csv(path: Path, n: int, valid_every: int) -> Path:
    """``n`` rows of repeated small SMILES: one valid row in ``valid_every``, the rest fail quickly (the embedding
    of a repeated SMILES is cached, so the run measures streaming, not RDKit)."""
    bad = ["CCl", "C1CC", "[NH4+]", "", "CC[Si]", "C.C", "[Na+].[Cl-]", "OCl"]
    good = ["C", "O", "N", "CC", "CO", "C=O", "C#N", "CCO", "CC=O", "OC=O"]
    with open(path, "w") as f:
        f.write("id,smiles\n")
        for i in range(n):
            smiles = good[(i // valid_every) % len(good)] if i % valid_every == 0 else bad[i % len(bad)]
            f.write(f"row-{i},{smiles}\n")
    return path


def _memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB: its resident memory now and its peak so far. (Not ``wait4``'s
    ``ru_maxrss``: Linux carries the forking parent's peak over ``exec`` into it.)"""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


@pytest.mark.parametrize("rows, valid_every, ext", [
    pytest.param(200_000, 10_000, "parquet", id="200k-rows-fast"),
    pytest.param(200_000, 1, "csv", id="200k-rows-all-valid",  # ~15 min on 2 busy cores
                 marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
])
def test_memory_stays_bounded_on_a_200k_row_csv(tmp_path, bundle_path, rows, valid_every, ext):
    """Resident memory while 10% and 90% of the rows are written, and the peak of the whole run (Parquet: the
    final merge of the chunk files adds one row group's worth, whatever the number of rows)."""
    source = _library_csv(tmp_path / "library.csv", rows, valid_every)
    out = tmp_path / f"out.{ext}"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "lieprop.cli", "predict", str(source), "--out", str(out),
                                    "--model", str(bundle_path), "--workers", "1", "--properties", "homo", "gap"],
                                   stderr=stderr)
    progress = tmp_path / f"out.{ext}.partial" / "progress.json"
    at: dict[int, float] = {}
    peak = 0.0
    while process.poll() is None:
        try:
            rss, peak = _memory_mb(process.pid)
            done = json.loads(progress.read_text())["rows_done"]
            for mark in (rows // 10, rows * 9 // 10):
                if done >= mark and mark not in at:
                    at[mark] = rss
        except (OSError, ValueError, KeyError):  # not started yet, or just exited
            pass
        time.sleep(0.02)
    assert process.returncode == 0, log.read_text()
    early, late = at[rows // 10], at[rows * 9 // 10]
    print(f"RSS at {rows // 10:,} rows {early:.0f} MB, at {rows * 9 // 10:,} rows {late:.0f} MB; peak {peak:.0f} MB")
    assert late - early < 20, "memory grows with the number of rows"
    assert peak - early < 100 and peak < 1024
    reported = float(log.read_text().rsplit("peak memory", 1)[1].split()[0].replace(",", ""))
    assert abs(reported - peak) < 20  # the summary's own figure
    if ext == "csv":
        with open(out) as f:
            assert sum(1 for _ in f) == rows + 1
    else:
        import pyarrow.parquet as pq

        assert pq.read_metadata(out).num_rows == rows


def test_a_worker_crash_fails_only_its_records(tmp_path, bundle_path, monkeypatch):
    """If a worker process dies (RDKit crash, OOM kill), the pool is replaced and only the culprit fails."""
    import lieprop.scoring.pipeline as pipeline
    from lieprop.scoring.pipeline import LocalEngine

    smiles = ["CCO", "CRASH", "O", "CC"] * 2 + ["C", "CN", "N", "CC"] * 3
    source = write_csv(tmp_path / "in.csv", [(f"m{i}", s) for i, s in enumerate(smiles)])
    monkeypatch.setattr(pipeline, "parse_records", parse_or_crash)
    model = lieprop.inference.load_model(bundle_path)
    engine = LocalEngine(model.model.predict, workers=2)
    out = tmp_path / "out.jsonl"
    summary = score_file(source, out, ScoreOptions(chunk_size=8), model=model, engine=engine)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.counts.rows == 20 and [r["index"] for r in rows] == list(range(20))
    assert [r["ok"] for r in rows] == [s != "CRASH" for s in smiles]
    assert {r["error"]["code"] for r in rows if not r["ok"]} == {"embedding_failed"}


# --------------------------------------------------------------------------------------------------
# REST jobs


def upload(client: httpx.Client, path: Path, **options) -> dict:
    with open(path, "rb") as f:
        response = client.post("/v1/jobs", files={"file": (path.name, f)},
                               data={k: ",".join(v) if isinstance(v, list) else str(v) for k, v in options.items()})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    return response.json()


def wait_for(client: httpx.Client, job_id: str, condition, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if condition(job):
            return job
        assert job["state"] not in ("failed", "cancelled") or condition(job), job
        time.sleep(0.05)
    raise AssertionError(f"timed out; job: {job}")


@pytest.fixture(scope="module")
def job_server(tmp_path_factory, bundle_path):
    tmp = tmp_path_factory.mktemp("jobs-server")
    s = start_server(tmp, bundle_path, "--data-dir", str(tmp / "data"), "--job-workers", "1", "--job-nice", "0")
    yield s
    s.stop()


def test_cli_rest_job_and_library_give_identical_values(tmp_path, bundle_path, job_server):
    source = mixed_csv(tmp_path / "mixed.csv")
    assert cli(["predict", str(source), "--out", str(tmp_path / "cli.csv"), "--model", str(bundle_path),
                "--properties", *PROPS, "-q"]) == 0
    assert cli(["predict", str(source), "--out", str(tmp_path / "cli.jsonl"), "--model", str(bundle_path),
                "--properties", *PROPS, "-q"]) == 0
    library = lieprop.predict([{"id": i, "smiles": s} for i, s, _ in MIXED], properties=PROPS, model=bundle_path)
    with httpx.Client(base_url=job_server.base_url, timeout=60) as client:
        job = upload(client, source, properties=PROPS)
        assert job["state"] == "queued" and job["input"] == {"filename": "mixed.csv", "format": "csv", "bytes":
                                                             source.stat().st_size}
        job = wait_for(client, job["id"], lambda j: j["state"] == "succeeded")
        assert job["progress"]["rows_done"] == job["progress"]["rows_total"] == len(MIXED)
        assert job["counts"]["ok"] == 5 and job["counts"]["errors"]["invalid_smiles"] == 3
        rest_csv = client.get(job["links"]["results"], params={"format": "csv"})
        rest_jsonl = client.get(job["links"]["results"])
    assert rest_csv.headers["content-type"].startswith("text/csv")
    assert rest_csv.content == (tmp_path / "cli.csv").read_bytes()
    assert rest_jsonl.content == (tmp_path / "cli.jsonl").read_bytes()
    rows = [json.loads(line) for line in rest_jsonl.text.splitlines()]
    assert [{k: v for k, v in r.items() if k not in ("index", "smiles")} for r in rows] == \
        json.loads(json.dumps(library["results"]))


def test_rest_job_errors_cancel_and_list(tmp_path, job_server):
    source = distinct_csv(tmp_path / "in.csv", 2000)  # far more than is done before the job is cancelled
    with httpx.Client(base_url=job_server.base_url, timeout=60) as client:
        bad = client.post("/v1/jobs", files={"file": ("in.csv", source.read_bytes())}, data={"smiles_column": "smi"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_job"
        bad = client.post("/v1/jobs", files={"file": ("in.csv", b"smiles\nC\n")}, data={"properties": "colour"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_property"
        bad = client.post("/v1/jobs", content=b"smiles\nC\n")  # raw body without a format
        assert bad.status_code == 422 and "format" in bad.json()["error"]["message"]
        assert client.get("/v1/jobs/nope").status_code == 404
        raw = client.post("/v1/jobs", params={"format": "extxyz", "properties": "homo"},
                          content=(DATA / "multi_broken.extxyz").read_bytes())
        assert raw.status_code == 202
        job = upload(client, source, chunk_size=2)
        running = wait_for(client, job["id"], lambda j: j["progress"]["rows_done"] >= 10)
        assert client.get(f"/v1/jobs/{job['id']}/results").status_code == 409
        start = time.perf_counter()  # interactive requests go before the job's model calls
        answer = client.post("/v1/predict", json={"molecules": [{"smiles": "CCO"}, {"smiles": "CCN"}]})
        assert answer.status_code == 200 and time.perf_counter() - start < 10
        cancelled = client.delete(f"/v1/jobs/{job['id']}").json()
        assert cancelled["state"] == "cancelled" and running["state"] == "running"
        assert client.get(f"/v1/jobs/{job['id']}/results").status_code == 410
        wait_for(client, raw.json()["id"], lambda j: j["state"] == "succeeded")
        listed = client.get("/v1/jobs").json()["jobs"]
        assert [j["id"] for j in listed][:2] == [job["id"], raw.json()["id"]]
        metrics = client.get("/metrics").text
        assert 'lieprop_jobs_total{state="cancelled"}' in metrics and "lieprop_job_rows_total" in metrics
        assert 'lieprop_batch_size_count{priority="background"}' in metrics


def kill_9_during_a_job(tmp_path: Path, bundle_path: Path, source: Path, args: tuple[str, ...]) -> dict:
    """Start a server, upload ``source`` (chunks of 5), and kill -9 the server once 20 rows are committed."""
    first = start_server(tmp_path, bundle_path, *args)
    try:
        with httpx.Client(base_url=first.base_url, timeout=60) as client:
            job = upload(client, source, chunk_size=5, properties="homo,gap")
            wait_for(client, job["id"], lambda j: j["progress"]["rows_done"] >= 20)
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
    return job


def test_a_server_killed_during_a_job_finishes_it_after_restart(tmp_path, bundle_path):
    source = distinct_csv(tmp_path / "in.csv", 100)
    whole = tmp_path / "whole.csv"
    score_file(source, whole, ScoreOptions(chunk_size=5, properties=("homo", "gap")), model=bundle_path, workers=1)
    args = ("--data-dir", str(tmp_path / "data"), "--job-workers", "1", "--job-nice", "0")
    job = kill_9_during_a_job(tmp_path, bundle_path, source, args)
    second = finish_after_restart(tmp_path, bundle_path, job, whole, args)
    assert any(e.get("msg") == "resuming jobs" for e in second.logs())


def finish_after_restart(tmp_path: Path, bundle_path: Path, job: dict, whole: Path, args: tuple[str, ...]) -> Server:
    """Start a server with ``args`` after a kill -9 during ``job`` (100 rows): the job succeeds on its second attempt
    with the same results as the uninterrupted run ``whole``. Returns the (stopped) server, for its logs."""
    second = start_server(tmp_path, bundle_path, *args)
    try:
        with httpx.Client(base_url=second.base_url, timeout=60) as client:
            done = wait_for(client, job["id"], lambda j: j["state"] == "succeeded")
            assert done["attempts"] == 2 and done["counts"]["rows"] == 100
            results = client.get(done["links"]["results"], params={"format": "csv"}).content
    finally:
        second.stop()
    assert_same_csv(results, whole.read_bytes())
    return second


def process_table() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, state)} of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    table, found = process_table(), {pid}
    while True:
        more = {p for p, (parent, _) in table.items() if parent in found} - found
        if not more:
            return found - {pid}
        found |= more


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_kill_9_leaves_no_pool_process_and_the_job_resumes_from_a_moved_data_dir(tmp_path, bundle_path):
    """kill -9 of a server running a job (embedding pool, job pool, fork server): within a few seconds no process it
    started is left. Then its data directory is moved elsewhere and a server started on the new one finishes the job
    from where it was (the resume fingerprint knows the input by its contents, not its absolute path)."""
    source = distinct_csv(tmp_path / "in.csv", 100)
    whole = tmp_path / "whole.csv"
    score_file(source, whole, ScoreOptions(chunk_size=5, properties=("homo", "gap")), model=bundle_path, workers=1)
    first = start_server(tmp_path, bundle_path, "--job-workers", "2", "--job-nice", "0")
    try:
        with httpx.Client(base_url=first.base_url, timeout=60) as client:
            job = upload(client, source, chunk_size=5, properties="homo,gap")
            wait_for(client, job["id"], lambda j: j["progress"]["rows_done"] >= 20)
        started = descendants(first.process.pid)
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
    assert len(started) >= 4, started  # the fork server, its embedding and job workers, the resource tracker
    deadline = time.monotonic() + 5
    while alive := {p for p, (_, state) in process_table().items() if p in started and state not in "ZX"}:
        assert time.monotonic() < deadline, f"left alive 5 s after kill -9: {sorted(alive)}"
        time.sleep(0.1)
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    shutil.copytree(tmp_path / "data", moved)  # a copy: new paths, new modification times
    shutil.rmtree(tmp_path / "data")
    finish_after_restart(tmp_path, bundle_path, job, whole, ("--data-dir", str(moved), "--job-workers", "1",
                                                             "--job-nice", "0"))


def test_a_cli_run_resumes_after_its_folder_moved_but_not_after_its_input_changed(tmp_path, bundle_path):
    folder = tmp_path / "a"
    folder.mkdir()
    source = distinct_csv(folder / "in.csv", 30)
    options = ScoreOptions(chunk_size=5, properties=("homo",))
    assert not score_file(source, folder / "out.csv", options, model=bundle_path, workers=1,
                          should_stop=lambda: True).complete
    shutil.copytree(folder, tmp_path / "b")  # new paths and modification times, same contents
    done = score_file(tmp_path / "b" / "in.csv", tmp_path / "b" / "out.csv", options, model=bundle_path, workers=1,
                      resume=True)
    assert done.complete and done.resumed_from == 5 and done.counts.rows == 30
    text = source.read_text()
    source.write_text(text.replace("m1,", "m9,", 1))  # same size, other contents
    with pytest.raises(OutputError, match="input_sha256.*start over with --overwrite"):
        score_file(source, folder / "out.csv", options, model=bundle_path, workers=1, resume=True)


# --------------------------------------------------------------------------------------------------
# The batcher gives interactive work priority


def test_interactive_molecules_go_before_background_calls():
    import numpy as np

    from lieprop.service.batcher import DynamicBatcher, Priority

    order: list[str] = []
    gate = threading.Event()

    def predict(numbers, positions):
        order.append(f"batch{len(numbers)}")
        return np.zeros((len(numbers), 1))

    batcher = DynamicBatcher(predict, max_batch_size=8, max_wait_ms=0).start()
    try:
        blocker = batcher.call(gate.wait)  # hold the worker while work queues up
        background = [batcher.call(lambda k=k: order.append(f"job{k}"), Priority.BACKGROUND) for k in range(2)]
        interactive = batcher.submit_nowait([(np.array([1]), np.zeros((1, 3)))] * 3)
        gate.set()
        for f in [blocker, *background, interactive]:
            f.result(10)
    finally:
        batcher.close()
    assert order == ["batch3", "job0", "job1"]


# --------------------------------------------------------------------------------------------------
# Ray


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside Ray Data
def test_ray_engine_equals_the_local_engine(tmp_path, bundle_path):
    pytest.importorskip("ray.data")
    from lieprop.scoring.ray_engine import RayEngine

    source = distinct_csv(tmp_path / "in.csv", 60)
    options = ScoreOptions(chunk_size=8, properties=tuple(PROPS))
    local = tmp_path / "local.csv"
    score_file(source, local, options, model=bundle_path, workers=1)
    engine = RayEngine(bundle_path, workers=2, window_chunks=3)
    try:
        summary = score_file(source, tmp_path / "ray.csv", options, model=bundle_path, engine=engine)
        xyz = score_file(DATA / "multi_broken.extxyz", tmp_path / "ray.jsonl", options, model=bundle_path,
                         engine=engine)
    finally:
        engine.shutdown()
    assert summary.complete and summary.engine == "ray" and xyz.counts.rows == 4
    assert (tmp_path / "ray.csv").read_bytes() == local.read_bytes()
    score_file(DATA / "multi_broken.extxyz", tmp_path / "local.jsonl", options, model=bundle_path, workers=1)
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_csv_stream_helper_reads_back():
    """The REST CSV conversion keeps quoting of awkward cells (commas, quotes, newlines)."""
    from lieprop.inference import Column
    from lieprop.scoring.output import Table, json_line, jsonl_to_csv

    table = Table((Column("homo", "eV", 2, False),), with_smiles=True)
    row = {"index": 0, "id": 'a,"b"\nc', "smiles": "C", "ok": False,
           "error": {"code": "invalid_smiles", "message": "x, y"}}
    text = b"".join(jsonl_to_csv([json_line(row)], table)).decode()
    [back] = list(csv.DictReader(io.StringIO(text)))
    assert back["id"] == 'a,"b"\nc' and back["error_message"] == "x, y" and back["homo [eV]"] == ""


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_uploads_over_the_limit_get_413_and_leave_nothing(tmp_path, bundle_path):
    """In-process (Starlette's TestClient runs the lifespan): declared and streamed bodies over max_upload_bytes."""
    from fastapi.testclient import TestClient

    from lieprop.service import Settings, create_app

    settings = Settings(model=bundle_path, warmup=False, workers_embed=1, data_dir=tmp_path / "data",
                        max_upload_bytes=2048)
    body = b"smiles\n" + b"CCO\n" * 1000

    def streamed():
        for k in range(0, len(body), 512):
            yield body[k:k + 512]

    with TestClient(create_app(settings)) as c:
        while c.get("/readyz").status_code != 200:
            time.sleep(0.01)
        declared = c.post("/v1/jobs", params={"format": "csv"}, content=body)
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "body_too_large"
        chunked = c.post("/v1/jobs", params={"format": "csv"}, content=streamed())
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
        form = c.post("/v1/jobs", files={"file": ("big.csv", body)})
        assert form.status_code == 413
        small = c.post("/v1/jobs", files={"file": ("small.csv", b"smiles\nCCO\n")}, data={"colour": "red"})
        assert small.status_code == 422 and "unknown options" in small.json()["error"]["message"]
        assert c.get("/v1/jobs").json() == {"jobs": []}
    assert not any((tmp_path / "data" / "jobs").iterdir())


# --------------------------------------------------------------------------------------------------
# Job options, declared once (lieprop/scoring/options.py)


def test_job_options_make_the_cli_flags_the_rest_form_and_the_score_options():
    from lieprop.cli import build_parser
    from lieprop.scoring.options import REST_ONLY, JobOptions, form_fields_schema

    names = list(JobOptions.model_fields)
    given = {"format": "csv", "smiles_column": "SMILES", "id_column": "name", "properties": ["homo", "gap"],
             "chunk_size": 3, "coverage": 0.8, "relaxed_with": "forcefield", "conformers": 2}
    assert set(given) == set(names) - set(REST_ONLY)
    flags = [part for n, v in given.items()
             for part in ("--" + n.replace("_", "-"), *(map(str, v) if isinstance(v, list) else [str(v)]))]
    args = build_parser().parse_args(["predict", "in.csv", "--out", "out.csv", *flags])
    assert {n: getattr(args, n) for n in given} == given
    assert list(form_fields_schema()) == names
    assert form_fields_schema()["chunk_size"] == {"type": "integer", "minimum": 1, "maximum": 100_000,
                                                  "description": JobOptions.model_fields["chunk_size"].description}
    options = JobOptions.from_strings({"format": [" .SD "], "properties": ["homo, gap", "u0"], "chunk_size": ["", "7"],
                                       "file": ["ignored"]}, {"chunk_size": 3}, ignore=("file",))
    assert (options.format, options.properties, options.chunk_size) == ("sdf", ["homo", "gap", "u0"], 7)
    assert JobOptions.from_strings({}, {"chunk_size": 3}).chunk_size == 3
    score = options.score_options(model_batch=5)
    assert (score.format, score.properties, score.chunk_size, score.model_batch) == ("sdf", ("homo", "gap", "u0"), 7, 5)
    assert score.conformers == 5 and JobOptions.parse({"conformers": 1}).score_options().conformers == 1
    assert options.record() == {"smiles_column": "smiles", "id_column": None, "properties": ["homo", "gap", "u0"],
                                "chunk_size": 7, "coverage": None, "relaxed_with": "dft", "conformers": 5}
    for values, message in [({"chunk_size": ["0"]}, "chunk_size must be between 1 and 100000, got 0"),
                            ({"chunk_size": ["many"]}, "chunk_size must be an integer, got 'many'"),
                            ({"format": ["pdb"]}, "unknown format 'pdb'"),
                            ({"relaxed_with": ["xtb"]}, "relaxed_with: Input should be 'dft' or 'forcefield'"),
                            ({"conformers": ["0"]}, "conformers must be between 1 and 20, got 0"),
                            ({"colour": ["red"]}, "unknown options ['colour']")]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            JobOptions.from_strings(values)
    assert cli(["predict", "x.csv", "--out", "y.csv", "--chunk-size", "0"]) == 2


# --------------------------------------------------------------------------------------------------
# Hostile load (issue 17): a runner that cannot die, a broken database, tenants


def test_a_locked_database_delays_jobs_but_does_not_kill_the_runner(tmp_path, bundle_path):
    """Real server, real SQLite: another connection holds the write lock longer than the busy timeout (5 s) while a
    job runs and another is queued; both finish once the lock clears."""
    import sqlite3

    server = start_server(tmp_path, bundle_path, "--job-workers", "1", "--job-nice", "0")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            first = upload(client, distinct_csv(tmp_path / "a.csv", 60), chunk_size=5, properties="homo")
            second = upload(client, mixed_csv(tmp_path / "b.csv"), properties="homo")
            locker = sqlite3.connect(tmp_path / "data" / "jobs.sqlite3", isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")  # the write lock: the runner's updates and claims wait and retry
            try:
                time.sleep(7)
                health = client.get("/readyz").json()
                assert health["status"] == "ready"  # predictions are still served
                assert client.post("/v1/predict", json={"molecules": [{"smiles": "CCO"}]}).status_code == 200
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            for job in (first, second):
                wait_for(client, job["id"], lambda j: j["state"] == "succeeded", timeout=120)
            assert client.get("/readyz").json()["jobs"] == {"status": "up", "detail": None}
            assert "lieprop_job_runner_up 1.0" in client.get("/metrics").text
    finally:
        server.stop()
    assert any(e.get("msg") == "job database call failed; retrying" for e in server.logs())


def test_a_garbled_job_database_leaves_predict_serving_and_jobs_503(tmp_path, bundle_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "jobs.sqlite3").write_bytes(b"this is not a SQLite database" * 200)
    server = start_server(tmp_path, bundle_path, "--job-workers", "1")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            assert client.post("/v1/predict", json={"molecules": [{"smiles": "CCO"}]}).status_code == 200
            for answer in (client.get("/v1/jobs"), client.get("/v1/jobs/abc"),
                           client.post("/v1/jobs", files={"file": ("a.csv", b"smiles\nCCO\n")})):
                assert answer.status_code == 503, answer.text
                error = answer.json()["error"]
                assert error["code"] == "jobs_unavailable" and "jobs.sqlite3" in error["message"]
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["jobs"]["status"] == "down"
            assert "jobs.sqlite3" in ready.json()["jobs"]["detail"]
            strict = client.get("/readyz", params={"jobs": "true"})
            assert strict.status_code == 503 and "job runner is down" in strict.json()["detail"]
            assert "lieprop_job_runner_up 0.0" in client.get("/metrics").text
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_zero_byte_database_next_to_job_folders_is_refused_not_forgotten(tmp_path, bundle_path):
    from fastapi.testclient import TestClient

    from lieprop.service import Settings, create_app

    data = tmp_path / "data"
    (data / "jobs" / "0123abcd").mkdir(parents=True)
    (data / "jobs.sqlite3").write_bytes(b"")
    settings = Settings(model=bundle_path, warmup=False, workers_embed=1, data_dir=data)
    with TestClient(create_app(settings)) as c:
        answer = c.get("/v1/jobs/0123abcd")
        assert answer.status_code == 503 and "0 bytes" in answer.json()["error"]["message"]
        assert c.get("/readyz").json()["jobs"]["status"] == "down"
    assert (data / "jobs" / "0123abcd").is_dir() and (data / "jobs.sqlite3").stat().st_size == 0


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_failing_store_is_retried_and_reported_then_the_runner_recovers(tmp_path, bundle_path, monkeypatch):
    """The store raises on every claim for a while (as a bug or a broken disk would): /readyz?jobs=true and the
    gauge say the runner is down; once the store works again the queued job runs."""
    import sqlite3

    from fastapi.testclient import TestClient

    from lieprop.service import Settings, create_app
    from lieprop.service.job_store import JobStore

    broken = threading.Event()
    broken.set()
    claim = JobStore.next_queued

    def next_queued(self):
        if broken.is_set():
            raise sqlite3.OperationalError("disk I/O error")
        return claim(self)

    monkeypatch.setattr(JobStore, "next_queued", next_queued)
    settings = Settings(model=bundle_path, warmup=False, workers_embed=1, data_dir=tmp_path / "data",
                        job_workers=1, job_nice=0)
    with TestClient(create_app(settings)) as c:
        while c.get("/readyz").status_code != 200:
            time.sleep(0.01)
        job = c.post("/v1/jobs", files={"file": ("a.csv", b"smiles\nCCO\nCCN\n")}, data={"properties": "homo"})
        assert job.status_code == 202
        deadline = time.monotonic() + 30
        while c.get("/readyz", params={"jobs": "true"}).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "disk I/O error" in c.get("/readyz").json()["jobs"]["detail"]
        assert "lieprop_job_runner_up 0.0" in c.get("/metrics").text
        broken.clear()
        wait_for(c, job.json()["id"], lambda j: j["state"] == "succeeded", timeout=60)
        assert c.get("/readyz", params={"jobs": "true"}).status_code == 200
        assert "lieprop_job_runner_up 1.0" in c.get("/metrics").text


def test_an_old_database_gets_the_tenant_column_and_its_jobs_the_default_tenant(tmp_path):
    import sqlite3

    from lieprop.service.job_store import JobStore

    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, created_at REAL NOT NULL, "
                "started_at REAL, finished_at REAL, filename TEXT, format TEXT NOT NULL, input_bytes INTEGER NOT NULL, "
                "options TEXT NOT NULL, columns TEXT NOT NULL, model TEXT NOT NULL, total INTEGER, "
                "done INTEGER NOT NULL DEFAULT 0, counts TEXT, rate REAL, error TEXT, "
                "attempts INTEGER NOT NULL DEFAULT 0, results_deleted INTEGER NOT NULL DEFAULT 0)")
    old.execute("INSERT INTO jobs (id, state, created_at, format, input_bytes, options, columns, model) "
                "VALUES ('old', 'succeeded', 1, 'csv', 10, '{}', '[]', '{}')")
    old.commit()
    old.close()
    store = JobStore(path)
    assert store.get("old")["tenant"] == "default"
    assert store.get("old")["stored_bytes"] == 0 and store.get("old")["expired_at"] is None  # retention columns
    assert [j["id"] for j in store.list(tenant="default")] == ["old"] and store.list(tenant="alice") == []
    store.close()


def test_tenants_see_only_their_own_jobs_and_admin_sees_all(tmp_path, bundle_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# tenant:key\nbob:key-b\nadmin:key-admin\n")
    server = start_server(tmp_path, bundle_path, "--job-workers", "1", "--job-nice", "0", "--api-keys-file",
                          str(keys), env={"LIEPROP_API_KEYS": '{"key-a": "alice"}', "LIEPROP_API_KEY": "key-d"})
    try:
        def client(key: str | None) -> httpx.Client:
            return httpx.Client(base_url=server.base_url, timeout=60, headers={"X-API-Key": key} if key else {})

        with client("key-a") as a, client("key-b") as b, client("key-admin") as admin, client("key-d") as d, \
                client(None) as nobody, client("key-x") as wrong:
            job = upload(a, mixed_csv(tmp_path / "a.csv"), properties="homo")
            jid = job["id"]
            assert job["tenant"] == "alice"
            wait_for(a, jid, lambda j: j["state"] == "succeeded")
            assert [j["id"] for j in a.get("/v1/jobs").json()["jobs"]] == [jid]
            assert b.get("/v1/jobs").json() == {"jobs": []} and d.get("/v1/jobs").json() == {"jobs": []}
            for path in (f"/v1/jobs/{jid}", f"/v1/jobs/{jid}/results"):
                assert b.get(path).status_code == 404 and b.get(path).json()["error"]["code"] == "not_found"
            assert b.delete(f"/v1/jobs/{jid}").status_code == 404
            assert a.get(f"/v1/jobs/{jid}/results").status_code == 200
            assert [j["id"] for j in admin.get("/v1/jobs").json()["jobs"]] == [jid]
            assert admin.get(f"/v1/jobs/{jid}").json()["tenant"] == "alice"
            for other in (nobody, wrong):
                assert other.get("/v1/jobs").status_code == 401
                assert other.get(f"/v1/jobs/{jid}").status_code == 401
                assert other.delete(f"/v1/jobs/{jid}").status_code == 401
            assert d.post("/v1/predict", json={"molecules": [{"smiles": "CCO"}]}).status_code == 200
            assert admin.delete(f"/v1/jobs/{jid}").json()["state"] == "succeeded"
            assert a.get(f"/v1/jobs/{jid}/results").status_code == 410
    finally:
        server.stop()


def test_malformed_api_keys_are_refused_at_start(tmp_path):
    from lieprop.service import Settings

    with pytest.raises(ValueError, match="JSON map"):
        Settings(api_keys="[1, 2]")
    with pytest.raises(ValueError, match="two tenants"):
        Settings(api_key="k", api_keys='{"k": "alice"}')
    bad = tmp_path / "keys"
    bad.write_text("no-colon-here\n")
    with pytest.raises(ValueError, match="tenant:key"):
        Settings(api_keys_file=bad)
    assert Settings(api_key="k", api_keys='{"j": "alice"}').tenant_keys() == [(b"k", "default"), (b"j", "alice")]


def test_a_rest_job_over_the_row_quota_fails_naming_the_limit(tmp_path, bundle_path):
    """A server with --job-max-rows 5: a 12-row file fails (it is not cut short and called done), its committed rows
    are kept, and a fake .gz upload is a 422 that names the problem."""
    tmp = tmp_path / "quota"
    tmp.mkdir()
    server = start_server(tmp, bundle_path, "--data-dir", str(tmp / "data"), "--job-max-rows", "5",
                          "--job-workers", "1")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            job = upload(client, distinct_csv(tmp_path / "big.csv", 12), chunk_size=2)
            done = wait_for(client, job["id"], lambda j: j["state"] in ("failed", "succeeded"))
            assert done["state"] == "failed" and "5" in done["error"], done
            assert metric(client.get("/metrics").text, 'lieprop_job_quota_refusals_total{quota="rows"}') == 1
            fake = tmp_path / "fake.csv.gz"
            fake.write_bytes(b"smiles\nCCO\n")
            with open(fake, "rb") as f:
                response = client.post("/v1/jobs", files={"file": (fake.name, f)})
            assert response.status_code == 422 and "gzip" in response.json()["error"]["message"]
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------
# Verified outputs: damage to committed chunks or results is an error that names it, never a short success


def _stopped_run(tmp_path: Path, bundle_path: Path, ext: str, chunks: int = 3) -> tuple[Path, Path, ScoreOptions]:
    """An input of 40 rows scored 6 rows a chunk, stopped (resumably) after ``chunks`` committed chunks."""
    source = distinct_csv(tmp_path / "in.csv", 40)
    options = ScoreOptions(chunk_size=6, properties=tuple(PROPS))
    out = tmp_path / f"out.{ext}"
    calls = iter(range(100))
    stopped = score_file(source, out, options, model=bundle_path, workers=1,
                         should_stop=lambda: next(calls) == chunks - 1)
    assert (stopped.complete, stopped.counts.rows) == (False, 6 * chunks)
    return source, out, options


def test_resume_with_a_committed_parquet_part_missing_is_an_error_naming_the_part(tmp_path, bundle_path, capsys):
    source, out, _ = _stopped_run(tmp_path, bundle_path, "parquet")
    (tmp_path / "out.parquet.partial" / "part-00000001.parquet").unlink()
    code = cli(["predict", str(source), "--out", str(out), "--model", str(bundle_path), "--chunk-size", "6",
                "--properties", *PROPS, "--workers", "1", "-q", "--resume"])
    err = capsys.readouterr().err
    assert code != 0 and "part-00000001.parquet" in err and "missing" in err and "6 rows" in err, err
    assert not out.exists()


@pytest.mark.parametrize("damage", ["garble", "truncate"])
def test_resume_over_a_damaged_csv_chunk_is_an_error(tmp_path, bundle_path, damage):
    source, out, options = _stopped_run(tmp_path, bundle_path, "csv")
    data = tmp_path / "out.csv.partial" / "data"
    blob = bytearray(data.read_bytes())
    if damage == "garble":
        at = blob.index(b"\n7,") + 3  # inside the second chunk (rows 6 to 11): same size, other bytes
        blob[at] = ord("X")
        data.write_bytes(bytes(blob))
        expected = r"chunk 2 of 3 \(6 rows, .*\) does not match its checksum"
    else:
        data.write_bytes(bytes(blob[:-40]))  # the third chunk cut short
        expected = r"has [\d,]+ bytes, progress.json records [\d,]+"
    with pytest.raises(OutputError, match=expected):
        score_file(source, out, options, model=bundle_path, workers=1, resume=True)
    assert not out.exists()


def test_a_progress_file_that_overstates_rows_is_an_error_not_a_short_result(tmp_path, bundle_path):
    source, out, options = _stopped_run(tmp_path, bundle_path, "jsonl")
    progress = tmp_path / "out.jsonl.partial" / "progress.json"
    state = json.loads(progress.read_text())
    progress.write_text(json.dumps({**state, "rows_done": state["rows_done"] + 6}))
    with pytest.raises(OutputError, match="records 24 rows in 3 chunks but its manifest lists 18 rows"):
        score_file(source, out, options, model=bundle_path, workers=1, resume=True)
    assert not out.exists()


def test_damage_during_the_run_fails_the_final_verification_and_leaves_no_output(tmp_path, bundle_path):
    source = distinct_csv(tmp_path / "in.csv", 40)
    out = tmp_path / "out.csv"
    data = tmp_path / "out.csv.partial" / "data"

    def garble_first_chunk(summary, total):
        if summary.counts.rows == 12:
            blob = bytearray(data.read_bytes())
            blob[blob.index(b"\n0,") + 3] ^= 1
            data.write_bytes(bytes(blob))

    with pytest.raises(OutputError, match=r"chunk 1 of 7 .* does not match its checksum"):
        score_file(source, out, ScoreOptions(chunk_size=6, properties=tuple(PROPS)), model=bundle_path, workers=1,
                   on_chunk=garble_first_chunk)
    assert not out.exists()


def test_an_old_progress_file_is_refused(tmp_path, bundle_path):
    source, out, options = _stopped_run(tmp_path, bundle_path, "csv")
    progress = tmp_path / "out.csv.partial" / "progress.json"
    state = json.loads(progress.read_text())
    del state["chunks"], state["final"]
    progress.write_text(json.dumps({**state, "version": 1}))
    with pytest.raises(OutputError, match="another lieprop version; start over with --overwrite"):
        score_file(source, out, options, model=bundle_path, workers=1, resume=True)


def test_a_rest_job_whose_progress_file_overstates_rows_fails_and_is_not_succeeded(tmp_path, bundle_path):
    source = distinct_csv(tmp_path / "in.csv", 400)
    args = ("--data-dir", str(tmp_path / "data"), "--job-workers", "1", "--job-nice", "0")
    job = kill_9_during_a_job(tmp_path, bundle_path, source, args)
    progress = tmp_path / "data" / "jobs" / job["id"] / "results.jsonl.partial" / "progress.json"
    state = json.loads(progress.read_text())
    progress.write_text(json.dumps({**state, "rows_done": state["rows_done"] + 50}))
    second = start_server(tmp_path, bundle_path, *args)
    try:
        with httpx.Client(base_url=second.base_url, timeout=60) as client:
            done = wait_for(client, job["id"], lambda j: j["state"] in ("failed", "succeeded"))
            results = client.get(f"/v1/jobs/{job['id']}/results")
    finally:
        second.stop()
    assert done["state"] == "failed" and "manifest lists" in done["error"], done
    assert "--overwrite" not in done["error"] and "submit the file again" in done["error"], done["error"]
    assert str(tmp_path) not in done["error"]  # no server paths either
    assert results.status_code == 409 and results.json()["error"]["code"] == "job_not_succeeded"


def test_garbled_results_of_a_finished_rest_job_answer_results_damaged_not_200(tmp_path, job_server):
    source = distinct_csv(tmp_path / "in.csv", 30)
    with httpx.Client(base_url=job_server.base_url, timeout=60) as client:
        job = wait_for(client, upload(client, source, chunk_size=7, properties="homo")["id"],
                       lambda j: j["state"] == "succeeded")
        assert client.get(job["links"]["results"]).status_code == 200
        results = job_server.log_path.parent / "data" / "jobs" / job["id"] / "results.jsonl"
        blob = bytearray(results.read_bytes())
        blob[len(blob) // 2] ^= 0x20  # one flipped bit: same size, other bytes
        results.write_bytes(bytes(blob))
        for params in ({}, {"format": "csv"}):
            answer = client.get(job["links"]["results"], params=params)
            assert answer.status_code == 500, (params, answer.status_code)
            assert answer.json()["error"]["code"] == "results_damaged"
            assert "sha256" in answer.json()["error"]["message"]
        results.write_bytes(bytes(blob[: len(blob) // 2]))  # truncated
        answer = client.get(job["links"]["results"], params={"format": "csv"})
        assert answer.status_code == 500 and "bytes" in answer.json()["error"]["message"]


def test_results_of_a_job_finished_before_manifests_are_sent_but_marked_unverified(tmp_path, job_server):
    """Jobs finished by an older lieprop have no manifest: their results stay downloadable, as before, and say that
    they were not verified (X-Lieprop-Results-Verified: false); verified ones carry no such header."""
    with httpx.Client(base_url=job_server.base_url, timeout=60) as client:
        job = wait_for(client, upload(client, distinct_csv(tmp_path / "in.csv", 9), properties="homo")["id"],
                       lambda j: j["state"] == "succeeded")
        verified = client.get(job["links"]["results"])
        assert verified.status_code == 200 and "x-lieprop-results-verified" not in verified.headers
        folder = job_server.log_path.parent / "data" / "jobs" / job["id"]
        (folder / "results.jsonl.manifest.json").unlink()
        old = client.get(job["links"]["results"])
        assert old.status_code == 200 and old.headers["x-lieprop-results-verified"] == "false"
        assert old.content == verified.content


# --------------------------------------------------------------------------------------------------
# Retention, storage quotas and their metrics (issue 17, item 6)


def metric(text: str, name: str) -> float:
    """The value of one sample (``name`` with its labels, as /metrics writes it), 0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_finished_jobs_expire_a_running_one_is_kept_and_the_storage_quota_refuses_with_429(tmp_path, bundle_path):
    """A real server with a 1.08 s TTL, a sweep every 0.2 s and at most 2 stored jobs per tenant: a finished job
    expires (410 job_expired, its folder deleted, counted in /metrics) while a long job running past the TTL is left
    alone; a third job is refused with 429 while two are stored, accepted once one expired; the expired record is
    deleted one TTL later (404)."""
    server = start_server(tmp_path, bundle_path, "--job-workers", "1", "--job-nice", "0", "--job-ttl-hours", "0.0003",
                          "--job-sweep-interval-s", "0.2", "--job-max-stored-per-tenant", "2")
    jobs = tmp_path / "data" / "jobs"
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            small = wait_for(client, upload(client, mixed_csv(tmp_path / "a.csv"), properties="homo")["id"],
                             lambda j: j["state"] == "succeeded")
            finished = datetime.datetime.fromisoformat(small["finished_at"])
            expires = datetime.datetime.fromisoformat(small["expires_at"])
            assert abs((expires - finished).total_seconds() - 1.08) < 1e-3
            text = client.get("/metrics").text
            assert metric(text, 'lieprop_jobs_stored{state="succeeded"}') == 1
            assert metric(text, 'lieprop_jobs_stored_bytes{state="succeeded"}') > small["input"]["bytes"]
            long = upload(client, distinct_csv(tmp_path / "b.csv", 2000), chunk_size=5, properties="homo")
            refused = client.post("/v1/jobs", files={"file": ("c.csv", b"smiles\nCCO\n")})
            assert refused.status_code == 429, refused.text
            error = refused.json()["error"]
            assert error["code"] == "storage_quota_exceeded" and "2 jobs" in error["message"]
            assert metric(client.get("/metrics").text, 'lieprop_job_quota_refusals_total{quota="stored_jobs"}') == 1
            deadline = time.monotonic() + 15
            while (answer := client.get(f"/v1/jobs/{small['id']}")).status_code == 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert answer.status_code == 410 and answer.json()["error"]["code"] == "job_expired", answer.text
            assert client.get(f"/v1/jobs/{small['id']}/results").json()["error"]["code"] == "job_expired"
            assert not (jobs / small["id"]).exists()
            assert small["id"] not in [j["id"] for j in client.get("/v1/jobs").json()["jobs"]]
            assert metric(client.get("/metrics").text, "lieprop_jobs_expired_total") == 1
            time.sleep(0.5)  # a few more sweeps while the long job runs, well past the TTL since it was created
            running = client.get(f"/v1/jobs/{long['id']}").json()
            assert running["state"] == "running" and running["expires_at"] is None, running
            assert (jobs / long["id"] / "results.jsonl.partial" / "progress.json").is_file()
            assert upload(client, mixed_csv(tmp_path / "c.csv"), properties="homo")["state"] == "queued"
            assert client.delete(f"/v1/jobs/{long['id']}").json()["state"] == "cancelled"
            deadline = time.monotonic() + 15
            while client.get(f"/v1/jobs/{small['id']}").status_code == 410:  # the record goes one TTL later
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert client.get(f"/v1/jobs/{small['id']}").status_code == 404
    finally:
        server.stop()
    assert any(e.get("msg") == "jobs expired" for e in server.logs())


def test_results_are_hashed_once_then_served_from_the_verification_cache_until_they_change(tmp_path, job_server):
    with httpx.Client(base_url=job_server.base_url, timeout=60) as client:
        job = wait_for(client, upload(client, distinct_csv(tmp_path / "in.csv", 20), properties="homo")["id"],
                       lambda j: j["state"] == "succeeded")

        def verifications() -> tuple[float, float]:
            text = client.get("/metrics").text
            return (metric(text, 'lieprop_job_results_verifications_total{how="hashed"}'),
                    metric(text, 'lieprop_job_results_verifications_total{how="cached"}'))

        before = verifications()
        first = client.get(job["links"]["results"])
        assert first.status_code == 200 and verifications() == (before[0] + 1, before[1])
        for params in ({}, {"format": "csv"}):
            assert client.get(job["links"]["results"], params=params).status_code == 200
        assert verifications() == (before[0] + 1, before[1] + 2)  # no re-hash
        results = job_server.log_path.parent / "data" / "jobs" / job["id"] / "results.jsonl"
        blob = bytearray(results.read_bytes())
        blob[-10] ^= 0x01  # damage after the verification: same size
        results.write_bytes(bytes(blob))
        damaged = client.get(job["links"]["results"])
        assert damaged.status_code == 500 and damaged.json()["error"]["code"] == "results_damaged"
        assert verifications() == (before[0] + 2, before[1] + 2)
