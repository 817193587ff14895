#!/bin/busybox sh
# /init of the avirt test guest (built by tests/guest/build.py; the builder hashes this file into
# the cache key, so editing it rebuilds the initramfs).
#
# Why it looks like this:
# - The shebang names /bin/busybox directly: the applet symlinks (/bin/sh, ...) only exist after
#   `busybox --install -s` below, so nothing else has to be prepared at build time.
# - PID 1 must never exit: that panics the kernel. With panic=-1 and QEMU -no-reboot a panic ends
#   QEMU at once, which a test sees as "QEMU exited before the marker"; every path below ends in
#   poweroff or in idle_forever instead.
# - Tests read the serial console (console=ttyS0) line by line; every line meant for them starts
#   with "avirt-guest: " or "avirt-wl: " (see build.py's module docstring for the full list).

/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

say() { echo "avirt-guest: $*"; }

idle_forever() {
    while :; do sleep 3600; done
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The Debian kernels build virtio and the ACPI button as modules and their .debs carry no
# modules.dep, so the builder wrote the load order (dependencies first) to /etc/avirt-modules.
# Probing is synchronous: /dev/vda and /dev/input/eventN exist when insmod returns.
while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod.ko" || say "error insmod $mod failed"
done </etc/avirt-modules

# Which firmware started the kernel (UEFI leaves /sys/firmware/efi behind): "avirt-guest: firmware efi"
# or "avirt-guest: firmware bios".
if [ -d /sys/firmware/efi ]; then say "firmware efi"; else say "firmware bios"; fi

workload=none
actions=
slots=4
count=0
sleep_s=0
blocks=
shares=
net=
pings=
lookups=
guest_name=avirt-guest
wait_s=0
cpus=
wldev=vda
hotnet=
ncjob=
# avirt.* parameters are not passed to init by the kernel (dotted names look like module
# parameters), so read them from /proc/cmdline.
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        avirt.workload=*) workload=${arg#*=} ;;
        avirt.slots=*) slots=${arg#*=} ;;
        avirt.count=*) count=${arg#*=} ;;
        avirt.sleep=*) sleep_s=${arg#*=} ;;
        avirt.actions=*) actions=${arg#*=} ;;
        avirt.blocks=*) blocks=${arg#*=} ;;
        avirt.shares=*) shares=${arg#*=} ;;
        avirt.net=*) net=${arg#*=} ;;
        avirt.ping=*) pings=${arg#*=} ;;
        avirt.lookup=*) lookups=${arg#*=} ;;
        avirt.hostname=*) guest_name=${arg#*=} ;;
        avirt.wait=*) wait_s=${arg#*=} ;;
        avirt.cpus=*) cpus=${arg#*=} ;;
        avirt.wldev=*) wldev=${arg#*=} ;;
        avirt.hotnet=*) hotnet=${arg#*=} ;;
        avirt.nc=*) ncjob=${arg#*=} ;;
    esac
done

# Things a guest does that QEMU turns into events, run once after "ready" (comma-separated):
#   rtc      set the clock far ahead and write it to the RTC            -> RTC_CHANGE
#   suspend  suspend to RAM (the host wakes it with system_wakeup)     -> SUSPEND, WAKEUP
#   panic    crash the kernel (sysrq c)                                -> GUEST_PANICKED with pvpanic
run_actions() {
    for action in $(echo "$actions" | tr ',' ' '); do
        case "$action" in
            rtc)
                date -s @2000000000 >/dev/null && hwclock -w -u && say "rtc written" ;;
            suspend)
                say "suspending"
                echo mem >/sys/power/state && say "woke up" ;;
            panic)
                say "panicking"
                echo c >/proc/sysrq-trigger ;;
            *) say "error unknown action $action" ;;
        esac
    done
}

# Block devices, once after "ready" (avirt.blocks=sda,sr0: the names the test expects). SCSI and ATA
# disks are probed asynchronously, so each name is waited for (up to 30 s), then reported as
#   avirt-guest: block NAME sectors=N ro=R md5=M path=P
# (M: MD5 of the whole device, "none" when it cannot be read, e.g. a cdrom drive without media; P:
# its sysfs device path, which names the PCI slot, SCSI address or ATA port), or as
# "avirt-guest: block NAME missing"; last comes "avirt-guest: blocks done: " and every /sys/block entry.
# avirt.cpus=1: bring hot-added vCPUs online (what a distribution's udev rule does) and say which are,
# "avirt-guest: cpus online=0-1", each time that changes (a removed vCPU the kernel offlines itself).
report_cpus() {
    last=
    while :; do
        for state in /sys/devices/system/cpu/cpu[0-9]*/online; do
            [ -e "$state" ] || continue
            read -r up <"$state"
            [ "$up" = 1 ] || echo 1 >"$state" 2>/dev/null
        done
        read -r online </sys/devices/system/cpu/online
        if [ "$online" != "$last" ]; then
            say "cpus online=$online"
            last=$online
        fi
        sleep 0.1
    done
}

