"""Which files to read: expand log sources (files, folders, globs, object-storage URLs) into files.

Also the log settings' defaults that go with finding files: the configured sources, the quarantine
path, and whether a file is Parquet or JSON Lines (by its name, else by its first bytes).
"""

from __future__ import annotations

import glob as _glob
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from tasks.config import LogsSettings

__all__ = [
    "RemoteSourceError",
    "default_quarantine",
    "expand_sources",
    "is_parquet",
    "is_remote",
    "logs_settings",
    "resolve_sources",
]

_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = re.compile(r"[*?\[]")


def logs_settings(settings: Any) -> LogsSettings:
    """The ``logs`` section, given either it or the whole Settings."""
    if isinstance(settings, LogsSettings):
        return settings
    logs = getattr(settings, "logs", None)
    if isinstance(logs, LogsSettings):
        return logs
    raise TypeError(f"expected LogsSettings or Settings, got {type(settings).__name__}")


def default_quarantine(settings: Any, workspace: str | Path) -> Path:
    """``logs.quarantine`` resolved against the workspace (where it is relative)."""
    path = Path(logs_settings(settings).quarantine)
    return path if path.is_absolute() else Path(workspace) / path


def resolve_sources(
    sources: Sequence[str | Path] | None,
    settings: Any,
    workspace: str | Path,
    *,
    exclude: Iterable[str | Path] = (),
) -> list[str]:
    """Expand files, directories and globs into a sorted, de-duplicated list of log files.

    No sources: ``logs.sources`` from the config; none there either: ``<workspace>/logs``. A path
    that does not exist or a pattern that matches nothing is an error naming it. The configured
    quarantine file (and ``exclude``) is never picked up by a directory or a pattern.
    """
    logs = logs_settings(settings)
    items = [str(item) for item in (sources or [])] or [str(item) for item in logs.sources]
    if not items:
        default = Path(workspace) / "logs"
        if not default.is_dir():
            raise FileNotFoundError(
                f"no log sources given and {default} does not exist: pass log files or globs, "
                "set logs.sources in the config, or write logs there (e.g. flywheel simulate)"
            )
        items = [str(default)]
    return expand_sources(items, [default_quarantine(logs, workspace), *exclude])


def expand_sources(items: Iterable[str], skip: Iterable[str | Path] = ()) -> list[str]:
    """The files named by `items`, de-duplicated, in order (each folder's or pattern's files sorted).

    A folder or a pattern never picks up a path in `skip` (the quarantine file); a file named
    explicitly is kept as given. An entry that names nothing is a FileNotFoundError naming it.
    """
    skipped = {_canonical(path) for path in skip}
    found: list[str] = []
    for item in items:
        matched = [path for path in _expand(item) if path == item or _canonical(path) not in skipped]
        if not matched:
            raise FileNotFoundError(_nothing_matched(item))
        found.extend(matched)
    return list(dict.fromkeys(found))


def is_remote(source: str) -> bool:
    """Object storage (``s3://``, ``gs://``, ...), read through fsspec (s3fs for s3://); ``file://`` is local."""
    return bool(_URL.match(source)) and not source.startswith("file://")


def is_parquet(source: str) -> bool:
    """Parquet by its name (.parquet, .pq); JSON Lines by its name; otherwise by its first bytes (``PAR1``)."""
    lower = source.lower()
    if lower.endswith(_PARQUET_SUFFIXES):
        return True
    if lower.endswith(_JSONL_SUFFIXES + (".json",)):
        return False
    if is_remote(source):
        import fsspec

        with fsspec.open(source, "rb") as handle:
            return handle.read(4) == b"PAR1"
    with open(source.removeprefix("file://"), "rb") as handle:
        return handle.read(4) == b"PAR1"


def _canonical(path: str | Path) -> str:
    text = str(path)
    return text if _URL.match(text) else str(Path(text).resolve())


def _is_log_name(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(_JSONL_SUFFIXES + _PARQUET_SUFFIXES)


def _expand(item: str) -> list[str]:
    """Files named by one source entry ([] if it names nothing); an explicit file is kept as given."""
    if is_remote(item):
        return _expand_remote(item)
    if item.startswith("file://"):
        item = item[len("file://") :]
    if _GLOB_CHARS.search(item):
        return sorted(path for path in _glob.glob(item, recursive=True) if Path(path).is_file())
    path = Path(item)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_log_name(p.name))
    if path.is_file():
        return [item]
    return []


def _expand_remote(url: str) -> list[str]:
    """Objects named by an object-storage URL. s3:// goes through s3fs, which takes credentials the way
    every AWS client does (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role) and
    an S3-compatible endpoint from AWS_ENDPOINT_URL; they are never part of a message."""
    import fsspec  # optional: only object storage needs it

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as err:
        raise ValueError(f"log source {url}: {err}. Fix: pip install 'llm-flywheel[s3]' (s3fs)") from None
    try:
        if _GLOB_CHARS.search(path):
            paths = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            paths = [p for p in fs.find(path) if _is_log_name(p.rsplit("/", 1)[-1])]
        elif fs.exists(path):
            return [url]
        else:
            paths = []
    except FileNotFoundError:
        paths = []  # no such bucket: named below like a missing file
    except OSError as err:  # PermissionError included
        raise RemoteSourceError(
            f"log source {url} cannot be listed ({type(err).__name__}: {err}). Fix: check the credentials "
            "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and, for an S3-compatible store, "
            "AWS_ENDPOINT_URL"
        ) from None
    return sorted(fs.unstrip_protocol(p) for p in paths)


class RemoteSourceError(ValueError):
    """An object-storage source that cannot be listed (credentials, endpoint, network); names the URL."""


def _nothing_matched(item: str) -> str:
    if is_remote(item):
        return (f"log source {item} matches no objects: check the bucket and the key or prefix "
                "(and AWS_ENDPOINT_URL, for an S3-compatible store)")
    if _GLOB_CHARS.search(item):
        return f"log source pattern {item!r} matches no files: check the folder and the pattern"
    if Path(item).is_dir():
        return (
            f"log folder {item} holds no .jsonl/.ndjson/.jsonl.gz/.parquet files: "
            "point at the files themselves or write logs there"
        )
    return f"log source {item} does not exist: check the path (relative paths start at the current directory)"
