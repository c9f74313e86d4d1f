#!/usr/bin/env bash
# Builds the Debian packages with dpkg-deb, from the tree scripts/install.sh
# lays out (no debhelper: the maintainer scripts below are what its systemd
# and sysusers helpers would generate, written out):
#
#   telemetrics       telemd, telemctl, telem-record-gen, telem-crash-handler,
#                     the units, sysusers/tmpfiles/sysctl drop-ins, the five
#                     shipped probes, the default config, man pages, completions
#   libtelemetry4     libtelemetry.so.4, the legacy client's C library
#   libtelemetry-dev  telemetry.h, libtelemetry.so, libtelemetry.pc, man(3)
#
#   scripts/build-deb.sh [--from DIR] [--out DIR] [--fast]
#
# --from  already built programs and library (as for install.sh; default:
#         cargo build --release)
# --out   where the .deb files go (default target/debian)
#
# The units go under /lib/systemd/system, where Debian 12's debhelper puts
# them (a later release moves them to /usr/lib with everyone else).
# --fast  gzip -1 instead of xz (the tests' packages of debug builds)
set -euo pipefail
from=""
out=""
compress=(-Zxz)
while [ $# -gt 0 ]; do
  case "$1" in
    --from) from=$(realpath "$2"); shift 2 ;;
    --out) out=$(realpath -m "$2"); shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
out=${out:-$PWD/target/debian}
upstream=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
version="$upstream-1"
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
maintainer="Telemetrics maintainers <telemetrics@lists.example.org>"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out"

DESTDIR="$stage/all" scripts/install.sh --prefix /usr --libdir "/usr/lib/$multiarch" ${from:+--from "$from"} >/dev/null

main="$stage/telemetrics" lib="$stage/libtelemetry4" dev="$stage/libtelemetry-dev"
mkdir -p "$main" "$lib/usr/lib/$multiarch" "$dev/usr/lib/$multiarch" "$dev/usr/share/man"
mv "$stage"/all/usr/lib/"$multiarch"/libtelemetry.so.4* "$lib/usr/lib/$multiarch/"
# A shared library is loaded, not run (Debian policy 8.1).
chmod 644 "$lib/usr/lib/$multiarch/libtelemetry.so.4.0.1"
mv "$stage/all/usr/include" "$dev/usr/"
mv "$stage/all/usr/lib/$multiarch/libtelemetry.so" "$stage/all/usr/lib/$multiarch/pkgconfig" "$dev/usr/lib/$multiarch/"
mv "$stage/all/usr/share/man/man3" "$dev/usr/share/man/"
rmdir "$stage/all/usr/lib/$multiarch"
# Debian 12 keeps units under /lib/systemd/system.
mkdir -p "$stage/all/lib/systemd"
mv "$stage/all/usr/lib/systemd/system" "$stage/all/lib/systemd/"
rmdir "$stage/all/usr/lib/systemd"
cp -a "$stage/all/." "$main/"

# What Debian policy asks of every package: stripped objects, compressed
# man pages, a copyright file and a changelog.
for root in "$main" "$lib" "$dev"; do
  find "$root" -type f -exec sh -c 'file -b "$1" | grep -q "^ELF"' _ {} \; \
    -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} \;
  [ -d "$root/usr/share/man" ] && find "$root/usr/share/man" -type f -name '*.[0-9]' -exec gzip -9n {} \;
  pkg=$(basename "$root")
  doc="$root/usr/share/doc/$pkg"
  install -d "$doc"
  cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: telemetrics
Source: https://github.com/clearlinux/telemetrics-client

Files: *
Copyright: 2026 The telemetrics authors
License: LGPL-2.1+
 On Debian systems, the complete text of the GNU Lesser General Public
 License version 2.1 can be found in "/usr/share/common-licenses/LGPL-2.1".
EOF
  printf '%s (%s) unstable; urgency=medium\n\n  * Built from the telemetrics source tree by scripts/build-deb.sh.\n\n -- %s  %s\n' \
    "$pkg" "$version" "$maintainer" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" |
    gzip -9n > "$doc/changelog.Debian.gz"
  chmod 644 "$doc/copyright" "$doc/changelog.Debian.gz"
  find "$root" -type d -exec chmod 755 {} \;
  install -d "$root/DEBIAN"
done

depends_of() { # the shared-library dependencies of the ELF objects under $1
  local objs=() deps
  while IFS= read -r -d '' o; do objs+=("$o"); done < <(
    find "$1" -type f -exec sh -c 'file -b "$1" | grep -q "^ELF"' _ {} \; -print0)
  mkdir -p "$stage/debian" && touch "$stage/debian/control"
  deps=$(cd "$stage" && dpkg-shlibdeps -O -S"$lib" "${objs[@]}" | sed -n 's/^shlibs:Depends=//p')
  [ -n "$deps" ] || { echo "build-deb.sh: dpkg-shlibdeps found no dependencies under $1" >&2; exit 1; }
  echo "$deps"
}

installed_size() { du -sk --exclude=DEBIAN "$1" | cut -f1; }

