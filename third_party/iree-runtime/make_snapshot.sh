#!/usr/bin/env bash
# How the IREE runtime source snapshot in this folder was made (run where the two repositories are cloned).
#   IREE=path/to/iree FLATCC=path/to/flatcc bash make_snapshot.sh
# It archives IREE at $IREE_COMMIT with its flatcc submodule at the commit IREE pins, keeping only what a
# runtime-only CMake build of iree-run-module reads (no compiler, no GPU drivers, no tests),
# and writes iree-runtime-src.tar.xz and SOURCES.json.
set -euo pipefail
IREE_COMMIT=${IREE_COMMIT:-b48a595557}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
src=$tmp/iree-runtime-src
mkdir -p "$src"
full=$(git -C "$IREE" rev-parse "$IREE_COMMIT^{commit}")
git -C "$IREE" archive "$full" | tar -x -C "$src"
flatcc=$(git -C "$IREE" ls-tree "$full" third_party/flatcc | awk '{print $3}')
git -C "$FLATCC" archive "$flatcc" | tar -x -C "$src/third_party/flatcc"
cd "$src"
# keep the runtime, its CMake machinery, the host tools it generates code with, and the licences
rm -rf docs samples integrations experimental llvm-external-projects lib .github
find tests -mindepth 1 -maxdepth 1 ! -name CMakeLists.txt -exec rm -rf {} +  # it adds every subfolder
find compiler -mindepth 1 -maxdepth 1 ! -name CMakeLists.txt ! -name bindings -exec rm -rf {} +
find compiler/bindings -mindepth 1 -maxdepth 1 ! -name c -exec rm -rf {} +
find runtime/bindings -mindepth 1 -maxdepth 1 ! -name python -exec rm -rf {} +  # the Python bindings stay (armv7 build)
rm -rf runtime/bindings/python/tests
for d in amdgpu cuda hip metal vulkan webgpu; do rm -rf "runtime/src/iree/hal/drivers/$d"; done
find third_party -mindepth 1 -maxdepth 1 ! -name flatcc ! -name dlmalloc ! -name .clang-format -exec rm -rf {} +
rm -rf third_party/flatcc/test third_party/flatcc/samples third_party/flatcc/doc
find . \( -name '*_test.cc' -o -name '*_test.c' -o -name '*_benchmark.cc' \) -delete
cd "$tmp"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2026-08-21 00:00Z' -cf - iree-runtime-src | xz -9 -T1 > "$here/iree-runtime-src.tar.xz"
sha=$(sha256sum "$here/iree-runtime-src.tar.xz" | cut -d' ' -f1)
cat > "$here/SOURCES.json" <<JSON
{
  "iree": {"url": "https://github.com/iree-org/iree", "commit": "$full",
           "date": "$(git -C "$IREE" log -1 --format=%cI "$full")", "license": "Apache-2.0 WITH LLVM-exception"},
  "flatcc": {"url": "https://github.com/dvidelabs/flatcc", "commit": "$flatcc", "license": "Apache-2.0"},
  "archive": "iree-runtime-src.tar.xz",
  "sha256": "$sha"
}
JSON
echo "wrote $here/iree-runtime-src.tar.xz ($(stat -c %s "$here/iree-runtime-src.tar.xz") bytes), sha256 $sha"
