"""Atomic writes and hashing: a crash never leaves a half-written output behind.

Outputs get the user's usual permissions (the umask), not the 0600/0700 of mkstemp/mkdtemp.
`check_out_dir` runs before any work: it refuses an --out that cannot be written, that is the
current directory (or above it, or the home directory), that holds an input, or that `--force`
would replace although tunetrace did not write it. Each staged output carries a small marker,
`.tunetrace-output`, listing what tunetrace wrote there, so `--force` never deletes anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

MARKER = ".tunetrace-output"  # JSON {"written": [top-level names]} in every staged output directory
ADDED_LATER = ("report.html", "link", "link.parquet", "link.json", "run.json")  # added to a finished output (features-link: link/; before: link.*)
# Record files that mark an output written before the marker existed.
LEGACY_RECORDS = ("manifest.json", "summary.json", "finetune.json", "run.json", "cfg.json", "counts.json",
                  "headline.json", "quality.json", "tunetrace_source.json")


class OutDirError(ValueError):
    """An --out that cannot or must not be written; the message names it and the fix."""


def _umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions for a new output file: what `open()` would give it (0666 less the umask)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Permissions for a new output directory: what `mkdir` would give it (0777 less the umask)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `target`; move it onto `target` only if the block succeeds."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise OutDirError(f"cannot write {target}: {err.strerror} ({err.filename}); choose another path or fix its permissions.") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())  # mkstemp made it 0600
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a corrupt one fails with a line naming the file, not a bare decoder message."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text: the file is corrupt; rerun the command that wrote it.") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}): the file is corrupt; rerun the command that wrote it."
        ) from None


def decode_text(raw: bytes, name: str, first_line: int = 1) -> str:
    """UTF-8 bytes to text (a leading BOM dropped); bad bytes fail with one line naming `name`, line and column."""
    try:
        return raw.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as err:
        line = first_line + raw.count(b"\n", 0, err.start)
        column = err.start - raw.rfind(b"\n", 0, err.start)
        raise ValueError(
            f"{name}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {column}); save the file as UTF-8."
        ) from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A text input file, or one line saying why not (missing, a directory, unreadable, not UTF-8)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{what} {path} is a directory, not a file: give the file inside it.")
    if not p.exists():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be read ({err.strerror}).") from None
    return decode_text(raw, str(path))


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Parquet table; a truncated or corrupt one fails with a line naming the file."""
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{path} is not a readable Parquet table ({first}): the file is corrupt; rerun the command that wrote it.") from None


def read_safetensors(path: str | os.PathLike, framework: str = "pt") -> dict:
    """Read a safetensors file into tensors (framework "pt") or arrays ("numpy"); a corrupt one is named."""
    import importlib

    from safetensors import SafetensorError

    load_file = importlib.import_module(f"safetensors.{'torch' if framework == 'pt' else framework}").load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{path} is not a readable safetensors file ({first}): it is truncated or corrupt; rerun the command that wrote it.") from None


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write a DataFrame as Parquet atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Parse a JSONL file tunetrace wrote (blank lines skipped); a corrupt line fails with a line naming the file and line."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number} is not valid JSON ({err.msg}): the file is corrupt; rerun the command that wrote it.") from None
    return rows


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def input_paths(config: object, skip: tuple[str, ...] = ("out",)) -> list[Path]:
    """Every field of a config dataclass naming an existing file or directory (the inputs an --out must not hold)."""
    values = []
    for name, value in vars(config).items():
        if name in skip:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, (str, os.PathLike)) and str(v) and ":" not in str(v) and Path(v).expanduser().exists():
                values.append(Path(v).expanduser())
    return values


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _elsewhere(what: str) -> str:
    """How to write somewhere else: --out for a command's output, TUNETRACE_CACHE for a cache."""
    if what == "cache":
        return "point TUNETRACE_CACHE at a writable directory of its own (or unset it for ~/.cache/tunetrace)"
    return "choose another --out"


