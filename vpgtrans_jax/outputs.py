"""Where the tools write: whole outputs renamed into place, never over a user's files or inputs.

Every directory a tool writes (a model directory, a HF export, a word converter, a synthetic
dataset) goes through ``atomic_output``. It is written to a temporary sibling and renamed into
place when complete. It carries a marker file, ``.vpgtrans_output.json``, naming its kind, the
tool and its top-level entries. An existing target is handled this way:

- an empty directory, or nothing, is simply filled;
- a non-empty directory needs ``overwrite`` (``--overwrite``);
- even then it is replaced only when it is an earlier output of this project's tools (it holds
  the marker) and holds nothing besides what that output wrote. A directory of anyone else's
  files is refused untouched, whatever the flags.

A single-file output (a ``.pth``, a metrics JSON) cannot carry a marker. An existing file is
replaced only with ``overwrite`` (the caller decides what that flag is), and a directory never is.

On an object store (``gs://``) there is no rename: the output is staged locally and uploaded
under an in-progress marker that is deleted last (``paths.staged_output``); readers refuse a
directory that still has it. The same replace rules apply, read through ``paths``.

``check_separate`` refuses an output that is one of the inputs, lies inside one, or holds one
(resolved real paths, so symlinks and ``..`` do not hide it).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence

from vpgtrans_jax import paths
from vpgtrans_jax.errors import VPGTransError

MARKER = ".vpgtrans_output.json"
MARKER_FORMAT = "vpgtrans_jax.output"

PathLike = str | os.PathLike[str]
Inputs = Mapping[str, "PathLike | Sequence[PathLike] | None"]


class OutputError(VPGTransError, ValueError):
    """An output path that would replace, or sit inside, one of the command's inputs."""


# ---- outputs vs inputs ---------------------------------------------------------------------------


def _real(path: str) -> str:
    if "://" in path:  # a remote URI: compared as written
        return path.rstrip("/")
    return os.path.realpath(os.path.expanduser(path))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _expand(value: PathLike | Sequence[PathLike] | None) -> list[str]:
    """Input paths of one flag; a glob pattern (``dir/*.tar``) stands for the files it matches."""
    if value is None:
        return []
    values = [value] if isinstance(value, str | os.PathLike) else list(value)
    paths: list[str] = []
    for v in map(os.fspath, values):
        if not v:
            continue
        found = [] if os.path.exists(v) or not glob.has_magic(v) else sorted(glob.glob(v))
        paths += found or [v]
    return paths


def check_separate(
    out: PathLike, inputs: Inputs, *, out_label: str = "--out", family: str | None = None
) -> None:
    """Refuses ``out`` when it is an input, lies inside an input directory, or holds an input.

    Args:
      inputs: label (a flag name such as ``"--src"``) → path, list of paths or glob patterns.
      family: ``out`` is the prefix of the files it names, ``<out><suffix>`` for the suffixes
        this regular expression matches (sharded outputs); an input among them is refused.

    Raises:
      OutputError naming both paths and their flags.
    """
    out = os.fspath(out)
    o = _real(out)
    for label, value in inputs.items():
        for path in _expand(value):
            i = _real(path)
            if family is not None:
                named = re.fullmatch(re.escape(os.path.basename(o)) + f"(?:{family})",
                                     os.path.basename(i))  # fmt: skip
                same = named is not None and os.path.dirname(i) == os.path.dirname(o)
                how = "would write over" if same else ""
            elif o == i:
                how = "is"
            elif _inside(o, i):
                how = "is inside"
            elif _inside(i, o):
                how = "would replace the directory holding"
            else:
                how = ""
            if how:
                raise OutputError(
                    f"{out_label} {out} {how} the input {label} {path}; an output never "
                    "replaces or enters its own inputs: choose another output path"
                )


# ---- the marker ----------------------------------------------------------------------------------


def read_marker(path: str) -> dict | None:
    """The marker of an output directory written here, or None when it has none (or a bad one)."""
    try:
        m = json.loads(paths.read_text(paths.join(path, MARKER)))
    except (OSError, ValueError):
        return None
    ok = isinstance(m, dict) and m.get("format") == MARKER_FORMAT
    return m if ok and isinstance(m.get("entries"), list) else None


