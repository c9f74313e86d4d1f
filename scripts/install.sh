#!/usr/bin/env bash
# Installs telemd the way packagers expect:
#
#   scripts/install.sh [--prefix /usr] [--libdir DIR] [--from DIR]  # DESTDIR=... honoured
#
# --prefix  where it will live (default /usr); units get @bindir@ filled in
# --libdir  where libtelemetry.so.4 goes (default PREFIX/lib; Debian:
#           PREFIX/lib/x86_64-linux-gnu, Fedora: PREFIX/lib64)
# --from    directory with already built telemd, telemctl, telem-record-gen,
#           telem-crash-handler, libtelemetry.so
#           (default: cargo build --release)
# CARGO_TARGET_DIR, when set, is where both the host and the probes are
# built and looked for.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr
libdir=""
from=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --libdir) libdir=$2; shift 2 ;;
    --from) from=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
# Cargo's target directory: CARGO_TARGET_DIR when the packager sets it
# (made absolute, since the probes are built from probes-wasm/), else each
# workspace's own.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  CARGO_TARGET_DIR=$(realpath -m "$CARGO_TARGET_DIR")
  export CARGO_TARGET_DIR
  host_target=$CARGO_TARGET_DIR
  probes_target=$CARGO_TARGET_DIR
else
  host_target=target
  probes_target=probes-wasm/target
fi
if [ -z "$from" ]; then
  cargo build --release -p telemd -p telemctl -p telem-record-gen -p telem-crash-handler -p libtelemetry
  from=$host_target/release
fi
probes=$probes_target/wasm32-wasip2/release
shipped="hello crash_symbolizer kernel_oops pstore journal_errors"
for p in $shipped; do [ -f "$probes/$p.wasm" ] || missing=1; done
[ -z "${missing:-}" ] ||
  (cd probes-wasm && cargo build --target wasm32-wasip2 --release -p hello -p crash-symbolizer -p kernel-oops -p pstore -p journal-errors)

root="${DESTDIR:-}"
bindir="$prefix/bin"
libdir="${libdir:-$prefix/lib}"
includedir="$prefix/include"
for b in telemd telemctl telem-record-gen telem-crash-handler; do
  install -Dm755 "$from/$b" "$root$bindir/$b"
done
# libtelemetry: the file named by its full version (libtool's 4:1:0, as the
# seed's was), the SONAME link programs load, the dev link they link with.
install -Dm755 "$from/libtelemetry.so" "$root$libdir/libtelemetry.so.4.0.1"
ln -sfn libtelemetry.so.4.0.1 "$root$libdir/libtelemetry.so.4"
ln -sfn libtelemetry.so.4 "$root$libdir/libtelemetry.so"
install -Dm644 host/libtelemetry/include/telemetry.h "$root$includedir/telemetry.h"
install -d "$root$libdir/pkgconfig"
sed -e "s|@prefix@|$prefix|g" -e "s|@libdir@|$libdir|g" -e "s|@includedir@|$includedir|g" \
  host/libtelemetry/libtelemetry.pc.in > "$root$libdir/pkgconfig/libtelemetry.pc"
chmod 644 "$root$libdir/pkgconfig/libtelemetry.pc"
for page in host/libtelemetry/man/*.3; do
  install -Dm644 "$page" "$root$prefix/share/man/man3/$(basename "$page")"
done
for u in telemd.service telemd.socket; do
  install -d "$root$prefix/lib/systemd/system"
  sed "s|@bindir@|$bindir|g" "systemd/$u.in" > "$root$prefix/lib/systemd/system/$u"
  chmod 644 "$root$prefix/lib/systemd/system/$u"
done
install -Dm644 systemd/telemetry.sysusers.conf "$root$prefix/lib/sysusers.d/telemetry.conf"
install -Dm644 systemd/telemetry.tmpfiles.conf "$root$prefix/lib/tmpfiles.d/telemetry.conf"
for p in $shipped; do
  install -Dm644 "$probes/$p.wasm" "$root$prefix/lib/telemetry/probes/$(echo "$p" | tr _ -).wasm"
done
install -d "$root$prefix/lib/sysctl.d"
sed "s|@bindir@|$bindir|g" systemd/60-telem-crash-handler.conf.in > "$root$prefix/lib/sysctl.d/60-telem-crash-handler.conf"
chmod 644 "$root$prefix/lib/sysctl.d/60-telem-crash-handler.conf"
install -d "$root$prefix/share/defaults/telemetrics"
"$from/telemctl" config defaults > "$root$prefix/share/defaults/telemetrics/telemd.toml"
chmod 644 "$root$prefix/share/defaults/telemetrics/telemd.toml"
docs=$(mktemp -d)
trap 'rm -rf "$docs"' EXIT
"$from/telemctl" generate-docs "$docs"
for page in "$docs"/man/man*/*; do
  sec=$(basename "$(dirname "$page")")
  install -Dm644 "$page" "$root$prefix/share/man/$sec/$(basename "$page")"
done
for f in "$docs"/completions/bash/*; do install -Dm644 "$f" "$root$prefix/share/bash-completion/completions/$(basename "$f")"; done
for f in "$docs"/completions/zsh/*; do install -Dm644 "$f" "$root$prefix/share/zsh/site-functions/$(basename "$f")"; done
for f in "$docs"/completions/fish/*; do install -Dm644 "$f" "$root$prefix/share/fish/vendor_completions.d/$(basename "$f")"; done
echo "installed under ${root:-}$prefix"
