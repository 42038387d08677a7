"""`python -m e2e.images`: build (or reuse) the e2e images and print them.

One line per image on stdout: `<name> <ref> <archive>`; progress goes to stderr.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from e2e.images import Image, build_images


def main() -> int:
    started = time.monotonic()
    images = build_images()
    for field in dataclasses.fields(images):
        image: Image = getattr(images, field.name)
        print(f"{field.name} {image.ref} {image.archive}")
    print(f"e2e-images: ready in {time.monotonic() - started:.1f}s", flush=True, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
