"""Run folders you can trust: atomic files with the umask's permissions, stale temporaries
removed, one writer at a time (checked with real processes)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from toymodels.runs import (
    LOCK_OWNER_FILE,
    Run,
    RunLock,
    atomic_write,
    atomic_write_bytes,
    clean_stale_temporaries,
    process_umask,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "umask, mode",
    [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o000, 0o666)],
    ids=["umask022", "umask077", "umask002", "umask000"],
)
def test_atomic_write_gives_the_permissions_the_umask_implies(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        assert process_umask() == umask
        atomic_write_bytes(tmp_path / "config.json", b"{}")
        atomic_write_bytes(tmp_path / "config.json", b"{}\n")  # replacing keeps it so
    finally:
        os.umask(previous)
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "config.json").read_bytes() == b"{}\n"


def _python(script: str, *args: object) -> subprocess.Popen:
    """A fresh interpreter running `script` with this checkout's packages first on the path."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_killed_writers_temporaries_are_removed_and_nothing_else(tmp_path):
    killed = _python(
        f"""
        import os
        from toymodels.runs import atomic_write
        def die_half_way(f):
            f.write(b"half a table")
            f.flush()
            os._exit(9)  # like a SIGKILL: no cleanup runs
        atomic_write({str(tmp_path / "tables" / "losses.csv")!r}, die_half_way)
        """
    )
    assert killed.wait(timeout=60) == 9, killed.stderr.read()
    (stale,) = (tmp_path / "tables").iterdir()
    assert stale.name.startswith(".losses.csv.") and stale.name.endswith(".tmp")
    kept = [
        "config.json",
        "notes.tmp",
        ".hidden",
        ".config.json.tmp",
        ".config.json.ABCDEFGH.tmp",  # not mkstemp's alphabet
        "cache/.lock.owner",  # a folder with its own lock is left to its own lock
        "cache/.shard_00000.safetensors.abcd1234.tmp",
    ]
    removed = ["..lock.owner.x_1y2z3w.tmp", "sub/dir/.shard_00001.safetensors.q9w8e7r6.tmp"]
    for name in kept + removed:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert clean_stale_temporaries(tmp_path) == sorted(
        [tmp_path / name for name in removed] + [stale]
    )
    for name in kept:
        assert (tmp_path / name).exists(), name
    assert clean_stale_temporaries(tmp_path / "missing") == []


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    atomic_write_bytes(tmp_path / "metrics.json", b"old")

    def interrupted(f):
        f.write(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "metrics.json", interrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert (tmp_path / "metrics.json").read_bytes() == b"old"


HOLD_THE_LOCK = """
    import sys
    from toymodels.runs import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()  # hold it until told, or until killed
"""


def test_a_second_writer_is_refused_naming_the_holder_until_the_holder_dies(tmp_path):
    folder = tmp_path / "run"
    holder = _python(HOLD_THE_LOCK, folder)
    try:
        assert holder.stdout.readline() == "locked\n", holder.stderr.read()
        with pytest.raises(ValueError) as refused:
            RunLock(folder).acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert f"{folder} is in use by another job (pid {holder.pid} on " in message
        assert str(folder) in message.split(": ", 1)[1]  # the holder's command line
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with RunLock(folder) as lock:  # the OS released the dead holder's lock
        assert lock.is_locked
        assert f'"pid": {os.getpid()}' in (folder / LOCK_OWNER_FILE).read_text()
    assert not (folder / LOCK_OWNER_FILE).exists()


def test_of_two_writers_started_together_exactly_one_proceeds(tmp_path):
    race = """
        import sys, time
        from toymodels.runs import RunLock
        print("ready", flush=True)
        sys.stdin.readline()  # both start the race at once
        try:
            with RunLock(sys.argv[1]):
                time.sleep(1)  # still holding it when the other one tries
                print("proceeded", flush=True)
        except ValueError as error:
            print("refused:", error, flush=True)
    """
    writers = [_python(race, tmp_path / "run") for _ in range(2)]
    for writer in writers:
        assert writer.stdout.readline() == "ready\n", writer.stderr.read()
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    outcomes = sorted(writer.communicate(timeout=60)[0].split(":")[0].strip() for writer in writers)
    assert outcomes == ["proceeded", "refused"]


def test_the_lock_refuses_a_second_holder_in_the_same_process_too(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(ValueError, match=rf"in use by another job \(pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    first.release()
    first.release()  # releasing twice is harmless
    with RunLock(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_taking_the_lock_removes_stale_temporaries(tmp_path):
    stale = tmp_path / ".manifest.json.abcd1234.tmp"
    stale.write_bytes(b"half")
    with RunLock(tmp_path):
        assert not stale.exists()


def test_under_torchrun_only_rank_zero_writes_the_run(tmp_path, monkeypatch):
    """Rank 1 computes the same run but writes nothing and takes no lock; rank 0 writes it and
    records the world size."""
    table = pd.DataFrame({"a": [1, 2]})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    follower = Run(tmp_path / "run", {"x": 1})
    assert follower.write_table("t", table) == tmp_path / "run" / "tables" / "t.csv"
    follower.write_metrics({"m": 1.0})
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("RANK", "0")
    with Run(tmp_path / "run", {"x": 1}) as writer:
        writer.write_table("t", table)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and list(manifest["files"]) == ["tables/t.csv"]
    follower.close()
