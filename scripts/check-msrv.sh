#!/usr/bin/env bash
# The workspace's rust-version must be at least what every dependency
# declares (cargo only warns about a dependency that needs a newer Rust once
# someone builds with an old one), and the toolchain here must meet it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo metadata --format-version 1 --locked > "${TMPDIR:-/tmp}/credit-metadata.json"
python3 - "${TMPDIR:-/tmp}/credit-metadata.json" <<'PY'
import json, subprocess, sys

def parse(v):
    parts = [int(x) for x in v.split("-")[0].split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

def show(v):
    return ".".join(str(x) for x in v)

meta = json.load(open(sys.argv[1]))
root = meta["workspace_root"]
ours = {p["id"] for p in meta["packages"]
        if p["source"] is None and not p["manifest_path"].startswith(root + "/vendor/")}
declared = {parse(p["rust_version"]) for p in meta["packages"]
            if p["id"] in ours and p.get("rust_version")}
if len(declared) != 1:
    sys.exit(f"workspace crates declare different rust-versions: {declared}")
workspace = declared.pop()
need, name, version = max((parse(p["rust_version"]), p["name"], p["version"])
                          for p in meta["packages"] if p["id"] not in ours and p.get("rust_version"))
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
print(f"rust-version {show(workspace)}; dependencies need {show(need)} ({name} {version}); rustc {rustc}")
if need > workspace:
    sys.exit(f"raise rust-version in Cargo.toml to {show(need)}: {name} {version} needs it")
if parse(rustc) < workspace:
    sys.exit(f"rustc {rustc} is older than the workspace rust-version {show(workspace)}")
PY
