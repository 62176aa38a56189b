#!/bin/sh
# Runs one fuzz target for a number of seconds with the options every run here used.
#
#   tests/fuzz/run.sh <target> [seconds] [extra libFuzzer options...]
#
# New inputs go to corpus/<target>/ (minimise with `cargo fuzz cmin` before committing),
# findings to artifacts/<target>/.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
t=$1
secs=${2:-300}
[ $# -ge 2 ] && shift 2 || shift 1
cd "$root"
exec nice -n 19 cargo +nightly fuzz run --fuzz-dir tests/fuzz \
    --target-dir "${CARGO_TARGET_DIR:-$here/target}" "$t" "tests/fuzz/corpus/$t" -- \
    -max_len=1048576 -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -max_total_time="$secs" -print_final_stats=1 "$@"
