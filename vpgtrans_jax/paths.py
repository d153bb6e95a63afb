"""Local and cloud paths alike: ``gs://bucket/...`` (any URL ``etils.epath`` opens) or a file path.

Every place that takes a path goes through these few functions, so a workdir, a model
directory, a data shard or an evaluation output may live on GCS. Local paths keep their plain
``os`` behaviour (and speed). Object stores differ from a disk in three ways that matter here:

- **No rename.** A directory output is written to a local staging directory and uploaded under
  an *in-progress* marker (``staged_output``): the marker object is written first and deleted
  last, and ``check_complete`` refuses a directory that still has it. A half-uploaded (or crashed)
  output is therefore never mistaken for a complete one.
- **No append.** ``AppendFile`` keeps what it wrote and rewrites the whole object on ``flush``
  (one PUT, atomic for readers).
- **No flock.** ``create_exclusive`` creates an object only if it does not exist (GCS
  ``ifGenerationMatch=0`` precondition); ``delete_if_unchanged`` deletes one only if nobody
  rewrote it since it was read. The training workdir's lock is built on the two.

Files that a library can only read from disk (Hugging Face tokenizers, safetensors shards,
ArrayRecord shards, pickles) are fetched once into a local cache by ``local_copy``.
"""

from __future__ import annotations

import contextlib
import glob as glob_lib
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from etils import epath

# etils.epath (Orbax's path layer) would open gs:// through TensorFlow's GFile whenever TF is
# installed; this keeps every gs:// access on one client stack, gcsfs, the one tested here.
# Set at import: changing it after Orbax has touched a path was seen to have no effect.
os.environ.setdefault("EPATH_USE_TF", "false")

