#!/bin/sh
# rustdoc for `make public-api`: its JSON output (`--output-format json`) is still unstable,
# and this project has one stable toolchain, no nightly. RUSTC_BOOTSTRAP=1 lets the stable
# rustdoc accept `-Z unstable-options`. It is set here, for rustdoc alone, because set on
# cargo it would change the fingerprint of every dependency and re-check the whole tree.
RUSTC_BOOTSTRAP=1 exec rustdoc "$@"
