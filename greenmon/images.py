"""The image-classification workload's images: generated from a seed, never downloaded.

A prompt's text names its image (``seeded-image:seed=S:index=I``), so a unit's inputs can
be rebuilt anywhere from the plan alone.  A leaf module: the workload and the built-in
models (which centre tiny-resnet's classifier over these images) both read it.
"""

from __future__ import annotations

from typing import Any

from greenmon.engines.base import Prompt
from greenmon.errors import WorkloadError

SEEDED_IMAGES = 164  # as many as HumanEval has problems
SEEDED_IMAGE_SIDE = 96
SEEDED_IMAGE_PREFIX = "seeded-image:"


def image_prompts(seed: int, count: int = SEEDED_IMAGES) -> list[Prompt]:
    """The image-classification workload: one prompt per seeded image (see seeded_image)."""
    return [
        Prompt(f"image/{index}", f"{SEEDED_IMAGE_PREFIX}seed={seed}:index={index}",
               "image_classification")
        for index in range(count)
    ]  # fmt: skip


def seeded_image(text: str) -> Any:
    """The uint8 RGB image (H, W, 3) a prompt's text names: ``seeded-image:seed=S:index=I``.

    Smooth colour fields (a few random sinusoids per channel) plus a little noise, so the
    image has edges and gradients for the convolutions to respond to; numpy's PCG64 seeded
    by (seed, index), so the same text gives the same bytes.
    """
    import numpy as np

    if not text.startswith(SEEDED_IMAGE_PREFIX):
        raise WorkloadError(
            f"{text[:60]!r} does not name a seeded image: an image_classification prompt "
            f"reads {SEEDED_IMAGE_PREFIX}seed=S:index=I"
        )
    try:
        fields = dict(part.split("=", 1) for part in text[len(SEEDED_IMAGE_PREFIX):].split(":"))
        seed, index = int(fields["seed"]), int(fields["index"])
    except (KeyError, ValueError) as error:
        raise WorkloadError(f"{text!r} does not name a seeded image ({error})") from error
    rng = np.random.default_rng([seed, index])
    side = SEEDED_IMAGE_SIDE
    y, x = np.mgrid[0:side, 0:side] / side
    image = np.zeros((side, side, 3))
    for channel in range(3):
        for _ in range(3):
            fx, fy, phase = rng.uniform(0.5, 6.0), rng.uniform(0.5, 6.0), rng.uniform(0, 6.3)
            image[:, :, channel] += np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    image = (image - image.min()) / max(float(np.ptp(image)), 1e-9)
    image += rng.normal(0.0, 0.05, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
