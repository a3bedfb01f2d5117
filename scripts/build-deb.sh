#!/usr/bin/env bash
# Builds the pppgate .deb with debhelper (docs/packaging.md says why this route and what goes
# where): the Rust artifacts with cargo (rustup's toolchain), then `dpkg-buildpackage -b` in a
# staged copy of packaging/debian. Output: target/deb/pppgate_<version>_<arch>.deb (path printed
# on the last line).
#
# Usage: scripts/build-deb.sh [--no-build] [--version VERSION] [--root DIR]
#   --no-build        package the artifacts already in target/release (no cargo build)
#   --version V       Debian version (default: the workspace version; the lab's upgrade test
#                     packages the same artifacts as a higher version, e.g. 0.1.0+lab1)
#   --root DIR        a package for another Debian release, from that release's root (e.g. the
#                     Debian 13 lab root, `pppgate-lab root trixie`): its pppd headers and ppp-dev
#                     substvars (plugin directory, Depends/Breaks) and its systemd's unit and
#                     sysctl directories (DIR's systemd.pc, else its merged-/usr layout); the plugin must be
#                     built for that pppd (PPPGATE_DEB_PLUGIN; scripts/build-pppd-variants.sh
#                     builds Debian 13's); output to target/deb/<DIR's codename>/ by default
# Inputs (environment), so the same script builds for another pppd (e.g. Debian 13's 2.5.2):
#   PPPD_INCLUDE_DIR   pppd headers the plugin is compiled against (default /usr/include)
#   PPP_DEV_SUBSTVARS  ppp-dev's substvars for the same pppd (default
#                      $PPPD_INCLUDE_DIR/../share/ppp-dev/substvars, i.e. /usr/share/ppp-dev/substvars):
#                      the plugin directory and the exact ppp Depends/Breaks come from it
#   PPPGATE_DEB_PLUGIN the plugin file to package (default target/release/libpppgate.so); it must
#                      import the API of the headers' pppd (2.5: ppp_add_notify; 2.4: add_notifier)
#   PPPGATE_DEB_OUT    output directory (default target/deb)
#   CARGO_TARGET_DIR   as cargo reads it
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

build=yes
version=
sysroot=
while [ $# -gt 0 ]; do
  case $1 in
    --no-build) build=no ;;
    --version) version=${2:?--version takes a value}; shift ;;
    --root) sysroot=${2:?--root takes a directory}; shift ;;
    *) echo "usage: scripts/build-deb.sh [--no-build] [--version VERSION] [--root DIR]" >&2; exit 64 ;;
  esac
  shift
done

