"""Regenerates the committed gRPC code of the credit_client package from proto/.

    python client/python/generate.py            # rewrite src/credit_client/v1/
    python client/python/generate.py --out DIR  # write the files to DIR instead

Runs protoc from grpcio-tools with the mypy-protobuf plugins (both pinned in
requirements.txt), so it writes, for ``credit/v1/credit.proto``:

- ``credit_pb2.py`` / ``credit_pb2.pyi``: the messages and their types,
- ``credit_pb2_grpc.py`` / ``credit_pb2_grpc.pyi``: the stubs and their types.

protoc names the module after the proto's path (``credit.v1``); the files are
moved into the package as ``credit_client.v1`` and their imports rewritten to
match, so the installed package needs nothing from this repository.
``tests/test_generated.py`` regenerates into a temporary directory and fails
when the committed files differ: run this script and commit the result.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import sysconfig
import tempfile
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PROTO_DIR = HERE.parent.parent / "proto"
DEFAULT_OUT_DIR = HERE / "src" / "credit_client" / "v1"
PROTO_FILE = "credit/v1/credit.proto"
GENERATED = ("credit_pb2.py", "credit_pb2.pyi", "credit_pb2_grpc.py", "credit_pb2_grpc.pyi")
INIT = '"""Generated from credit/v1/credit.proto by client/python/generate.py; do not edit."""\n'

# protoc's module path -> the package's. Only imports and module names are
# rewritten; RPC paths such as "/credit.v1.CreditService/Spend" stay as they are.
REWRITES = (
    (re.compile(r"^from credit\.v1 import ", re.M), "from credit_client.v1 import "),
    (re.compile(r"^import credit\.v1\.credit_pb2\b", re.M), "import credit_client.v1.credit_pb2"),
    (re.compile(r"'credit\.v1\.credit_pb2'"), "'credit_client.v1.credit_pb2'"),
)


def _plugin(name: str) -> str:
    """The path of a protoc plugin script installed next to this interpreter."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install -r client/python/requirements.txt")
    return found


def generate(out_dir: Path, proto_dir: Path = DEFAULT_PROTO_DIR) -> list[Path]:
    """Writes the generated files (and v1/__init__.py) to ``out_dir``; returns their paths."""
    from grpc_tools import protoc  # a development dependency, not a runtime one

    if not (proto_dir / PROTO_FILE).is_file():
        raise SystemExit(f"{PROTO_FILE} not found under {proto_dir}")
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={raw}",
            f"--grpc_python_out={raw}",
            f"--mypy_out=quiet:{raw}",
            f"--mypy_grpc_out=quiet:{raw}",
            PROTO_FILE,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed: {' '.join(args)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            text = (Path(raw) / "credit" / "v1" / name).read_text()
            for pattern, replacement in REWRITES:
                text = pattern.sub(replacement, text)
            (out_dir / name).write_text(text)
            written.append(out_dir / name)
    (out_dir / "__init__.py").write_text(INIT)
    written.append(out_dir / "__init__.py")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory")
    parser.add_argument("--proto-dir", type=Path, default=DEFAULT_PROTO_DIR, help="proto root")
    options = parser.parse_args()
    for path in generate(options.out, options.proto_dir):
        print(path)


if __name__ == "__main__":
    main()