report_blocks() {
    for name in $(echo "$blocks" | tr ',' ' '); do
        n=0
        while [ ! -b "/dev/$name" ] && [ "$n" -lt 600 ]; do
            sleep 0.05
            n=$((n + 1))
        done
        if [ ! -b "/dev/$name" ]; then
            say "block $name missing"
            continue
        fi
        sum=$(set -o pipefail; dd if="/dev/$name" bs=65536 2>/dev/null | md5sum) || sum=none
        read -r sectors <"/sys/block/$name/size"
        read -r ro <"/sys/block/$name/ro"
        path=$(readlink -f "/sys/block/$name")
        say "block $name sectors=$sectors ro=$ro md5=${sum%% *} path=${path#/sys}"
    done
    say "blocks done: $(ls /sys/block | tr '\n' ' ')"
}

# Host directories shared over virtiofs, once after "ready" (avirt.shares=TAG,...): each is mounted at
# /mnt/TAG, its host.txt read and guest.txt written (and synced), reported as
#   avirt-guest: share TAG read=<first line of host.txt> wrote=ok
# or "avirt-guest: share TAG error <what failed>".
report_shares() {
    for tag in $(echo "$shares" | tr ',' ' '); do
        mkdir -p "/mnt/$tag"
        if ! mount -t virtiofs "$tag" "/mnt/$tag" 2>/tmp/avirt-mount.err; then
            say "share $tag error mount: $(tail -n 1 /tmp/avirt-mount.err)"
            continue
        fi
        read -r text <"/mnt/$tag/host.txt" || text=
        if echo "written by the guest" >"/mnt/$tag/guest.txt" && sync; then
            say "share $tag read=$text wrote=ok"
        else
            say "share $tag error write"
        fi
    done
}

# Networking, once after "ready" (avirt.net=dhcp): every ethN is brought up and asks for an IPv4 lease
# with udhcpc, sending avirt.hostname (default avirt-guest) as its host name; each is reported as
#   avirt-guest: net ethN mac=M ip=A/P    (or "avirt-guest: net ethN error no lease")
# then "avirt-guest: net done"; avirt.net=A/P instead gives eth0 that address, with no DHCP. Then each
# NAME@SERVER of avirt.lookup=... is asked of that DNS server (retried for up to a minute) and reported as
# "avirt-guest: lookup NAME ADDRESS" (or "lookup NAME failed"). With
# avirt.ping=IP,... each address is then pinged once a second, forever, and every change of its answer
# is reported: "avirt-guest: ping IP ok" or "ping IP fail" (the first result of each is a change).
# With avirt.net=dhcp and avirt.hotnet=1, NICs plugged in after "net done" are watched for (five times
# a second): each new ethN asks for a lease as above and is reported the same way; each one that
# goes away is reported as "avirt-guest: net ethN gone".
watch_nics() {
    known=" $(ls /sys/class/net | tr '\n' ' ')"
    while :; do
        now=" $(ls /sys/class/net | tr '\n' ' ')"
        for name in $now; do
            case "$known" in *" $name "*) continue ;; esac
            case "$name" in eth*) ;; *) continue ;; esac
            ip link set "$name" up
            if udhcpc -i "$name" -s /tmp/avirt-udhcpc.sh -q -n -t 30 -T 1 -x "hostname:$guest_name" \
                    >/dev/null 2>&1; then
                say "net $name mac=$(cat "/sys/class/net/$name/address") ip=$(cat "/tmp/avirt-net-$name")"
            else
                say "net $name error no lease"
            fi
        done
        for name in $known; do
            case "$now" in *" $name "*) ;; *) say "net $name gone" ;; esac
        done
        known=$now
        sleep 0.2
    done
}

# TCP transfers between two guests, after "net done" (busybox nc; for bench/networks.py):
# avirt.nc=listen:PORT takes one connection after another and counts what each brings, reporting
#   avirt-guest: nc connected uptime=T0
#   avirt-guest: nc received N bytes uptime=T1
# avirt.nc=send:IP:PORT:BYTES[:COUNT] sends BYTES zero bytes to IP:PORT, COUNT times (default once)
# one after the other (retrying until the listener is there), reporting "avirt-guest: nc sent BYTES"
# after each.
nc_job() {
    case "$ncjob" in
        listen:*)
            cat >/tmp/avirt-recv.sh <<'SCRIPT'
