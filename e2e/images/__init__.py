"""Container images for the e2e node, built locally (no registry is reachable here).

    from e2e.images import build_images
    images = build_images()          # idempotent; seconds when cached
    images.pause.ref, images.pause.archive

`python -m e2e.images` builds them and prints their references and archives.
"""

from e2e.images.build import PAUSE_REF, Image, Images, build_images, pause_image

__all__ = ["PAUSE_REF", "Image", "Images", "build_images", "pause_image"]
