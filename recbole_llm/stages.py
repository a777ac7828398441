"""Cached preparation stages: the one place that decides when a derived artefact is reused.

Every model that prepares something before training (text or LLM embeddings, item codes,
tokenizers, teacher models, SAID's stage 1) goes through :class:`Stage`:

- the cache key is a :func:`digest` of *every* input that changes the result (arrays by content,
  model folders by content through :func:`path_input`, settings as values);
- ``run(compute)`` loads the artefact when a valid copy exists, otherwise computes it inside
  :func:`isolated_rng` (so a cache hit and a miss leave the caller with the same random state),
  writes it atomically and stores its SHA-256 in a JSON sidecar with the stage's report;
- a truncated, corrupt or mismatching file is detected, logged with its path and recomputed;
- :class:`Checkpoint` holds resumable training state under the same key;
- under ``torch.distributed``, rank 0 computes and saves while the other ranks wait at a barrier
  and then load the verified file (``collective=True`` lets every rank take part in ``compute``);
- every report is also handed to the active :func:`collect_reports` context, which is how a run
  result lists what was prepared.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from recbole_llm.utils import atomic_write

logger = logging.getLogger(__name__)

KINDS = {"npy": ".npy", "torch": ".pt", "json": ".json"}
_FORMAT_VERSION = 1  # bump when the on-disk layout of every stage changes


# ------------------------------------------------------------------------------------ digest

@dataclasses.dataclass(frozen=True)
class PathInput:
    """A file or folder whose *content* is an input (a model's weights, a released index)."""

    path: str


def path_input(path: str | os.PathLike) -> PathInput:
    """Mark ``path`` as an input hashed by content (size-and-bytes of every file below it)."""
    return PathInput(str(path))


_path_digests: Dict[tuple, str] = {}


def _path_digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not path.exists():
        raise FileNotFoundError(f"stage input {str(path)!r} does not exist")
    signature = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if signature not in _path_digests:
        digest_ = hashlib.sha256()
        for file in files:
            digest_.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest_.update(block)
        _path_digests[signature] = digest_.hexdigest()
    return _path_digests[signature]


def _canonical(part: Any) -> Any:
    """A JSON-serialisable stand-in for ``part`` that changes whenever ``part``'s content does."""
    if isinstance(part, torch.Tensor):
        part = part.detach().cpu()
        if part.dtype == torch.bfloat16:
            part = part.float()
        part = part.numpy()
    if isinstance(part, np.ndarray):
        array = np.ascontiguousarray(part)
        return {"array": hashlib.sha256(array.tobytes()).hexdigest(), "dtype": str(array.dtype),
                "shape": list(array.shape)}
    if isinstance(part, PathInput):
        return {"path_content": _path_digest(Path(part.path))}
    if dataclasses.is_dataclass(part) and not isinstance(part, type):
        return {"dataclass": type(part).__name__, "fields": _canonical(dataclasses.asdict(part))}
    if isinstance(part, dict):
        return {str(key): _canonical(value) for key, value in sorted(part.items(), key=lambda kv: str(kv[0]))}
    if isinstance(part, (list, tuple)):
        return [_canonical(value) for value in part]
    if isinstance(part, (np.integer, np.floating, np.bool_)):
        return part.item()
    if part is None or isinstance(part, (str, int, float, bool)):
        return part
    return repr(part)


def digest(*parts: Any) -> str:
    """The project's one content digest (24 hex digits) of arrays, tensors, paths and settings."""
    payload = json.dumps([_canonical(part) for part in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


# ------------------------------------------------------------------------------ random state

@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without touching the caller's Python, numpy, torch CPU and CUDA random state."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cpu_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


# ------------------------------------------------------------------------------------ reports

_collectors: List[List[Dict[str, Any]]] = []


@contextlib.contextmanager
def collect_reports() -> Iterator[List[Dict[str, Any]]]:
    """Collect the report of every stage run inside the block (a list of dicts with ``stage``)."""
    reports: List[Dict[str, Any]] = []
    _collectors.append(reports)
    try:
        yield reports
    finally:
        _collectors.remove(reports)


def _publish(report: Dict[str, Any]) -> None:
    for reports in _collectors:
        reports.append(report)


# ------------------------------------------------------------------------------ distribution

def world() -> Tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _distributed() -> bool:
    return world()[1] > 1


def _rank() -> int:
    return world()[0]


def _barrier() -> None:
    if _distributed():
        torch.distributed.barrier()


# ------------------------------------------------------------------------------------ storage

def _save_value(path: Path, value: Any, kind: str) -> None:
    if kind == "npy":
        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, np.asarray(value), allow_pickle=False)
    elif kind == "torch":
        def write(tmp: str) -> None:
            torch.save(value, tmp)
    else:
        text = json.dumps(value, indent=2, sort_keys=True)

        def write(tmp: str) -> None:
            Path(tmp).write_text(text, encoding="utf-8")
    atomic_write(path, write)


def _load_value(path: Path, kind: str) -> Any:
    if kind == "npy":
        return np.load(path, allow_pickle=False)
    if kind == "torch":
        return torch.load(path, map_location="cpu", weights_only=True)
    return json.loads(path.read_text(encoding="utf-8"))


class Checkpoint:
    """Resumable training state of one stage (``torch.save`` of a dict), written atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> Optional[Dict[str, Any]]:
        """The saved state, or None when there is none or it cannot be read (then it is ignored)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as err:  # a damaged checkpoint restarts training; it is never half-used
            logger.warning("ignoring unreadable checkpoint %s (%s): training restarts", self.path, err)
            return None
        logger.info("resuming from checkpoint %s", self.path)
        return state

    def save(self, state: Dict[str, Any]) -> None:
        if _rank() == 0:
            atomic_write(self.path, lambda tmp: torch.save(state, tmp))

    def remove(self) -> None:
        if _rank() == 0:
            self.path.unlink(missing_ok=True)


class Stage:
    """One cached artefact: ``Stage(name, folder, inputs).run(compute, kind)``.

    ``inputs`` must hold everything that changes the result; the file is
    ``<folder>/<name>_<digest>.<ext>`` with a ``.meta.json`` sidecar (checksum, report, inputs
    summary). ``report`` is available after :meth:`run`.
    """

    def __init__(self, name: str, folder: str | os.PathLike, inputs: Dict[str, Any]):
        if not name.replace("_", "").isalnum():
            raise ValueError(f"stage name must be letters, digits and '_', got {name!r}")
        self.name = name
        self.folder = Path(folder)
        self.inputs = inputs
        self.key = digest(name, _FORMAT_VERSION, inputs)
        self.report: Dict[str, Any] = {}
        self.checkpoint = Checkpoint(self.folder / f"{name}_{self.key}.ckpt")

    def path(self, kind: str) -> Path:
        return self.folder / f"{self.name}_{self.key}{KINDS[kind]}"

    @property
    def meta_path(self) -> Path:
        return self.folder / f"{self.name}_{self.key}.meta.json"

    def load(self, kind: str = "npy") -> Optional[Any]:
        """The cached value when its file exists and matches its checksum, else None."""
        path, meta_path = self.path(kind), self.meta_path
        if not path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("sha256") != file_sha256(path):
                raise ValueError("checksum mismatch")
            value = _load_value(path, kind)
        except Exception as err:
            logger.warning("cache file %s is damaged (%s): recomputing it", path, err)
            return None
        self.report = {**meta.get("report", {}), "stage": self.name, "cached": True, "path": str(path)}
        return value

    def run(self, compute: Callable[[], Any], kind: str = "npy", collective: bool = False) -> Any:
        """Load the artefact, or compute it (``compute() -> value`` or ``(value, report)``) and save it.

        Under ``torch.distributed`` rank 0 decides: it loads or computes and saves while the
        other ranks wait at a barrier, then they load its file. With ``collective=True`` every
        rank runs ``compute`` (which may use collectives) when rank 0 finds no valid file.
        """
        if kind not in KINDS:
            raise ValueError(f"stage kind must be one of {sorted(KINDS)}, got {kind!r}")
        if not _distributed():
            value = self.load(kind)
            if value is None:
                value = self._compute_and_save(compute, kind)
        elif collective:
            value = self.load(kind) if _rank() == 0 else None
            missing = [value is None]
            torch.distributed.broadcast_object_list(missing, src=0)
            if missing[0]:
                value = self._compute_and_save(compute, kind)
            _barrier()
            if value is None:
                value = self._load_written(kind)
        else:
            if _rank() == 0:
                value = self.load(kind)
                if value is None:
                    value = self._compute_and_save(compute, kind)
            _barrier()
            if _rank() != 0:
                value = self._load_written(kind)
        _publish(self.report)
        return value

    def _load_written(self, kind: str) -> Any:
        value = self.load(kind)
        if value is None:
            raise RuntimeError(f"stage {self.name}: rank 0 wrote no valid {self.path(kind)}")
        return value

    def _compute_and_save(self, compute: Callable[[], Any], kind: str) -> Any:
        started = time.perf_counter()
        with isolated_rng():
            result = compute()
        value, report = result if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict) \
            else (result, {})
        report = {**report, "seconds": round(time.perf_counter() - started, 2)}
        path = self.path(kind)
        if _rank() == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            _save_value(path, value, kind)
            meta = {"stage": self.name, "key": self.key, "kind": kind, "sha256": file_sha256(path),
                    "report": report, "inputs": _summary(self.inputs)}
            atomic_write(self.meta_path, lambda tmp: Path(tmp).write_text(
                json.dumps(meta, indent=2, sort_keys=True, default=str), encoding="utf-8"))
            self.checkpoint.remove()
            logger.info("stage %s computed in %.1f s, cached at %s", self.name, report["seconds"], path)
        self.report = {**report, "stage": self.name, "cached": False, "path": str(path)}
        return _load_value(path, kind) if kind == "json" else value


def _summary(inputs: Dict[str, Any]) -> Dict[str, Any]:
    """Readable inputs for the sidecar: settings as values, arrays and paths as digests."""
    return {key: _canonical(value) for key, value in inputs.items()}