def _check_writable(out: Path, what: str) -> None:
    """Create and remove a probe directory where the output will be staged (root ignores mode bits, so test, don't stat)."""
    where = _nearest_existing(out.parent)
    if not where.is_dir():
        raise OutDirError(f"cannot write {what} {out}: {where} is a file, not a directory; {_elsewhere(what)}.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tunetrace-probe-", dir=where))
    except OSError as err:
        raise OutDirError(
            f"cannot write {what} {out}: {where} is not writable ({err.strerror}); {_elsewhere(what)} or fix its permissions."
        ) from None


def _foreign_entries(out: Path) -> list[str] | None:
    """Names in `out` that tunetrace did not write; None when `out` is not a tunetrace output at all."""
    marker = out / MARKER
    if marker.is_file():
        try:
            written = set(json.loads(marker.read_text())["written"])
        except (ValueError, KeyError, TypeError, OSError):
            written = None
        if written is not None:
            known = written | {MARKER, *ADDED_LATER}
            return sorted(p.name for p in out.iterdir() if p.name not in known)
    if any((out / name).is_file() for name in LEGACY_RECORDS):
        return []  # written before markers: recognised by its record file
    return None


def check_out_dir(
    out: str | os.PathLike, force: bool, what: str = "output", inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Fail early (before any work) if `out` cannot be written, or exists and may not be replaced.

    Refused whatever `force` says: the current directory or one above it, the home directory,
    a file, an unwritable place, a directory holding one of `inputs`. With `force`, a non-empty
    `out` is replaced only if it is a tunetrace output holding nothing tunetrace did not write.
    """
    out = Path(out).expanduser()
    real = out.resolve()
    if out.is_symlink():  # a link to an earlier output (runs/latest): the output is written where it points, the link kept
        out = real
    here, home = Path.cwd().resolve(), Path.home().resolve()
    if _is_within(here, real) or _is_within(home, real):
        place = "the current directory" if real == here else "the home directory" if real == home else f"a directory above {'the current' if _is_within(here, real) else 'the home'} directory"
        raise OutDirError(f"{what} directory {out} is {place}: --out must be a new directory of its own, e.g. --out runs/NAME.")
    if out.exists() and not out.is_dir():
        raise OutDirError(f"{what} path {out} is a file, not a directory: {_elsewhere(what)}.")
    for source in inputs:
        src = Path(source).expanduser()
        if str(source) and src.exists() and _is_within(src.resolve(), real):
            raise OutDirError(f"{what} directory {out} holds the input {source}: writing there would delete it; {_elsewhere(what)}.")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"{what} directory {out} already exists and is not empty: pass --force to overwrite it, or {_elsewhere(what)}."
            )
        foreign = _foreign_entries(out)
        if foreign is None:
            raise OutDirError(
                f"{what} directory {out} is not a tunetrace output: --force only replaces tunetrace outputs; {_elsewhere(what)}."
            )
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutDirError(
                f"{what} directory {out} holds files tunetrace did not write ({shown}): --force would delete them; move them or {_elsewhere(what)}."
            )
    _check_writable(out, what)
    return out


def _follow_umask(root: Path) -> None:
    """Give every file and folder under `root` the permissions a plain write would (libraries such as peft write 0600)."""
    files, dirs = file_mode(), dir_mode()
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, dirs if path.is_dir() else files)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, force: bool, what: str = "output") -> Iterator[Path]:
    """Build a whole output directory in a staging folder, then swap it into place.

    A failed run leaves the old `out` (if any) untouched and no partial directory behind
    (parent directories it had to create are removed again).
    """
    out = check_out_dir(out, force, what)
    missing = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    done = False
    try:
        os.chmod(stage, dir_mode())  # mkdtemp made it 0700
        yield stage
        _follow_umask(stage)
        write_json(stage / MARKER, {"written": sorted(p.name for p in stage.iterdir())})
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(stage, out)
        done = True
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        if not done:
            for p in missing:  # innermost first
                with contextlib.suppress(OSError):
                    p.rmdir()