# Written first and deleted last by ``staged_output``; its presence means "incomplete".
IN_PROGRESS = ".vpgtrans_writing"
_GLOB_MAGIC = re.compile(r"[*?\[]")


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs (``gs://...``, ``s3://...``); False for file paths."""
    return "://" in str(path)


def _p(path: str) -> epath.Path:
    return epath.Path(path)


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a URL and the path in it, with no stale listing cached (another
    process, e.g. another host of a pod, may have written there since)."""
    fs, key = fsspec.core.url_to_fs(path)
    fs.invalidate_cache()
    return fs, key


def abspath(path: str) -> str:
    """A file path made absolute (``~`` expanded); a URL with trailing slashes dropped."""
    path = os.fspath(path)
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{rest.rstrip('/')}"
    return os.path.abspath(os.path.expanduser(path))


def isabs(path: str) -> bool:
    return is_remote(path) or os.path.isabs(path)


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def relpath(path: str, start: str) -> str:
    """``path`` relative to the directory ``start`` (for links between files of one output).

    Two URLs in the same bucket are related by their keys (``/``-separated); a URL and a file
    path, or URLs in different buckets, have no relative path: ``path`` is returned whole.
    """
    if not is_remote(path) and not is_remote(start):
        return os.path.relpath(path, start)
    here, there = abspath(path).split("://", 1), abspath(start).split("://", 1)
    if len(here) != 2 or len(there) != 2 or here[0] != there[0]:
        return path
    (bucket, _, key), (start_bucket, _, start_key) = here[1].partition("/"), there[1].partition("/")
    if bucket != start_bucket:
        return path
    return posixpath.relpath("/" + key, "/" + start_key)


def exists(path: str) -> bool:
    if is_remote(path):
        fs, key = _fs(path)
        return fs.exists(key)
    return os.path.exists(path)


def isdir(path: str) -> bool:
    if is_remote(path):
        fs, key = _fs(path)
        return fs.isdir(key)
    return os.path.isdir(path)


def isfile(path: str) -> bool:
    if is_remote(path):
        fs, key = _fs(path)
        return fs.isfile(key)
    return os.path.isfile(path)


def listdir(path: str) -> list[str]:
    """Sorted entry names of a directory (a prefix's immediate children on an object store)."""
    if is_remote(path):
        fs, key = _fs(path)
        return sorted(posixpath.basename(k.rstrip("/")) for k in fs.ls(key, detail=False))
    return sorted(os.listdir(path))


def makedirs(path: str) -> None:
    """Creates a directory and its parents (nothing to do on an object store)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def open_file(path: str, mode: str = "r") -> IO[Any]:
    """``open`` for files and URLs. On an object store a write is one object, visible on close."""
    if is_remote(path):
        if "a" in mode or "+" in mode:
            raise ValueError(f"{path}: object stores cannot append ({mode!r}); use AppendFile")
        return _p(path).open(mode)
    return open(path, mode)


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    with open_file(path, "r") as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Writes ``text`` whole: readers see the old or the new content, never a part."""
    if is_remote(path):
        _p(path).write_text(text)  # one object PUT
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def remove(path: str) -> None:
    if is_remote(path):
        _p(path).unlink()
    else:
        os.remove(path)


def rmtree(path: str) -> None:
    if is_remote(path):
        if _p(path).exists():
            _p(path).rmtree()
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def walk_files(root: str) -> list[str]:
    """Paths relative to ``root`` (``/``-separated) of every file below it, sorted."""
    if is_remote(root):
        fs, key = _fs(root)
        key = key.rstrip("/")
        found = fs.find(key)
        return sorted(k[len(key) + 1 :] for k in found if k.startswith(key + "/"))
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(out)


def move(src: str, dst: str) -> None:
    """Renames a file or directory; on an object store, copies every object and deletes the
    originals (not atomic: used for moving finished runs and checkpoints aside)."""
    if not is_remote(src) and not is_remote(dst):
        os.rename(src, dst)
        return
    if isfile(src):
        copy_file(src, dst)
    else:
        for rel in walk_files(src):
            copy_file(join(src, rel), join(dst, rel))
    rmtree(src)


def copy_file(src: str, dst: str) -> None:
    """Copies one file between disks and object stores (parents created on disk)."""
    if not is_remote(dst):
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    with open_file(src, "rb") as fi, open_file(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, 16 * 2**20)


def read_range(path: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` (one ranged GET on an object store)."""
    if is_remote(path):
        fs, key = fsspec.core.url_to_fs(path)
        return fs.cat_file(key, start=offset, end=offset + size)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def glob(pattern: str) -> list[str]:
    """Sorted paths matching a glob pattern (``*``, ``?``, ``[...]``), on disk or in a bucket."""
    if not is_remote(pattern):
        return sorted(glob_lib.glob(pattern))
    if not _GLOB_MAGIC.search(pattern):
        return [pattern] if exists(pattern) else []
    fs, key = _fs(pattern)
    scheme = pattern.split("://", 1)[0]
    return sorted(f"{scheme}://{k}" for k in fs.glob(key))


# ---- outputs without rename ---------------------------------------------------------------------


def check_complete(path: str) -> None:
    """Raises OSError when ``path`` is a directory output still being written (or whose writer
    died): its in-progress marker is there. Local directories are renamed into place whole."""
    if is_remote(path) and exists(join(path, IN_PROGRESS)):
        raise OSError(
            f"{path} is incomplete: it is being written, or its writer stopped before finishing "
            f"({IN_PROGRESS} is present); wait for the writer, or write it again"
        )


@contextlib.contextmanager
def staged_output(out: str, *, overwrite: bool = False, is_dir: bool = True) -> Iterator[str]:
    """The object-store version of write-to-a-temporary-then-rename, for a URL ``out``.

    Yields a local staging path. On success its content is uploaded to ``out``: the in-progress
    marker first, then (when replacing) the old objects are deleted, then every file, and the
    marker is deleted last; ``check_complete`` refuses ``out`` until then. On failure nothing
    is uploaded.
    """
    out = abspath(out)
    if exists(out) and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite (--overwrite) to replace it")
    staging = tempfile.mkdtemp(prefix="vpgtrans-staging-")
    local = os.path.join(staging, "out")
    if is_dir:
        os.mkdir(local)
    try:
        yield local
        if not is_dir:
            copy_file(local, out)
            return
        marker = join(out, IN_PROGRESS)
        write_text(marker, "being written\n")
        for rel in walk_files(out) if exists(out) else []:
            if rel != IN_PROGRESS:
                remove(join(out, rel))
        for rel in walk_files(local):
            copy_file(os.path.join(local, rel), join(out, rel))
        remove(marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class AppendFile:
    """An append-only text file. Locally a file opened for append; on an object store the whole
    content is kept and rewritten as one object on every ``flush``."""

    def __init__(self, path: str, binary: bool = False):
        self.path, self._binary = path, binary
        self._remote = is_remote(path)
        if self._remote:
            self._data = read_bytes(path) if exists(path) else b""
            self._dirty = False
        else:
            self._f = open(path, "ab" if binary else "a")

    def write(self, data: str | bytes) -> None:
        if not self._remote:
            self._f.write(data)
            return
        self._data += data if isinstance(data, bytes) else data.encode()
        self._dirty = True

    def flush(self) -> None:
        if not self._remote:
            self._f.flush()
        elif self._dirty:
            with open_file(self.path, "wb") as f:
                f.write(self._data)
            self._dirty = False

    def sync(self) -> None:
        """``flush``, and on disk ``fsync`` too (the data survives a crash of the machine)."""
        self.flush()
        if not self._remote:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self.flush()
        if not self._remote:
            self._f.close()


# ---- create-if-absent (locks) -------------------------------------------------------------------


def _gcs(path: str) -> tuple[Any, str, str] | None:
    """``(gcsfs filesystem, bucket, key)`` for a ``gs://`` URL, else None."""
    if not path.startswith("gs://"):
        return None
    import gcsfs  # lazy: only gs:// locks need the GCS client's preconditions

    bucket, _, key = path[len("gs://") :].partition("/")
    return gcsfs.GCSFileSystem(), bucket, key


def create_exclusive(path: str, data: bytes) -> bool:
    """Creates ``path`` holding ``data`` only if it does not exist; returns whether it did.

    Atomic against other writers: ``O_EXCL`` on disk, the ``ifGenerationMatch=0`` precondition
    on GCS. Other object stores have no such primitive: an exists-check then a write.
    """
    if not is_remote(path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    gcs = _gcs(path)
    if gcs is None:
        if exists(path):
            return False
        with open_file(path, "wb") as f:
            f.write(data)
        return True
    fs, bucket, key = gcs
    try:
        fs.pipe_file(f"{bucket}/{key}", data, mode="create")
    except Exception as e:  # noqa: BLE001 - gcsfs raises FileExistsError for HTTP 412
        if isinstance(e, FileExistsError) or "412" in str(e):
            return False
        raise
    return True


def generation(path: str) -> str | None:
    """An identifier of the current content of an object (GCS generation; else its mtime/size),
    for ``delete_if_unchanged``; None when it does not exist."""
    if not exists(path):
        return None
    gcs = _gcs(path)
    if gcs is not None:
        fs, bucket, key = gcs
        fs.invalidate_cache(f"{bucket}/{key}")
        return str(fs.info(f"{bucket}/{key}").get("generation"))
    if is_remote(path):
        return hashlib.sha256(read_bytes(path)).hexdigest()
    st = os.stat(path)
    return f"{st.st_mtime_ns}-{st.st_size}"


def delete_if_unchanged(path: str, gen: str) -> bool:
    """Deletes ``path`` only if its ``generation`` is still ``gen``; returns whether it did."""
    gcs = _gcs(path)
    if gcs is None:
        if generation(path) != gen:
            return False
        remove(path)
        return True
    fs, bucket, key = gcs
    try:
        fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=gen)
    except Exception as e:  # noqa: BLE001 - see below
        # gcsfs raises FileExistsError for 412 (rewritten meanwhile), FileNotFoundError for 404.
        if isinstance(e, FileExistsError | FileNotFoundError) or "412" in str(e):
            return False
        raise
    fs.invalidate_cache(f"{bucket}/{key}")
    return True


# ---- local copies of remote inputs --------------------------------------------------------------


def cache_root() -> str:
    return os.environ.get(
        "VPGTRANS_REMOTE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vpgtrans-jax")
    )


def local_copy(path: str) -> str:
    """A local path with the content of ``path`` (a file or a directory tree).

    Local paths are returned as they are. A URL is downloaded into the cache
    (``$VPGTRANS_REMOTE_CACHE``, default ``~/.cache/vpgtrans-jax/remote/<scheme>/<bucket>/...``)
    and fetched again only where the objects changed: each file's version (GCS generation, else
    its hash or etag, and its size) is recorded beside the cache, so a rewritten object of the
    same size (re-exported weights, a rerun's predictions) is never read stale, and files no
    longer in the bucket are removed from the copy. One listing request finds them all.
    """
    if not is_remote(path):
        return path
    path = abspath(path)
    scheme, rest = path.split("://", 1)
    local = os.path.join(cache_root(), "remote", scheme, *rest.split("/"))
    fs, key = _fs(path)
    key = key.rstrip("/")
    now: dict[str, str] = {}
    for k, info in fs.find(key, detail=True).items():
        if k == key or k.startswith(key + "/"):
            now[k[len(key) + 1 :]] = _version(info)
    if not now:
        raise FileNotFoundError(f"{path}: no such file or directory")
    record = os.path.join(
        cache_root(), "versions", hashlib.sha256(path.encode()).hexdigest()[:32] + ".json"
    )
    try:
        with open(record) as f:
            before = json.load(f)
    except (OSError, ValueError):
        before = {}
    for rel, version in now.items():
        dst = os.path.join(local, rel) if rel else local
        if before.get(rel) == version and os.path.isfile(dst):
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.part{os.getpid()}"
        copy_file(join(path, rel) if rel else path, tmp)
        os.replace(tmp, dst)
    for rel in set(before) - set(now):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(local, rel) if rel else local)
    os.makedirs(os.path.dirname(record), exist_ok=True)
    write_text(record, json.dumps(now))
    return local


def _version(info: dict[str, Any]) -> str:
    """What identifies one object's content in a listing: size and the store's version id."""
    tag = next((info[k] for k in ("generation", "md5Hash", "etag", "mtime") if info.get(k)), "")
    return f"{info.get('size')}:{tag}"


__all__ = [
    "IN_PROGRESS",
    "AppendFile",
    "abspath",
    "basename",
    "cache_root",
    "check_complete",
    "copy_file",
    "create_exclusive",
    "delete_if_unchanged",
    "dirname",
    "exists",
    "generation",
    "glob",
    "is_remote",
    "isabs",
    "isdir",
    "isfile",
    "join",
    "listdir",
    "local_copy",
    "makedirs",
    "move",
    "open_file",
    "read_bytes",
    "read_range",
    "read_text",
    "relpath",
    "remove",
    "rmtree",
    "staged_output",
    "walk_files",
    "write_text",
]
