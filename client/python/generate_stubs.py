"""Generates the credit.v1 Python stubs from proto/ with grpcio-tools.

The stubs go to ``client/python/_generated/`` (git-ignored) and are rebuilt
only when the .proto file or the grpcio-tools version changes, so importing
``credit_client`` is cheap after the first time. Run it by hand with
``python client/python/generate_stubs.py [--force]``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from importlib import metadata, resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "_generated"
STAMP = OUT_DIR / ".stamp"
PROTO_FILE = "credit/v1/credit.proto"


def proto_root() -> Path:
    """The directory holding credit/v1/credit.proto (CREDIT_PROTO_DIR overrides)."""
    override = os.environ.get("CREDIT_PROTO_DIR")
    return Path(override) if override else HERE.parent.parent / "proto"


def _fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    digest.update(metadata.version("grpcio-tools").encode())
    digest.update((root / PROTO_FILE).read_bytes())
    return digest.hexdigest()


def ensure(force: bool = False) -> Path:
    """Makes sure up-to-date stubs exist and returns the directory to import from."""
    root = proto_root()
    if not (root / PROTO_FILE).is_file():
        raise FileNotFoundError(f"{PROTO_FILE} not found under {root}; set CREDIT_PROTO_DIR")
    fingerprint = _fingerprint(root)
    if not force and STAMP.is_file() and STAMP.read_text() == fingerprint:
        return OUT_DIR

    from grpc_tools import protoc  # only needed when (re)generating

    # The well-known types (struct.proto, timestamp.proto) ship inside grpcio-tools.
    well_known = resources.files("grpc_tools") / "_proto"
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    OUT_DIR.mkdir(parents=True)
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={OUT_DIR}",
        f"--pyi_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
        PROTO_FILE,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    STAMP.write_text(fingerprint)
    return OUT_DIR


if __name__ == "__main__":
    print(ensure(force="--force" in sys.argv[1:]))
