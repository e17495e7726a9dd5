"""The names an assessment row may carry, without importing any attack code.

Here, apart from :mod:`.attacks` and :mod:`.defences`, so result schemas and
reports can check a file's names without loading torch models.
"""

from __future__ import annotations

__all__ = ["ATTACKS", "DEFENCES", "UNRECOGNISABLE_SSIM"]

ATTACKS = ("rmle", "inverse", "inverse-ood", "shadow", "identity", "prior")
"""``inverse-ood``: the inverse network trained on other classes than it is scored on
(see :func:`~collabinfer.privacy.aux.class_subset`); ``identity``: the image
itself was sent (cut 0), so the attacker reads it; ``prior``: nothing was sent,
so the best guess is the mean auxiliary image."""

DEFENCES = ("none", "noise", "dropout", "variational")

UNRECOGNISABLE_SSIM = 0.3  # He, Zhang & Lee (ACSAC 2019): below it a human cannot tell