#!/bin/sh
read -r t0 _ </proc/uptime
echo "avirt-guest: nc connected uptime=$t0" >/dev/ttyS0
n=$(wc -c)
read -r t1 _ </proc/uptime
echo "avirt-guest: nc received $n bytes uptime=$t1" >/dev/ttyS0
SCRIPT
            chmod +x /tmp/avirt-recv.sh
            say "nc listening"
            while :; do nc -l -p "${ncjob#listen:}" -e /tmp/avirt-recv.sh; done
            ;;
        send:*)
            rest=${ncjob#send:}
            ip=${rest%%:*}; rest=${rest#*:}
            port=${rest%%:*}; rest=${rest#*:}
            bytes=${rest%%:*}; times=1
            [ "$rest" = "$bytes" ] || times=${rest#*:}
            i=0
            while [ "$i" -lt "$times" ]; do
                until head -c "$bytes" /dev/zero | nc "$ip" "$port"; do sleep 0.2; done
                say "nc sent $bytes"
                i=$((i + 1))
            done
            ;;
    esac
}

report_net() {
    ip link set lo up
    cat >/tmp/avirt-udhcpc.sh <<'SCRIPT'
#!/bin/sh
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        echo "$ip/$mask" >"/tmp/avirt-net-$interface" ;;
esac
SCRIPT
    chmod +x /tmp/avirt-udhcpc.sh
    hostname "$guest_name"
    if [ "$net" != dhcp ]; then
        ip link set eth0 up && ip addr add "$net" dev eth0 &&
            say "net eth0 mac=$(cat /sys/class/net/eth0/address) ip=$net"
    fi
    for dev in /sys/class/net/eth*; do
        [ "$net" = dhcp ] || break
        [ -e "$dev" ] || continue
        name=${dev##*/}
        ip link set "$name" up
        if udhcpc -i "$name" -s /tmp/avirt-udhcpc.sh -q -n -t 30 -T 1 -x "hostname:$guest_name" \
                >/dev/null 2>&1; then
            say "net $name mac=$(cat "$dev/address") ip=$(cat "/tmp/avirt-net-$name")"
        else
            say "net $name error no lease"
        fi
    done
    say "net done"
    if [ -n "$hotnet" ]; then
        watch_nics &
    fi
    if [ -n "$ncjob" ]; then
        nc_job &
    fi
    for item in $(echo "$lookups" | tr ',' ' '); do
        name=${item%@*}
        server=${item#*@}
        n=0
        found=
        while [ -z "$found" ] && [ "$n" -lt 60 ]; do
            found=$(nslookup "$name" "$server" 2>/dev/null | awk '/^Name:/ {named=1} named && /^Address/ {a=$NF} END {print a}')
            [ -n "$found" ] || sleep 1
            n=$((n + 1))
        done
        say "lookup $name ${found:-failed}"
    done
    [ -n "$pings" ] || return 0
    last=
    while :; do
        now=
        for target in $(echo "$pings" | tr ',' ' '); do
            if ping -c 1 -W 1 "$target" >/dev/null 2>&1; then result=ok; else result=fail; fi
            now="$now $target=$result"
            case " $last " in
                *" $target=$result "*) ;;
                *) say "ping $target $result" ;;
            esac
        done
        last=$now
        sleep 1
    done
}

# Write loop. Iteration i writes 64 KiB of byte (i % 254) + 1 at slot K = i % slots (offset K MiB)
# of /dev/vda with conv=fsync and reports it only after dd returned, so every reported pattern is
# on the virtual disk. On SIGTERM (the power button) the current write is finished and reported
# (ash runs the trap after the foreground command), then the loop stops: a test can rely on
# "the disk holds the last reported pattern of every slot" even across a powerdown.
workload_write() {
    # avirt.wait=S: a disk plugged in after boot; wait up to S seconds for /dev/$wldev (avirt.wldev,
    # default vda) to appear.
    n=0
    while [ ! -b "/dev/$wldev" ] && [ "$n" -lt "$((wait_s * 20))" ]; do
        sleep 0.05
        n=$((n + 1))
    done
    if [ ! -b "/dev/$wldev" ]; then
        echo "avirt-wl: error no /dev/$wldev after ${wait_s} s"
        return 1
    fi
    stop=0
    trap 'stop=1' TERM
    i=0
    while [ "$count" -eq 0 ] || [ "$i" -lt "$count" ]; do
        [ "$stop" = 1 ] && break
        slot=$((i % slots))
        pat=$((i % 254 + 1))
        # One file per pattern, made on first use (at most 254 x 64 KiB of RAM): every process
        # spawned costs about a millisecond under TCG, so the loop forks only dd.
        src=/tmp/avirt-pat.$pat
        if [ ! -e "$src" ]; then
            head -c 65536 /dev/zero | tr '\000' "\\$(printf '%03o' "$pat")" >"$src.tmp"
            mv "$src.tmp" "$src"
        fi
        if ! dd if="$src" of="/dev/$wldev" bs=65536 count=1 seek=$((slot * 16)) conv=fsync \
                2>/tmp/avirt-dd.err; then
            echo "avirt-wl: error i=$i slot=$slot: $(tail -n 1 /tmp/avirt-dd.err)"
            return 1
        fi
        printf 'avirt-wl: i=%d slot=%d pat=0x%02x\n' "$i" "$slot" "$pat"
        i=$((i + 1))
        [ "$stop" = 1 ] && break
        if [ "$sleep_s" != 0 ]; then
            # A background sleep + wait, because `wait` returns as soon as the trapped TERM
            # arrives, while a foreground sleep would delay the powerdown by up to avirt.sleep.
            sleep "$sleep_s" &
            wait $!
            kill $! 2>/dev/null
        fi
    done
    if [ "$stop" = 1 ]; then
        echo "avirt-wl: stopped i=$i"
    else
        echo "avirt-wl: done"
    fi
}

# Find the ACPI power button's event device and open it *before* printing "ready": evdev only
# queues events for open readers, so a system_powerdown sent right after "ready" is not lost.
pb=
for dev in /sys/class/input/event*; do
    if [ "$(cat "$dev/device/name" 2>/dev/null)" = "Power Button" ]; then
        pb=/dev/input/${dev##*/}
        break
    fi
done
if [ -n "$pb" ] && [ -c "$pb" ] && [ -r "$pb" ]; then
    # (A failed redirection on `exec` would end this shell, i.e. panic; hence the checks.)
    exec 3<"$pb"
else
    say "error no power button input device"
    pb=
fi

wl_pid=
case "$workload" in
    none) ;;
    write)
        # With avirt.wait the disk may come later (plugged in after "ready"): workload_write waits.
        if [ ! -b "/dev/$wldev" ] && [ "$wait_s" = 0 ]; then
            say "error avirt.workload=write but no /dev/$wldev"
            workload=none
        fi
        ;;
    *)
        say "error unknown avirt.workload=$workload"
        workload=none
        ;;
esac

# The QEMU guest agent, when the domain has its channel (<channel type='unix'><target type='virtio'
# name='org.qemu.guest_agent.0'/>). busybox's mdev makes no /dev/virtio-ports links, so the port is
# found by its name in sysfs. qemu-ga's guest-shutdown runs `/sbin/shutdown -P|-H|-r +0 MESSAGE`,
# which a small script turns into busybox's poweroff, halt or reboot (after a sync and a line on the
# console: "avirt-guest: agent shutdown -P"). The agent runs in a loop: when it ends (a test kills it
# through guest-exec to see an agent that does not answer), the loop says "avirt-guest: qga stopped",
# waits the seconds written to /run/qga-pause (0 if none), says "avirt-guest: qga restart", and starts
# it again.
start_agent() {
    port=
    for dev in /sys/class/virtio-ports/*; do
        [ "$(cat "$dev/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${dev##*/}
    done
    [ -n "$port" ] || return 0
    mkdir -p /var/run /var/log
    cat >/sbin/shutdown <<'SCRIPT'
#!/bin/sh
how=-P
for arg in "$@"; do
    case "$arg" in -r|-H|-P) how=$arg ;; esac
