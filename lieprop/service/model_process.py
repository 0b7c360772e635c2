"""The served networks in a child process of their own, so that their forward passes do not share the GIL.

Why: a forward pass is hundreds of small torch operations, and torch releases the GIL at each of them and takes it
back after. Beside the event loop and the reader threads, every take-back waits for whichever thread holds the GIL,
up to the switch interval each time. Measured in docs/BENCHMARKS.md ("The model in its own process"): the bundled
ensemble at batch 16 ran 1.8 ms per molecule alone and 40 ms beside one busy Python thread. In a child process the
forward passes run on their own interpreter, while the model thread of the server (the dynamic batcher's) keeps
everything else it did: frames, batching, cancellation, and the work it runs between a heavy molecule's chunks.

:class:`NetworkProcess` starts the child (``spawn``: no forked torch state) with each member's architecture, config and
weights, and :meth:`NetworkProcess.attach` points each :class:`~lieprop.model.predictor.PropertyModel` of the served
model at it (``PropertyModel.remote``): ``evaluate`` then sends the frames of each forward pass (atoms and canonical
coordinates, three flat arrays) and gets the network's output back; the child pads them into a batch. An ensemble
whose members all live in one process sends each forward pass once for all of them
(``EnsembleModel.joint``): one round trip instead of one per member. The values are the same as in-process, bit for
bit on the CPU (the same weights, operations and thread count; tests/test_model_process.py). A child that dies
(killed, out of memory) fails the batch it was computing with an error naming it and is started again for the next;
the child exits when the server does, or when its pipe closes because the server died.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
from typing import Any

import numpy as np
import torch

log = logging.getLogger("lieprop.service")

#: Seconds to wait for a new child to load its networks.
START_TIMEOUT_S = 120.0


class ModelProcessError(RuntimeError):
    """The model process died or could not start."""


def _members(model: Any) -> list[Any]:
    """The PropertyModels of ``model`` (itself, or an ensemble's members)."""
    return list(model.members) if hasattr(model, "members") else [model]


def _flat(numbers: list[np.ndarray], coords: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames as three arrays (atoms per frame, all atomic numbers, all coordinates): cheap to pickle."""
    sizes = np.fromiter((len(z) for z in numbers), dtype=np.int64, count=len(numbers))
    return sizes, np.concatenate(numbers), np.concatenate(coords)


def _unflat(sizes: np.ndarray, numbers: np.ndarray, coords: np.ndarray) -> tuple[list, list]:
    cut = np.cumsum(sizes)[:-1]
    return np.split(numbers, cut), np.split(coords, cut)


def _child(conn: Any, specs: list[tuple[str, dict, dict]], threads: int, device: str, compile_: bool) -> None:
    """The child's loop: build the networks, then answer (members, sizes, numbers, coordinates, autocast) requests
    with (True, (len(members), B, T) outputs) or (False, exception) until told to stop (None) or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server, which stops this process itself
    from lieprop.model.architectures import get_architecture
    from lieprop.model.device import pick_device
    from lieprop.model.predictor import padded_inputs

    torch.set_num_threads(threads)
    dev = pick_device(device)
    nets = []
    for name, cfg, state in specs:
        arch = get_architecture(name)
        net = arch.build(arch.make_config(cfg))
        net.load_state_dict(state)
        net = net.to(dev).eval()
        nets.append(torch.compile(net, dynamic=True) if compile_ else net)  # compiled at each net's first calls
    conn.send(("ready", torch.get_num_threads()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if msg is None:
            return
        members, sizes, numbers, coords, autocast = msg
        try:
            features, positions, mask = padded_inputs(*_unflat(sizes, numbers, coords), dev)  # as in-process
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                out = torch.stack([nets[k](features, positions, mask, deterministic=True).float()
                                   for k in members])
            reply: tuple[bool, Any] = (True, out.cpu().numpy())
        except Exception as exc:  # the server's model thread raises it for the batch
            reply = (False, exc)
        try:
            conn.send(reply)
        except Exception as exc:  # an exception that does not pickle
            conn.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


class NetworkProcess:
    """A child process holding the networks of ``model`` (a PropertyModel or an ensemble), with ``threads`` torch
    threads, on ``device`` ("auto", "cpu", "cuda", ...), compiled by ``torch.compile`` when ``compile_`` (each network
    at its first calls, for every new kind of shape: minutes on a CPU). One caller at a time (a lock serialises
    calls)."""

    def __init__(self, model: Any, threads: int = 1, device: str = "cpu", compile_: bool = False) -> None:
        self.specs = [(m.architecture, m.cfg.to_dict(), {k: v.detach().cpu() for k, v in m.net.state_dict().items()})
                      for m in _members(model)]
        self.threads, self.device, self.compile = threads, device, compile_
        self.starts = 0
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, self.specs, self.threads, self.device, self.compile),
                           name="lieprop-model-process", daemon=True)
        proc.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            proc.kill()
            raise ModelProcessError(f"the model process did not start within {START_TIMEOUT_S:.0f} s")
        try:
            tag, threads = parent.recv()
        except EOFError as exc:
            raise ModelProcessError(f"the model process exited while loading the networks (exit code "
                                    f"{proc.join(5) or proc.exitcode})") from exc
        self._proc, self._conn = proc, parent
        self.starts += 1
        log.info("model process started", extra={"pid": proc.pid, "torch_threads": threads})

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def forward_frames(self, members: list[int], numbers: list[np.ndarray], coords: list[np.ndarray],
                       autocast_bf16: bool = False) -> torch.Tensor:
        """The networks ``members`` on one forward pass of frames (atoms, canonical coordinates; at least one
        frame), in the child: (len(members), B, T) float32 outputs."""
        if not numbers:
            raise ValueError("a forward pass needs at least one frame")
        msg = (list(members), *_flat(numbers, coords), autocast_bf16)
        with self._lock:
            if not self.alive():
                self._restart("it had exited")
            try:
                self._conn.send(msg)
                ok, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                code = self._proc.exitcode if self._proc is not None else None
                self._restart(f"it died during a batch (exit code {code})")
                raise ModelProcessError(f"the model process died while computing this batch (exit code {code}); "
                                        "it was restarted") from exc
        if not ok:
            raise value
        return torch.from_numpy(np.asarray(value))

    def _restart(self, why: str) -> None:
        log.warning("model process restarting", extra={"reason": why, "starts": self.starts})
        self._stop_child(timeout=1.0)
        self._start()

    def _stop_child(self, timeout: float) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):  # the child is gone already
                self._conn.send(None)
            self._conn.close()
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        self._proc = self._conn = None

    def attach(self, model: Any) -> None:
        """Make every member of ``model`` (the model this process was made from) evaluate its network here."""
        members = _members(model)
        if len(members) != len(self.specs):
            raise ValueError(f"this process holds {len(self.specs)} networks, the model has {len(members)}")
        for k, m in enumerate(members):
            m.remote = RemoteNetwork(self, k)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child (it finishes the batch it is computing first, within ``timeout`` s)."""
        with self._lock:
            self._stop_child(timeout)


class RemoteNetwork:
    """A member's network as seen from the server: called like ``PropertyModel.forward_frames``."""

    def __init__(self, process: NetworkProcess, member: int) -> None:
        self.process, self.member = process, member

    def __call__(self, numbers: list[np.ndarray], coords: list[np.ndarray],
                 autocast_bf16: bool = False) -> torch.Tensor:
        return self.process.forward_frames([self.member], numbers, coords, autocast_bf16)[0]

    def __deepcopy__(self, memo: dict) -> None:  # a copied model computes in-process
        return None


def detach(model: Any) -> None:
    """Back to in-process evaluation for every member of ``model``."""
    for m in _members(model):
        m.remote = None

