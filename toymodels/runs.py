"""Run folders: the one record every experiment writes and every report reads.

A run is a folder holding config.json, metrics.json, tables (CSV), checkpoints and manifest.json
(package versions, git commit, seeds, data hashes, command line). Every file is written atomically
(temporary file then rename), so an interrupted job never leaves a half-written record; the
temporaries a killed job leaves behind are removed by the next writer. One writer at a time:
`RunLock` holds an OS lock on the folder, which the OS releases when the holder dies. Under
torchrun only rank 0 writes: on the other ranks a Run computes nothing different but writes
nothing (its paths are the same), so a job's code is the same at any world size.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

import filelock
import pandas as pd

from theory.config import config_from_json, config_to_json

Config = TypeVar("Config")

TRACKED_PACKAGES = (
    "sae-hedging",
    "numpy",
    "scipy",
    "sympy",
    "torch",
    "pandas",
    "matplotlib",
    "transformers",
    "gguf",
    "accelerate",
    "safetensors",
    "hypothesis",
    "simple-parsing",
    "scikit-learn",
    "typst",
    "filelock",
)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on a temporary file, then rename it to `path`, so readers see either
    the old file or the whole new one. The file gets the permissions a plain open() would give
    it (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~process_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_UMASK_LOCK = threading.Lock()


def process_umask() -> int:
    """The process umask, read without changing it where Linux reports it (/proc/self/status);
    elsewhere set and restored under a lock, so no other atomic_write sees the brief 0."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o022)
        os.umask(umask)
    return umask


