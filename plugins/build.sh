#!/usr/bin/env bash
# Build every plugin in this workspace into a WebAssembly component:
#   plugins/dist/<name>.wasm   (default-matcher -> default_matcher.wasm)
#
#   plugins/build.sh            # all plugins
#   plugins/build.sh NAME...    # only these crates
#
# Idempotent: adds the wasm32-wasip2 target once, then lets cargo decide what
# to rebuild. Each plugin builds on its own (`-p NAME`) so the SDK is compiled
# with exactly one world feature per component.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
TARGET=wasm32-wasip2
PLUGINS=(default-matcher policy-confidential hostile-policy hostile-matcher)
if [ "$#" -gt 0 ]; then PLUGINS=("$@"); fi

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  echo "plugins/build.sh: rustup target add $TARGET"
  rustup target add "$TARGET"
fi

export CARGO_TARGET_DIR="${PLUGINS_TARGET_DIR:-$here/target}"
mkdir -p dist
for name in "${PLUGINS[@]}"; do
  cargo build --locked --release --target "$TARGET" -p "$name" --quiet
  file="${name//-/_}.wasm"
  src="$CARGO_TARGET_DIR/$TARGET/release/$file"
  # Replace atomically: a running gateway watching dist/ never sees half a file.
  if ! cmp -s "$src" "dist/$file"; then
    cp "$src" "dist/.$file.tmp" && mv -f "dist/.$file.tmp" "dist/$file"
  fi
  printf 'plugins/build.sh: dist/%s (%s bytes)\n' "$file" "$(wc -c <"dist/$file")"
done
