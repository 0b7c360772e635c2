"""The served model beside a busy Python thread: in the model thread (sharing the GIL) or in its own process.

A forward pass is hundreds of small torch operations; torch releases the GIL for each and takes it back after, and
each take-back waits while another Python thread holds the GIL, up to the interpreter's switch interval. In the
server that other thread is the event loop and the readers. This script times the bundled model's ``predictions``
(batch ``--batch`` copies of ethanol, each slightly moved, so one frame each; one torch thread) alone, then beside a
thread spinning in pure Python, at several switch intervals (the server sets ``switch_interval_ms``, default 1), and
then with the networks in their own process (lieprop/service/model_process.py), beside the same busy thread.

    .venv/bin/python benchmarks/gil_contention.py [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args()

    from lieprop.inference import load_model, parse_item
    from lieprop.service import schemas
    from lieprop.service.model_process import NetworkProcess, detach

    torch.set_num_threads(1)
    model = load_model(None).model
    m = parse_item({"xyz": schemas.ETHANOL_XYZ}, 0)
    numbers = [m.numbers] * args.batch
    positions = [m.positions + 0.001 * i for i in range(args.batch)]
    spins = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))
            spins[0] += 1

    def timed() -> tuple[float, float]:
        for _ in range(2):
            model.predictions(numbers, positions)
        t, c = time.perf_counter(), time.thread_time()
        for _ in range(args.reps):
            model.predictions(numbers, positions)
        n = args.reps * args.batch
        return 1000 * (time.perf_counter() - t) / n, 1000 * (time.thread_time() - c) / n

    rows = []
    wall, cpu = timed()
    rows.append(("model thread", "alone", "-", wall, cpu))
    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    for interval in (5.0, 1.0, 0.2, 0.05):
        sys.setswitchinterval(interval / 1000)
        wall, cpu = timed()
        rows.append(("model thread", "beside a busy Python thread", f"{interval:g}", wall, cpu))
    sys.setswitchinterval(0.001)
    process = NetworkProcess(model, threads=1)
    try:
        process.attach(model)
        wall, cpu = timed()
        rows.append(("model process", "beside a busy Python thread", "1", wall, cpu))
        stop.set()
        spinner.join()
        wall, cpu = timed()
        rows.append(("model process", "alone", "1", wall, cpu))
    finally:
        detach(model)
        process.close()
    print(f"\n# {' '.join(sys.argv)}: bundled model, batch {args.batch} (ethanol, one frame each), 1 torch thread")
    print("| networks in | beside | switch interval (ms) | wall ms/molecule | CPU ms/molecule of the calling thread |")
    print("|---|---|---|---|---|")
    for where, beside, interval, wall, cpu in rows:
        print(f"| {where} | {beside} | {interval} | {wall:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
