#!/usr/bin/env bash
# Make a local base image for docker/Dockerfile where no container registry can be reached:
# a minimal Debian (debootstrap, from Debian's own package mirror) with python3 and python3-venv,
# imported into podman's image store as $ACESERVER_BASE_IMAGE (default localhost/aceserver-base:bookworm).
# Reuses the image when it already exists, so only the first run pays for the debootstrap.
#
#   docker/base-image.sh            # prints the image name on stdout when done
#
# A host that can pull from Docker Hub does not need this: the Dockerfile's default base is the
# official python:3.11-slim image.
set -euo pipefail

IMAGE="${ACESERVER_BASE_IMAGE:-localhost/aceserver-base:bookworm}"
SUITE="${ACESERVER_BASE_SUITE:-bookworm}"
MIRROR="${ACESERVER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$IMAGE"; then
    echo "base-image: reusing $IMAGE" >&2
    echo "$IMAGE"
    exit 0
fi

command -v debootstrap >/dev/null || { echo "base-image: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
root="$(mktemp -d /var/tmp/aceserver-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
start=$(date +%s)
echo "base-image: debootstrap $SUITE from $MIRROR into $root (a few minutes)" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$root" "$MIRROR" >&2
# what a runtime image does not need: package lists and caches, documentation, manual pages, locales
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
tar -C "$root" -c . | podman import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    --message "minimal Debian $SUITE with python3 (docker/base-image.sh)" - "$IMAGE" >&2
echo "base-image: made $IMAGE in $(( $(date +%s) - start )) s" >&2
echo "$IMAGE"