log() { printf '[build-deb %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { echo "build-deb: $*" >&2; exit 1; }
t0=$SECONDS

codename=
if [ -n "$sysroot" ]; then
  [ -r "$sysroot/etc/os-release" ] || die "--root $sysroot: no etc/os-release there"
  codename=$(. "$sysroot/etc/os-release" && echo "$VERSION_CODENAME")
  [ -n "$codename" ] || die "--root $sysroot: etc/os-release names no VERSION_CODENAME"
  : "${PPPD_INCLUDE_DIR:=$sysroot/usr/include}"
  [ -n "${PPPGATE_DEB_PLUGIN:-}" ] || die "--root: set PPPGATE_DEB_PLUGIN to the plugin built against $PPPD_INCLUDE_DIR"
  [ "$build" = no ] || die "--root packages prebuilt artifacts only: add --no-build"
  # The root's systemd directories: its systemd.pc when systemd-dev is there, else the merged-/usr
  # layout the root has (Debian 13: units in /usr/lib/systemd/system, sysctl in /usr/lib/sysctl.d).
  pcdir=$sysroot/usr/share/pkgconfig
  if [ -r "$pcdir/systemd.pc" ]; then
    PPPGATE_UNIT_DIR=$(PKG_CONFIG_LIBDIR=$pcdir pkg-config --variable=systemdsystemunitdir systemd)
    PPPGATE_SYSCTL_DIR=$(PKG_CONFIG_LIBDIR=$pcdir pkg-config --variable=sysctldir systemd)
  elif [ -L "$sysroot/lib" ] && [ -d "$sysroot/usr/lib/systemd/system" ] && [ -d "$sysroot/usr/lib/sysctl.d" ]; then
    PPPGATE_UNIT_DIR=/usr/lib/systemd/system PPPGATE_SYSCTL_DIR=/usr/lib/sysctl.d
  else
    die "--root $sysroot: neither systemd.pc nor a merged-/usr systemd layout to take the unit directory from"
  fi
  export PPPGATE_UNIT_DIR PPPGATE_SYSCTL_DIR
fi
include=${PPPD_INCLUDE_DIR:-/usr/include}
substvars=${PPP_DEV_SUBSTVARS:-$(cd "$include/.." && pwd)/share/ppp-dev/substvars}
[ -r "$substvars" ] || die "no ppp-dev substvars at $substvars (apt-get install ppp-dev, or set PPP_DEV_SUBSTVARS)"
plugin_dir=$(sed -n 's/^ppp:PluginDir=//p' "$substvars")
[ -n "$plugin_dir" ] || die "$substvars has no ppp:PluginDir"
grep -q '^ppp:Depends=' "$substvars" || die "$substvars has no ppp:Depends"

# The plugin must be compiled for the pppd the package depends on: pppd compares its own
# version with the plugin's pppd_version, and ppp-dev's PluginDir ends in that version.
if [ -r "$include/pppd/pppdconf.h" ]; then
  hdr_version=$(sed -n 's/^#define PPPD_VERSION "\(.*\)"/\1/p' "$include/pppd/pppdconf.h")
else
  hdr_version=$(sed -n 's/^#define VERSION[[:space:]]*"\(.*\)"/\1/p' "$include/pppd/patchlevel.h")
fi
[ "${plugin_dir##*/}" = "$hdr_version" ] ||
  die "headers in $include are pppd $hdr_version but $substvars installs into $plugin_dir"

target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac
if [ "$build" = yes ]; then
  log "cargo build --release -p pppgate -p pppgate-plugin (pppd $hdr_version headers in $include)"
  PPPD_INCLUDE_DIR=$include cargo build --release -p pppgate -p pppgate-plugin
fi
artifacts=$target/release
plugin=${PPPGATE_DEB_PLUGIN:-$artifacts/libpppgate.so}
for f in "$artifacts/pppgate" "$plugin"; do
  [ -f "$f" ] || die "missing $f (run without --no-build)"
done
# The plugin must use the API of the pppd it is packaged for (pppd 2.5 renamed the notifier call).
if [ -r "$include/pppd/pppdconf.h" ]; then api_sym=ppp_add_notify; else api_sym=add_notifier; fi
# (nm's whole output first: grep -q stopping early would fail the pipe under pipefail.)
syms=$(nm -D "$plugin")
grep -q " U $api_sym\$" <<< "$syms" ||
  die "$plugin does not import $api_sym: it was not built against the pppd $hdr_version headers in $include"

if [ -z "$version" ]; then
  version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
  [ -n "$version" ] || die "cannot read the workspace version from Cargo.toml"
fi
[[ $version =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "unusable Debian version '$version' (native package: no revision)"

# visudo -c at build time: the shipped rule set must parse with this sudo.
command -v visudo > /dev/null || die "visudo not found (apt-get install sudo)"
visudo -cqf packaging/etc/sudoers.pppgate || die "packaging/etc/sudoers.pppgate does not pass visudo -c"

out=${PPPGATE_DEB_OUT:-$target/deb${codename:+/$codename}}
stage=$out/build-$version
rm -rf "$stage"
mkdir -p "$stage/pppgate-$version" "$stage/artifacts/completions"
src=$stage/pppgate-$version
cp -r packaging/debian "$src/debian"
cp packaging/sysusers.d/pppgate.conf "$src/debian/pppgate.sysusers"
cp packaging/tmpfiles.d/pppgate.conf "$src/debian/pppgate.tmpfiles"
cp "$artifacts/pppgate" "$stage/artifacts/"
cp "$plugin" "$stage/artifacts/libpppgate.so"
"$artifacts/pppgate" completions bash > "$stage/artifacts/completions/pppgate.bash"
"$artifacts/pppgate" completions zsh > "$stage/artifacts/completions/_pppgate"
"$artifacts/pppgate" completions fish > "$stage/artifacts/completions/pppgate.fish"

# The changelog carries the version; its date is the last commit's (reproducible builds).
epoch=$(git -C "$repo" log -1 --format=%ct 2> /dev/null || date +%s)
{
  echo "pppgate ($version) unstable; urgency=medium"
  echo
  echo "  * Built from $(git -C "$repo" describe --always --dirty 2> /dev/null || echo 'an unversioned tree')."
  echo
  echo " -- pppgate maintainers <maintainers@pppgate.example.org>  $(LC_ALL=C date -u -R -d "@$epoch")"
} > "$src/debian/changelog"

log "dpkg-buildpackage -b for pppgate $version${codename:+ for $codename} (plugin into $plugin_dir)"
(
  cd "$src"
  export SOURCE_DATE_EPOCH=$epoch PPPGATE_REPO=$repo PPPGATE_ARTIFACTS=$stage/artifacts PPP_DEV_SUBSTVARS=$substvars
  # -d: the toolchain is rustup's, not Build-Depends packages.
  dpkg-buildpackage -b -us -uc -d > "$stage/dpkg-buildpackage.log" 2>&1
) || { tail -30 "$stage/dpkg-buildpackage.log" >&2; die "dpkg-buildpackage failed (log: $stage/dpkg-buildpackage.log)"; }
arch=$(dpkg --print-architecture)
deb=$stage/pppgate_${version}_$arch.deb
[ -f "$deb" ] || die "dpkg-buildpackage left no $deb"
mv "$deb" "$out/"
log "built $out/pppgate_${version}_$arch.deb in $((SECONDS - t0)) s"
echo "$out/pppgate_${version}_$arch.deb"
