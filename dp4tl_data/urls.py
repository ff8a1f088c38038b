"""Shard names and URLs: stable names relative to a dataset root, and the safety rules for both.

A shard's *stable name* is its path relative to the dataset root, with forward slashes
(``train/00001.tar``). It does not depend on the URL scheme or mount point, so a keep-list made
against ``s3://bucket/laion/`` applies to the same shards under ``/mnt/laion/``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence

from .errors import KeepListError, ShardError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
COMMAND_PREFIXES = ("pipe:",)


def check_shard_name(name: object, where: str = "keep-list") -> str:
    """Return `name` if it is a safe relative shard name, else raise KeepListError.

    Safe means: a non-empty relative POSIX path with no ``..`` component, no scheme
    (``pipe:``, ``http:``), no backslash, no NUL and no leading slash.
    """
    if not isinstance(name, str) or not name:
        raise KeepListError(f"{where}: shard name must be a non-empty string, found {name!r}")
    if "\x00" in name or "\\" in name or "\n" in name:
        raise KeepListError(f"{where}: shard name {name!r} contains a forbidden character")
    if name.startswith("/") or _WINDOWS_DRIVE.match(name):
        raise KeepListError(f"{where}: shard name {name!r} is absolute; names are relative to the dataset root")
    if _SCHEME.match(name):
        raise KeepListError(f"{where}: shard name {name!r} is a URL or command; names are relative paths")
    parts = name.split("/")
    if any(p in ("..", ".", "") for p in parts):
        raise KeepListError(f"{where}: shard name {name!r} escapes or is not normalised under the dataset root")
    return name


def check_url(url: str, *, allow_commands: bool = False) -> str:
    """Return `url`, refusing command URLs (``pipe:``) unless the caller allows them."""
    if not allow_commands and url.startswith(COMMAND_PREFIXES):
        raise ShardError(f"{url!r}: command URLs are refused; pass allow_commands=True in code to run them")
    return url


def join_root(root: str, name: str) -> str:
    """The URL of shard `name` under dataset `root` (the name is checked first)."""
    check_shard_name(name)
    if not root:
        return name
    return root.rstrip("/") + "/" + name


def common_root(urls: Sequence[str]) -> str:
    """The longest common directory of `urls` (``""`` for none), ending without a slash."""
    if not urls:
        return ""
    dirs = [u.rsplit("/", 1)[0] if "/" in u else "" for u in urls]
    root = dirs[0]
    for d in dirs[1:]:
        while root and not (d == root or d.startswith(root + "/")):
            root = root.rsplit("/", 1)[0] if "/" in root else ""
    return root


def stable_name(url: str, root: str) -> str:
    """The stable name of `url` under `root`: its relative path, checked for safety."""
    if root:
        prefix = root.rstrip("/") + "/"
        if not url.startswith(prefix):
            raise ShardError(f"{url!r} is not under the dataset root {root!r}")
        rel = url[len(prefix) :]
    else:
        rel = url
    rel = posixpath.normpath(rel) if rel else rel
    try:
        return check_shard_name(rel, where=url)
    except KeepListError as exc:
        raise ShardError(str(exc)) from None


DATA_SCHEMES = frozenset(
    {"", "file", "local", "http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hf", "memory"}
)


def check_root(root: object, where: str) -> str:
    """A dataset root read from an untrusted file (an index): a plain path or a URL of a data
    filesystem. Command URLs (``pipe:``), fsspec chains (``a::b``) and other schemes are refused."""
    if not isinstance(root, str):
        raise ShardError(f"{where}: dataset root must be a string, found {type(root).__name__}")
    if "::" in root or root.startswith(COMMAND_PREFIXES) or "\x00" in root or "\n" in root:
        raise ShardError(f"{where}: dataset root {root!r} is a command or a chained URL; refused")
    m = _SCHEME.match(root)
    scheme = root[: m.end() - 1].lower() if m and not _WINDOWS_DRIVE.match(root) else ""
    if scheme not in DATA_SCHEMES:
        raise ShardError(f"{where}: dataset root {root!r} uses scheme {scheme!r}, not a data filesystem")
    return root
