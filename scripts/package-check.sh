#!/usr/bin/env bash
# `make package`: what `cargo publish` would upload, and proof that it compiles.
#
#   scripts/package-check.sh [--exclude PACKAGE ...]
#
# 1. `cargo package --workspace --no-verify --offline` packages every publishable crate in
#    dependency order (the workspace's crates resolve against each other without the
#    registry) into target/package/NAME-VERSION.crate.
# 2. The .crate files are unpacked side by side into target/package-check/, as members of a
#    workspace of their own whose crates find each other through [patch.crates-io] (a
#    packaged manifest names its sibling crates by version only, as the registry would serve
#    them), with this workspace's Cargo.lock and profiles, and `cargo check --all-features`
#    runs there offline: a file left out of a package, a path that only exists in the
#    repository, or a dependency declared only in the workspace fails here.
#
# Why not `cargo package` with its own verification: it builds (not checks) each crate alone,
# in its own feature set and with the packaged manifest's profile, which has none of the
# workspace's [profile] settings, so nothing of the test build is reused: the whole AWS SDK
# again, more than once, tens of minutes on two cores (not run here, so whether it also
# works offline is not proven). The check below tests the same sources at a fraction of the
# cost, reusing the target folder.
set -euo pipefail

CARGO=${CARGO:-cargo}
root=$(pwd)
target=${CARGO_TARGET_DIR:-$root/target}
check_dir=$target/package-check

log=$(mktemp)
trap 'rm -f "$log"' EXIT
$CARGO package --workspace "$@" --no-verify --offline --allow-dirty >"$log" 2>&1 || {
    cat "$log"; exit 1
}
grep -v '^warning: ignoring .* not included in the published package$' "$log" || true

# "   Packaging NAME vVERSION (PATH)", in dependency order.
mapfile -t crates < <(sed -n 's/^ *Packaging \([^ ]*\) v\([^ ]*\) .*/\1-\2/p' "$log")
if [ "${#crates[@]}" -eq 0 ]; then
    echo "package-check: cargo package named no crate" >&2
    exit 1
fi

rm -rf "$check_dir"
mkdir -p "$check_dir"
{
    echo '# The packaged crates, unpacked (scripts/package-check.sh). Generated; not a source.'
    echo '[workspace]'
    echo 'resolver = "3"'
    echo 'members = ['
    for crate in "${crates[@]}"; do echo "    \"$crate\","; done
    echo ']'
    echo
    echo '[patch.crates-io]'
    for crate in "${crates[@]}"; do echo "${crate%-*} = { path = \"$crate\" }"; done
    echo
    # The workspace's profiles, so the check reuses what the test build checked.
    sed -n '/^\[profile/,$p' "$root/Cargo.toml"
} >"$check_dir/Cargo.toml"
for crate in "${crates[@]}"; do
    tar -xzf "$target/package/$crate.crate" -C "$check_dir"
done
cp "$root/Cargo.lock" "$check_dir/Cargo.lock"

echo "package-check: cargo check of the packaged sources: ${crates[*]}"
CARGO_TARGET_DIR=$target $CARGO check --manifest-path "$check_dir/Cargo.toml" \
    --workspace --all-features --offline
