#!/usr/bin/env bash
# Verifies the vendored sqlx-core (vendor/sqlx-core) against the published
# crate: it must be sqlx-core 0.9.0 exactly as released plus
# vendor/sqlx-core.patch, nothing else. Also fails when a newer sqlx-core
# 0.9.x release already carries the fix (then the vendored copy must go).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=0.9.0
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# A throwaway project outside the workspace (so the [patch] does not apply)
# makes cargo fetch the published crates.
probe() {
  local spec="$1" dir="$WORK/probe-$2"
  mkdir -p "$dir/src"
  printf '[package]\nname = "probe"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n[dependencies]\nsqlx-core = "%s"\n[workspace]\n' "$spec" > "$dir/Cargo.toml"
  : > "$dir/src/lib.rs"
  (cd "$dir" && cargo generate-lockfile -q && cargo fetch -q)
  (cd "$dir" && cargo metadata --format-version 1 --locked 2> /dev/null) |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "sqlx-core"))'
}

pristine="$(dirname "$(probe "=$VERSION" pinned)")"
copy="$WORK/patched"
cp -r "$pristine" "$copy"
(cd "$copy" && patch -s -p1 < "$ROOT/vendor/sqlx-core.patch")
if ! diff -r --exclude=.cargo_vcs_info.json --exclude=.cargo-ok --exclude=Cargo.lock \
    "$copy" "$ROOT/vendor/sqlx-core"; then
  echo "vendor/sqlx-core is not sqlx-core $VERSION + vendor/sqlx-core.patch" >&2
  exit 1
fi
echo "vendor/sqlx-core = sqlx-core $VERSION + vendor/sqlx-core.patch"

latest="$(dirname "$(probe "0.9" latest)")"
latest_version="$(basename "$latest" | sed 's/^sqlx-core-//')"
if [[ "$latest_version" != "$VERSION" ]] && grep -q "set_nodelay" "$latest/src/net/socket/mod.rs"; then
  echo "sqlx-core $latest_version sets TCP_NODELAY itself: remove vendor/sqlx-core and the [patch] entry" >&2
  exit 1
fi
echo "newest sqlx-core 0.9.x: $latest_version (no TCP_NODELAY fix yet: the patch stays)"
