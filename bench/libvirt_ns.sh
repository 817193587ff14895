#!/bin/sh
# libvirt 9.0's daemon as a benchmark's reference, isolated from the host's own libvirt:
#     unshare --mount --propagation private [--net] -- sh bench/libvirt_ns.sh DIR COMMAND...
# In that private mount namespace, /run, /etc/libvirt, /var/{lib,cache,log}/libvirt and /etc/passwd,
# /etc/group are copies in DIR bound over the real ones (the QEMU driver resolves its libvirt-qemu user
# at start even when no guest runs; its qemu.conf runs guests as root), so nothing of the host's is read
# or written. libvirtd runs while COMMAND does (libvirt's default qemu:///system socket reaches it), and
# ends with it. libvirtd's output: DIR/libvirtd.log.
set -e
T=$1
shift
mkdir -p "$T/etc" "$T/run" "$T/lib" "$T/cache" "$T/log"
cp -a /etc/libvirt/. "$T/etc/"
printf '%s\n' 'user = "root"' 'group = "root"' 'dynamic_ownership = 0' 'remember_owner = 0' \
    'security_driver = "none"' 'stdio_handler = "file"' 'cgroup_controllers = [ ]' 'namespaces = [ ]' \
    >"$T/etc/qemu.conf"
cp /etc/passwd "$T/passwd"
cp /etc/group "$T/group"
grep -q '^libvirt-qemu:' "$T/passwd" ||
    echo 'libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin' >>"$T/passwd"
grep -q '^libvirt-qemu:' "$T/group" || echo 'libvirt-qemu:x:64055:' >>"$T/group"
grep -q '^kvm:' "$T/group" || echo 'kvm:x:64056:' >>"$T/group"
mount --bind "$T/passwd" /etc/passwd
mount --bind "$T/group" /etc/group
mount --bind "$T/run" /run
mount --bind "$T/etc" /etc/libvirt
for d in lib cache log; do
    mkdir -p "/var/$d/libvirt"
    mount --bind "$T/$d" "/var/$d/libvirt"
done
libvirtd --pid-file /run/libvirtd.pid >"$T/libvirtd.log" 2>&1 &
trap 'kill $! 2>/dev/null; wait' EXIT
n=0
until [ -S /run/libvirt/libvirt-sock ] || [ $n -ge 600 ]; do
    sleep 0.05
    n=$((n + 1))
done
if [ ! -S /run/libvirt/libvirt-sock ]; then
    echo "libvirtd made no socket within 30 s" >&2
    exit 1
fi
"$@"
