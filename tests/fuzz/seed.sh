#!/bin/sh
# Builds fresh seeds from repositories the real restic writes and merges them into corpus/.
#
#   tests/fuzz/seed.sh            # seeds into tests/fuzz/seeds/<target>/ only
#   tests/fuzz/seed.sh --merge    # then add them to corpus/<target>/ and minimise (nightly)
#
# Needs restic (0.14 was used) on PATH or in $RESTIC. Build output goes to $CARGO_TARGET_DIR
# (default: tests/fuzz/target, ignored by git).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$here/target}
rm -rf "$here/seeds"
nice -n 19 cargo build --release --manifest-path "$here/Cargo.toml" --target-dir "$target_dir" --bin seed
"$target_dir/release/seed" "$here/seed-work" "$here/seeds"
if [ "${1:-}" = "--merge" ]; then
    for dir in "$here"/seeds/*/; do
        t=$(basename "$dir")
        mkdir -p "$here/corpus/$t"
        cp "$dir"* "$here/corpus/$t/"
        (cd "$root" && nice -n 19 cargo +nightly fuzz cmin --fuzz-dir tests/fuzz \
            --target-dir "$target_dir" "$t" "tests/fuzz/corpus/$t" -- -rss_limit_mb=2048 -timeout=10)
    done
fi