main_depends=$(depends_of "$main")
lib_depends=$(depends_of "$lib")
cat > "$main/DEBIAN/control" <<EOF
Package: telemetrics
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(installed_size "$main")
Depends: $main_depends, systemd (>= 247)
Section: admin
Priority: optional
Homepage: https://github.com/clearlinux/telemetrics-client
Description: telemetry and crash-reporting client with sandboxed WASM probes
 telemd accepts records from native probes over the legacy libtelemetry
 socket and runs WebAssembly probes (crash symbolizer, kernel oops,
 pstore, journal errors) with only the capabilities the admin grants;
 every record is validated, spooled durably, rate-limited and posted to a
 telemetrics collector or an OpenTelemetry collector (OTLP). Nothing is
 collected or sent until the machine is opted in (telemctl opt-in).
EOF

cat > "$main/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # The service user and its directories; under dpkg --root, in that root.
    systemd-sysusers ${DPKG_ROOT:+--root="$DPKG_ROOT"} telemetry.conf
    systemd-tmpfiles ${DPKG_ROOT:+--root="$DPKG_ROOT"} --create telemetry.conf || true
    if [ -z "${DPKG_ROOT:-}" ]; then
        # The crash handler's core_pattern (the drop-in also applies at boot).
        systemd-sysctl 60-telem-crash-handler.conf >/dev/null 2>&1 || true
        # Both units, as dh_installsystemd would: the socket starts
        # telemd on the first record, the service at boot (it runs only
        # on a machine that opted in: ConditionPathExists=).
        for unit in telemd.socket telemd.service; do
            if [ -z "$2" ] || ! deb-systemd-helper --quiet was-enabled "$unit"; then
                deb-systemd-helper enable "$unit" >/dev/null || true
            else
                deb-systemd-helper update-state "$unit" >/dev/null || true
            fi
        done
        if [ -d /run/systemd/system ]; then
            systemctl --system daemon-reload >/dev/null || true
            deb-systemd-invoke start telemd.socket >/dev/null || true
            # An upgrade: the running daemon is the old program.
            if [ -n "$2" ]; then
                deb-systemd-invoke try-restart telemd.service >/dev/null || true
            fi
        fi
    fi
fi
exit 0
EOF

cat > "$main/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    # The socket first: a client meanwhile must not start the service again.
    deb-systemd-invoke stop telemd.socket >/dev/null || true
    deb-systemd-invoke stop telemd.service >/dev/null || true
fi
exit 0
EOF

cat > "$main/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -z "${DPKG_ROOT:-}" ]; then
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
    if [ "$1" = remove ]; then
        # The kernel must not go on piping cores to a handler that is gone:
        # the sysctl drop-ins without ours, and "core" if the pattern
        # still names the handler.
        systemd-sysctl >/dev/null 2>&1 || true
        if grep -q telem-crash-handler /proc/sys/kernel/core_pattern 2>/dev/null; then
            echo core > /proc/sys/kernel/core_pattern 2>/dev/null || true
        fi
    fi
    if [ "$1" = purge ]; then
        if command -v deb-systemd-helper >/dev/null; then
            deb-systemd-helper purge telemd.socket telemd.service >/dev/null || true
        fi
        # What telemd kept: spool, state (machine id, probe cache, crash
        # inbox and history) and the delivery journal.
        rm -rf /var/spool/telemetry /var/lib/telemetry /var/log/telemetry
    fi
fi
exit 0
EOF
chmod 755 "$main/DEBIAN/postinst" "$main/DEBIAN/prerm" "$main/DEBIAN/postrm"

cat > "$lib/DEBIAN/control" <<EOF
Package: libtelemetry4
Version: $version
Architecture: $arch
Multi-Arch: same
Maintainer: $maintainer
Installed-Size: $(installed_size "$lib")
Depends: $lib_depends
Section: libs
Priority: optional
Homepage: https://github.com/clearlinux/telemetrics-client
Description: C library for native telemetry probes
 libtelemetry.so.4 keeps the legacy telemetrics client's ABI: native
 probes create, fill and send records to telemd over its socket with it,
 unchanged.
EOF
echo "libtelemetry 4 libtelemetry4 (>= $upstream)" > "$lib/DEBIAN/shlibs"
echo "activate-noawait ldconfig" > "$lib/DEBIAN/triggers"
chmod 644 "$lib/DEBIAN/shlibs" "$lib/DEBIAN/triggers"

cat > "$dev/DEBIAN/control" <<EOF
Package: libtelemetry-dev
Version: $version
Architecture: $arch
Multi-Arch: same
Maintainer: $maintainer
Installed-Size: $(installed_size "$dev")
Depends: libtelemetry4 (= $version)
Section: libdevel
Priority: optional
Homepage: https://github.com/clearlinux/telemetrics-client
Description: C library for native telemetry probes (development files)
 The header telemetry.h, the link libtelemetry.so, its pkg-config file
 and the man pages of the libtelemetry API, for building native probes.
EOF

for root in "$main" "$lib" "$dev"; do
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 -r md5sum > DEBIAN/md5sums)
  chmod 644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control"
  pkg=$(basename "$root")
  dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
  echo "$out/${pkg}_${version}_${arch}.deb"
done
