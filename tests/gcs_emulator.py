"""A real GCS JSON API on 127.0.0.1 for `gs://` tests and benchmarks: `gcp-storage-emulator`
(PyPI), in memory, started and stopped here.

Every client library the project uses is pointed at it through the environment, which
subprocesses inherit:
- gcsfs, google-cloud-storage (and so etils.epath, which roberta_jax.fs pins to gcsfs):
  STORAGE_EMULATOR_HOST;
- tensorstore's `gcs` driver (orbax writes array data with it): TENSORSTORE_GCS_HTTP_URL;
- gcsfs's probe for zonal buckets (a slow gRPC call that cannot reach an emulator) is switched
  off with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false.
TensorFlow's gfile cannot be pointed at an emulator; nothing of ours uses it for gs://.

One gap of the emulator is closed here: real GCS sends an object's generation with its data
(the x-goog-generation header), and tensorstore's OCDBT driver (what orbax writes arrays with)
needs it to re-read a manifest another write just updated; without it several processes'
checkpoints fail with "Malformed StorageGeneration". The emulator is started with its media
downloads sending that header (and x-goog-metageneration), as GCS does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

# The emulator's own entry point, with media downloads that carry the object's generation.
_EMULATOR_MAIN = """
import sys
from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.handlers import objects

original = objects.download

def download(request, response, storage, *args, **kwargs):
    original(request, response, storage, *args, **kwargs)
    if response.status.value in (200, 206):
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])

objects.download = download          # objects.get(alt=media) looks it up here
for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
        if handler is original:
            handlers[method] = download
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "EPATH_USE_TF": "false",
            "GOOGLE_CLOUD_PROJECT": "test-project"}


@contextlib.contextmanager
def running(bucket: str = "roberta-jax-test", timeout: float = 30.0):
    """Start the emulator with `bucket`, set the environment for this process (and its
    children), yield `gs://bucket`; stop it and restore the environment afterwards."""
    try:
        import gcp_storage_emulator  # noqa: F401
    except ImportError:
        raise RuntimeError("gcp-storage-emulator is not installed (pip install "
                           "gcp-storage-emulator)") from None
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _EMULATOR_MAIN, "start", "--host=127.0.0.1", f"--port={port}",
         "--in-memory", f"--default-bucket={bucket}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    saved = {k: os.environ.get(k) for k in environment(port)}
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b/{bucket}",
                                       timeout=2).read()
                break
            except OSError as e:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the GCS emulator did not start on port {port}") from e
                time.sleep(0.2)
        os.environ.update(environment(port))
        yield f"gs://{bucket}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
