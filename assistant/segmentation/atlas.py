"""Named brain structures on MRI: register the scan to Colin27 and bring the AAL labels back.

The registration is the slow part (tens of seconds), so it is kept per `Volume` object: asking
for the left and then the right hippocampus of the same scan registers once. The cache is keyed
by the volume object itself and forgets it when the session drops it, so users never share one.
"""

from __future__ import annotations

import re
import weakref

import numpy as np

from assistant.imaging.progress import ProgressCallback, report
from assistant.imaging.registration import Registration, load_template, register_to_template
from assistant.segmentation.classical import head_mask
from assistant.segmentation.prompts import Structure
from assistant.volume import Volume

ATLAS_TEMPLATE = "colin27"
_registrations: "weakref.WeakKeyDictionary[Volume, Registration]" = weakref.WeakKeyDictionary()


def registration_for(volume: Volume, progress: ProgressCallback | None = None) -> Registration:
    """Affine + B-spline registration of `volume` to Colin27, computed once per volume object."""
    if volume not in _registrations:
        _registrations[volume] = register_to_template(
            volume, load_template(ATLAS_TEMPLATE), kind="affine+bspline", progress=progress
        )
    return _registrations[volume]


def aal_label_ids(structure: Structure) -> list[int]:
    """AAL label values whose names match the structure (and its side, if one was asked for)."""
    names = load_template(ATLAS_TEMPLATE).label_names
    suffix = f"_{structure.side}$" if structure.side else ""
    patterns = [re.compile(f"^{pattern}.*{suffix}") for pattern in structure.aal_patterns]
    return sorted(label for label, name in names.items() if any(p.match(name) for p in patterns))


def segment_structure(volume: Volume, structure: Structure, progress: ProgressCallback | None = None) -> tuple[np.ndarray, list[str]]:
    """The structure's mask on the scan grid, and notes on how it was obtained."""
    template = load_template(ATLAS_TEMPLATE)
    registration = registration_for(volume, progress)
    report(progress, 0.97, "mapping atlas labels onto the scan")
    if structure.rule == "brain_mr":
        # the brain lies inside the head: trims template brain that lands on background (skull-stripped scans)
        mask = (registration.warp_labels(template.brain_mask) > 0) & head_mask(volume)
        source = "Colin27 brain mask (ch2bet) within the head"
    else:
        ids = aal_label_ids(structure)
        if not ids:
            raise ValueError(f"The AAL atlas has no label for {structure.name!r}.")
        mask = np.isin(registration.warp_labels(template.labels), ids)
        source = f"AAL labels {', '.join(template.label_names[i] for i in ids)}"
    notes = [
        f"Atlas-based: {source} mapped through {registration.kind} registration to Colin27 "
        f"(Mattes MI {registration.metric_value:.2f}, {registration.seconds:.0f} s); "
        "boundaries follow one healthy template brain, not this patient's anatomy, and fail where anatomy is distorted."
    ]
    return mask, notes