LOCK_FILE = ".lock"
LOCK_OWNER_FILE = ".lock.owner"
# atomic_write's temporaries: "." + the final name + "." + mkstemp's 8 random characters + ".tmp"
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def clean_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries atomic_write left in `folder` and below when its writer was killed
    between creating and renaming them; return their paths.

    Call it only while no one writes there (holding the folder's RunLock): a live writer's
    temporary looks exactly like a stale one. A subfolder with its own lock record (an activation
    cache inside a run) is left to whoever locks it next.
    """
    removed = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (Path(root, d) / LOCK_OWNER_FILE).exists())
        for name in sorted(files):
            path = Path(root, name)
            if _TEMPORARY.fullmatch(name) and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode()
    )


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The toolkit's git commit (with a '-dirty' suffix for uncommitted changes), if known."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class RunLock:
    """The one-writer lock of a folder: an OS lock on folder/.lock, taken without waiting.

    A second writer, in this process or any other, gets a one-line ValueError naming the folder
    and the holder (pid, host, command line, from folder/.lock.owner). The OS drops the lock when
    the holder's process dies, however it dies, so a killed job never blocks the next one.
    Acquiring also removes the temporaries a killed writer left behind (clean_stale_temporaries).
    Use as `with RunLock(folder): ...`; it is not re-entrant.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock = filelock.FileLock(self.folder / LOCK_FILE, timeout=0, thread_local=False)

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise ValueError(
                f"{self.folder} is in use by another job ({self._holder()}); wait for it to "
                "finish or choose another folder"
            ) from None
        try:
            atomic_write_json(
                self.folder / LOCK_OWNER_FILE,
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": shlex.join(sys.argv),
                    "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
            )
            clean_stale_temporaries(self.folder)
        except BaseException:
            self._lock.release(force=True)
            raise
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            # Removed while still held, so the next holder's record is never the one deleted.
            (self.folder / LOCK_OWNER_FILE).unlink(missing_ok=True)
            self._lock.release(force=True)

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _holder(self) -> str:
        try:
            owner = json.loads((self.folder / LOCK_OWNER_FILE).read_text())
            command = " ".join(str(owner["command"]).split())  # one line, whatever argv held
            return f"pid {owner['pid']} on {owner['host']} since {owner['since']}: {command}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder not yet recorded"


class Run:
    """One run folder. Create with the job's typed config (or, for runs written by users' own
    scripts, a plain mapping); add metrics, tables and hashes.

    `artefacts` names what the run made for others to use (e.g. "sae": the SAE folder,
    "cache": the activation cache), recorded in the manifest so a later reader finds them
    without rebuilding paths."""

    def __init__(
        self,
        folder: str | Path,
        config: Any,
        seeds: Mapping[str, int] | None = None,
        kind: str = "experiment",
    ) -> None:
        from toymodels.distributed import world  # imports torch: only when a run is made

        self.folder = Path(folder)
        check_run_folder(self.folder, config)  # before anything in the folder changes
        me = world()
        self.writes = me.is_main
        self._lock: RunLock | None = None
        if self.writes:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock(self.folder).acquire()
        self.config = config
        self.manifest: dict[str, Any] = {
            "kind": kind,
            "config_type": f"{type(config).__module__}.{type(config).__qualname__}",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "git_commit": git_commit(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": package_versions(),
            "world_size": me.world_size,
            "seeds": dict(seeds or {}),
            "data_hashes": {},
            "files": {},
            "artefacts": {},
        }
        if self.writes:
            atomic_write_json(self.folder / "config.json", _plain(config))
        self._write_manifest()

    def close(self) -> None:
        """Release the folder's lock (the job is done writing)."""
        lock = getattr(self, "_lock", None)  # absent when __init__ refused the folder
        if lock is not None:
            lock.release()
            self._lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def artefacts(self) -> dict[str, Path]:
        """Named outputs of the run (absolute paths)."""
        return {name: self.folder / rel for name, rel in self.manifest["artefacts"].items()}

    def record_artefact(self, name: str, path: Path) -> Path:
        """Name an output of the run (a path inside its folder) for later readers."""
        self.manifest["artefacts"][name] = str(Path(path).relative_to(self.folder))
        self._write_manifest()
        return Path(path)

    def record_provenance(self, **facts: Any) -> None:
        """Facts about the run's inputs (model, quantization, ...) kept in the manifest."""
        self.manifest.update(facts)
        self._write_manifest()

    def record_data_hash(self, name: str, digest: str) -> None:
        self.manifest["data_hashes"][name] = digest
        self._write_manifest()

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        return self.write_json("metrics.json", metrics)

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.folder / name
        if self.writes:
            atomic_write_json(path, obj)
            self._record_file(path)
        return path

    def write_table(self, name: str, table: pd.DataFrame) -> Path:
        """A tidy table as CSV under tables/."""
        path = self.folder / "tables" / f"{name}.csv"
        if self.writes:
            atomic_write_bytes(path, table.to_csv(index=False).encode())
            self._record_file(path)
        return path

    def path(self, *parts: str) -> Path:
        """A path inside the run (parents created) for files written by other libraries."""
        path = self.folder.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def record_file(self, path: Path) -> None:
        """Hash a file written by someone else (figure, checkpoint) into the manifest."""
        self._record_file(Path(path))

    def _record_file(self, path: Path) -> None:
        if self.writes:
            self.manifest["files"][str(path.relative_to(self.folder))] = sha256_file(path)
            self._write_manifest()

    def _write_manifest(self) -> None:
        if self.writes:
            atomic_write_json(self.folder / "manifest.json", self.manifest)


class RunView:
    """A run folder written by another process (rank 0 of a torchrun job), read-only: its
    folder, manifest and named artefacts, as on the Run that wrote it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def manifest(self) -> dict[str, Any]:
        return read_run(self.folder)["manifest"]

    @property
    def artefacts(self) -> dict[str, Path]:
        """Named outputs of the run (absolute paths)."""
        return {name: self.folder / rel for name, rel in self.manifest["artefacts"].items()}


def _plain(config: Any) -> dict[str, Any]:
    return dict(config) if isinstance(config, Mapping) else config_to_json(config)


def check_run_folder(folder: str | Path, config: Any) -> None:
    """Refuse, touching nothing, a folder that is a file or holds a run of another config (the
    same config resumes). Jobs call it before any work; Run calls it again before writing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; a run needs a folder (choose another --out)")
    path = folder / "config.json"
    if not path.is_file():
        return
    try:
        existing = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} cannot be read ({error}); delete the folder to start over"
        ) from None
    requested = json.loads(json.dumps(_plain(config), default=_jsonable))
    if existing != requested:
        old, new = dict(flatten(existing)), dict(flatten(requested))
        differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise ValueError(
            f"{folder} holds a run of another config (differs in {', '.join(differ)}); "
            "choose another --out, or delete the folder to start over"
        )


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys: {"a": {"b": 1}} -> [("a.b", 1)]."""
    pairs: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            pairs.extend(flatten(value, name))
        else:
            pairs.append((name, value))
    return pairs


def read_run(folder: str | Path) -> dict[str, Any]:
    """Config, metrics, manifest and tables of a run folder, for reports."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise ValueError(f"{folder} is not a run folder (no manifest.json)")

    def load(name: str) -> dict[str, Any] | None:
        path = folder / name
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path} must hold a JSON object, not a {type(record).__name__}")
        return record

    tables = {p.stem: pd.read_csv(p) for p in sorted((folder / "tables").glob("*.csv"))}
    return {
        "folder": folder,
        "config": load("config.json"),
        "metrics": load("metrics.json"),
        "manifest": load("manifest.json"),
        "tables": tables,
    }


def named_artefact(folder: str | Path, name: str) -> Path | None:
    """The artefact `name` of a run folder (see Run.artefacts), or None when `folder` is not a
    run folder or names no such artefact."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artefacts"), dict):
        return None
    relative = manifest["artefacts"].get(name)
    return None if relative is None else folder / relative


def load_config(folder: str | Path, cls: type[Config]) -> Config:
    """A run folder's config.json as its typed config."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    return config_from_json(cls, data)
