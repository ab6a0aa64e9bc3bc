"""Run folders: the one record every experiment writes and every report reads.

A run is a folder holding config.json, metrics.json, tables (CSV), checkpoints and manifest.json
(package versions, git commit, seeds, data hashes, command line). Every file is written atomically
(temporary file then rename), so an interrupted job never leaves a half-written record.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

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
)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on a temporary file, then rename it to `path`, so readers see either
    the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
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
            "seeds": dict(seeds or {}),
            "data_hashes": {},
            "files": {},
            "artefacts": {},
        }
        plain = dict(config) if isinstance(config, Mapping) else config_to_json(config)
        atomic_write_json(self.folder / "config.json", plain)
        self._write_manifest()

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
        atomic_write_json(path, obj)
        self._record_file(path)
        return path

    def write_table(self, name: str, table: pd.DataFrame) -> Path:
        """A tidy table as CSV under tables/."""
        path = self.folder / "tables" / f"{name}.csv"
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
        self.manifest["files"][str(path.relative_to(self.folder))] = sha256_file(path)
        self._write_manifest()

    def _write_manifest(self) -> None:
        atomic_write_json(self.folder / "manifest.json", self.manifest)


def read_run(folder: str | Path) -> dict[str, Any]:
    """Config, metrics, manifest and tables of a run folder, for reports."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise ValueError(f"{folder} is not a run folder (no manifest.json)")

    def load(name: str) -> Any:
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else None

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
