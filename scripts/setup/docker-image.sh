#!/bin/sh
# Builds the tiny local test image the container tests start (no registry is reachable, so nothing
# can be pulled): a root filesystem holding Debian's static busybox, brought in with `docker import`.
# Idempotent: does nothing when the image already exists.
#   EMA_TEST_IMAGE   image name (default ema-test-busybox:latest)
#   DOCKER_HOST      engine to use (default unix:///var/run/docker.sock)
set -eu
IMAGE="${EMA_TEST_IMAGE:-ema-test-busybox:latest}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "docker-image: $IMAGE already present"
    exit 0
fi

BUSYBOX=""
for candidate in /bin/busybox /usr/bin/busybox; do
    if [ -x "$candidate" ] && file -L "$candidate" 2>/dev/null | grep -q 'statically linked'; then
        BUSYBOX="$candidate"
        break
    fi
done
if [ -z "$BUSYBOX" ]; then
    if ! dpkg -s busybox-static >/dev/null 2>&1; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y busybox-static
    fi
    BUSYBOX=/bin/busybox
fi

ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT
mkdir -p "$ROOTFS/bin" "$ROOTFS/tmp" "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/etc"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in sh ls cat sleep head tail dd yes true false echo mkdir rm; do
    ln -s busybox "$ROOTFS/bin/$applet"
done
tar -C "$ROOTFS" -c . | docker import -c 'CMD ["/bin/sh"]' - "$IMAGE"
echo "docker-image: built $IMAGE"
