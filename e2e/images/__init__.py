"""Container images for the e2e node, built locally (no registry is reachable here).

    from e2e.images import build_images
    images = build_images()          # idempotent; seconds when cached
    images.pause.ref, images.pause.archive    # also .base, .webhook, .demo, .sdks

Every `ref` is fully qualified (localhost/...) and every `archive` is a docker-archive
that `ctr -n k8s.io images import` loads under that name. `python -m e2e.images` builds
them and prints one `<name> <ref> <archive>` line each.
"""

from e2e.images.build import (
    BASE_REPO,
    BOTOCORE_VERSION,
    DEMO_REF,
    PAUSE_REF,
    SDKS_REF,
    WEBHOOK_REPO,
    Image,
    Images,
    build_images,
    pause_image,
)

__all__ = [
    "BASE_REPO",
    "BOTOCORE_VERSION",
    "DEMO_REF",
    "PAUSE_REF",
    "SDKS_REF",
    "WEBHOOK_REPO",
    "Image",
    "Images",
    "build_images",
    "pause_image",
]