def _write_marker(path: str, kind: str, created_by: str) -> None:
    entries = sorted([*os.listdir(path), MARKER])
    marker = {"format": MARKER_FORMAT, "kind": kind, "created_by": created_by, "entries": entries}
    with open(os.path.join(path, MARKER), "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=1)


def _listing(entries: Sequence[str]) -> str:
    entries = sorted(entries)
    return ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")


def check_replaceable(
    out: str,
    *,
    overwrite: bool,
    is_dir: bool = True,
    also_ours: Callable[[str], bool] | None = None,
) -> None:
    """Raises FileExistsError unless writing ``out`` may replace what is there (module docstring).

    ``also_ours(out)`` recognises an earlier output of the caller's kind written before outputs
    carried the marker (it must only accept directories holding nothing but such an output).
    """
    remote = paths.is_remote(out)
    if not (paths.exists(out) if remote else os.path.lexists(out)):
        return
    if not is_dir:
        if paths.isdir(out):
            raise FileExistsError(f"{out} is a directory; the output is a file: choose a file path")
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        return
    if not paths.isdir(out):
        raise FileExistsError(
            f"{out} is a file, not a directory: remove it yourself or choose another output path"
        )
    entries = paths.listdir(out)
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} already exists and is not empty; pass --overwrite to replace it (only an "
            "earlier output of this project's tools is replaced)"
        )
    if paths.IN_PROGRESS in entries:  # an upload of ours that stopped before finishing
        return
    marker = read_marker(out)
    if marker is None:
        if also_ours is not None and also_ours(out):
            return
        raise FileExistsError(
            f"--overwrite refused: {out} is not an output of this project's tools (it has no "
            f"{MARKER}; it holds {_listing(entries)}). Nothing was changed: remove it yourself "
            "or choose another output path"
        )
    foreign = set(entries) - set(marker["entries"])
    if foreign:
        raise FileExistsError(
            f"--overwrite refused: {out} holds {_listing(foreign)}, which its earlier "
            f"{marker.get('kind', 'output')} did not write. Nothing was changed: move them out "
            "or choose another output path"
        )


# ---- writing -------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(
    out: str,
    *,
    overwrite: bool = False,
    is_dir: bool = True,
    kind: str = "output",
    created_by: str = "vpgtrans_jax",
    also_ours: Callable[[str], bool] | None = None,
) -> Iterator[str]:
    """Yields a temporary path beside ``out``; on success renames it to ``out``, else deletes it.

    What an existing ``out`` may be is decided before anything is written (``check_replaceable``;
    module docstring); it is replaced only after the new output is complete. A directory output
    gets the marker (``kind``, ``created_by`` and its top-level entries). A URL ``out`` is
    staged locally and uploaded under an in-progress marker (module docstring).
    """
    if paths.is_remote(out):
        out = paths.abspath(out)
        check_replaceable(out, overwrite=overwrite, is_dir=is_dir, also_ours=also_ours)
        with paths.staged_output(out, overwrite=True, is_dir=is_dir) as tmp:
            yield tmp
            if is_dir:
                _write_marker(tmp, kind, created_by)
        return
    out = os.path.abspath(out.rstrip("/") or out)
    check_replaceable(out, overwrite=overwrite, is_dir=is_dir, also_ours=also_ours)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(out)
    tmp = _new_temp(parent, f".{base}.tmp-", is_dir)
    try:
        yield tmp
        if is_dir:
            _write_marker(tmp, kind, created_by)
    except BaseException:
        _remove(tmp)
        raise
    if os.path.lexists(out):
        try:  # again: files may have been put there while the output was being written
            check_replaceable(out, overwrite=overwrite, is_dir=is_dir, also_ours=also_ours)
        except FileExistsError:
            _remove(tmp)
            raise
        old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
        os.rename(out, os.path.join(old, base))
        os.rename(tmp, out)
        _remove(old)
        return
    try:
        os.rename(tmp, out)
    except OSError as e:  # another writer created ``out`` meanwhile
        _remove(tmp)
        raise FileExistsError(f"{out} appeared while it was being written") from e


def _new_temp(parent: str, prefix: str, is_dir: bool) -> str:
    """A new, uniquely named directory or empty file in ``parent`` with the permissions of any
    new file (the umask applies). ``tempfile``'s are private (0700 / 0600), and the output keeps
    the temporary's mode when it is renamed into place."""
    for _ in range(100):
        path = os.path.join(parent, prefix + secrets.token_hex(4))
        try:
            if is_dir:
                os.mkdir(path)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}* in {parent}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


__all__ = [
    "MARKER",
    "OutputError",
    "atomic_output",
    "check_replaceable",
    "check_separate",
    "read_marker",
]
