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
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request


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
    program = shutil.which("gcp-storage-emulator") or os.path.join(
        os.path.dirname(sys.executable), "gcp-storage-emulator")
    if not os.path.exists(program):
        raise RuntimeError("gcp-storage-emulator is not installed (pip install "
                           "gcp-storage-emulator)")
    port = _free_port()
    process = subprocess.Popen(
        [program, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory",
         f"--default-bucket={bucket}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    saved = {k: os.environ.get(k) for k in environment(port)}
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b/{bucket}",
                                       timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the GCS emulator did not start on port {port}")
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