done
echo "avirt-guest: agent shutdown $how" >/dev/console
sync
case "$how" in
    -r) reboot -f ;;
    -H) halt -f ;;
    *) poweroff -f ;;
esac
SCRIPT
    chmod +x /sbin/shutdown
    say "qga port $port"
    (
        exec 3<&-
        while :; do
            /usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /run </dev/null \
                >/dev/null 2>/tmp/qemu-ga.err
            say "qga stopped"
            read -r pause </run/qga-pause 2>/dev/null || pause=0
            rm -f /run/qga-pause
            sleep "$pause"
            say "qga restart"
        done
    ) &
}
start_agent

read -r up _ </proc/uptime
say "ready uptime=$up"

if [ "$workload" = write ]; then
    (exec 3<&-; workload_write) &
    wl_pid=$!
fi
if [ -n "$actions" ]; then
    (exec 3<&-; run_actions) &
fi
if [ -n "$blocks" ]; then
    (exec 3<&-; report_blocks) &
fi
if [ -n "$cpus" ]; then
    (exec 3<&-; report_cpus) &
fi
if [ -n "$shares" ]; then
    (exec 3<&-; report_shares) &
fi
if [ -n "$net" ]; then
    (exec 3<&-; report_net) &
fi

if [ -z "$pb" ]; then
    idle_forever
fi
# One input_event is 24 bytes on x86_64; any event from this device is the button.
if ! dd bs=24 count=1 <&3 >/dev/null 2>/dev/null; then
    say "error reading $pb failed"
    idle_forever
fi
say "power button"
if [ -n "$wl_pid" ]; then
    kill -TERM "$wl_pid" 2>/dev/null
    wait "$wl_pid"
fi
sync
say "poweroff"
poweroff -f
idle_forever
