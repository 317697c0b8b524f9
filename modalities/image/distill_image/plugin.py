"""Hook implementations of the image plugin (entry point ``distill: image = distill_image.plugin``).

Importing this module is cheap: scikit-learn, scikit-image and the reference
networks are imported only when data or networks are first used.
"""
from __future__ import annotations

from distill import hookimpl
from distill_image.modality import ImageModality


@hookimpl
def distill_register_modalities(register) -> None:
    register.add("image", ImageModality, description=ImageModality.description)
