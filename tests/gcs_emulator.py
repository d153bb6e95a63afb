"""Runs ``gcp-storage-emulator`` (a GCS JSON-API server) with the two GCS rules it lacks.

- The emulator ignores the ``ifGenerationMatch`` precondition; the workdir lock on ``gs://``
  relies on it (create only if absent: ``ifGenerationMatch=0``; delete only if unchanged). This
  launcher adds exactly that to the emulator's upload and delete handlers, answering HTTP 412 as
  GCS does.
- Its media downloads lack the ``x-goog-generation`` header GCS sends; tensorstore needs it to
  read back an object it rewrites conditionally (an Orbax OCDBT manifest updated by a second
  commit: a checkpoint with many arrays), and fails with "Malformed StorageGeneration" without.

Then it starts the stock server: ``python tests/gcs_emulator.py --port=P --default-bucket=B``.
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator import __main__ as emulator_main
from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _object_name(request) -> str | None:
    if "name" in request.query:
        return request.query["name"][0]
    if "object_id" in request.params:
        return request.params["object_id"]
    data = request.data
    if isinstance(data, dict):
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else data
        return meta.get("name")
    return None


def _generation(storage, bucket: str, name: str) -> str | None:
    try:
        return str(storage.get_file_obj(bucket, name).get("generation"))
    except NotFound:
        return None


def _precondition(handler):
    def checked(request, response, storage, *args, **kwargs):
        want = request.query.get("ifGenerationMatch")
        name = _object_name(request)
        if want and name is not None:
            have = _generation(storage, request.params["bucket_name"], name)
            if (want[0] == "0" and have is not None) or (want[0] != "0" and have != want[0]):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed"}})
                return None
        return handler(request, response, storage, *args, **kwargs)

    return checked


def _with_generation(handler):
    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except (KeyError, NotFound):
            obj = {}
        for key in ("generation", "metageneration"):
            if obj.get(key) is not None:
                response[f"x-goog-{key}"] = str(obj[key])
        return handler(request, response, storage, *args, **kwargs)

    return download


def _patch_handlers() -> None:
    wrapped = {objects.insert: _precondition(objects.insert),
               objects.delete: _precondition(objects.delete),
               objects.download: _with_generation(objects.download)}  # fmt: skip
    # The server's fallback route looks insert up late; objects.get calls download by name.
    objects.insert, objects.download = wrapped[objects.insert], wrapped[objects.download]
    server.HANDLERS = tuple(
        (pattern, {m: wrapped.get(h, h) for m, h in methods.items()})
        for pattern, methods in server.HANDLERS
    )


if __name__ == "__main__":
    _patch_handlers()
    emulator_main.main(["start", "--host=127.0.0.1", "--in-memory", *sys.argv[1:]])
