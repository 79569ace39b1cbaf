#!/usr/bin/env bash
# A VIOT-capable iasl for test/acpi.test.ts, in .cache/acpica/iasl.
#
# Debian 12's acpica-tools (20200925) predates VIOT (ACPICA 20210604): it checks the table's header and
# checksum only. Debian 13's acpica-tools decodes it, but its iasl needs glibc 2.38 (Debian 12 has 2.36),
# and Debian's archive serves no source packages here to rebuild it. So both packages come unmodified
# from Debian 13 (apt-get download, with a private apt configuration: the host's sources stay as they
# are), unpacked into the cache, and iasl runs under Debian 13's own dynamic loader and libc.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.cache/acpica
if [ -x "$out/iasl" ] && "$out/iasl" -v 2>/dev/null | grep -q 'version 202[1-9]'; then exit 0; fi
rm -rf "$out"
mkdir -p "$out/apt/lists/partial" "$out/apt/cache/archives/partial" "$out/deb" "$out/root"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$out/apt/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$PWD/$out/apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$PWD/$out/apt/lists" -o "Dir::Cache=$PWD/$out/apt/cache" -o APT::Sandbox::User=root)
echo "fetch-iasl: Debian 13's acpica-tools and libc6 into $out"
apt-get "${apt_opts[@]}" update -qq
(cd "$out/deb" && apt-get "${apt_opts[@]}" download acpica-tools libc6 >/dev/null)
for d in "$out"/deb/*.deb; do dpkg-deb -x "$d" "$out/root"; done
rm -rf "$out/apt"
lib="$PWD/$out/root/usr/lib/x86_64-linux-gnu"
cat > "$out/iasl" <<EOF
#!/bin/sh
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$PWD/$out/root/usr/bin/iasl" "\$@"
EOF
chmod +x "$out/iasl"
"$out/iasl" -v | grep -m1 version
