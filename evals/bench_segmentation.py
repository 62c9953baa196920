"""Segmentation benchmark: Dice, HD95 and runtime per backend on real labelled volumes.

Cases (all offline): ITK T1 brain vs its skull-strip mask, InVesalius head CT bone and head
(the "soft tissue" mask is a >= -142 HU threshold, i.e. the whole head) vs its masks, MNI152
brain vs nilearn's brain mask, the ROBEX reference head (another real subject, 1.5 mm) vs ROBEX's
own brain mask, Colin27 AAL atlas consistency on a copy deformed by a known affine, and the lateral ventricles (no labels exist offline: volume, share inside each
reference's CSF class, and consistency on the deformed Colin27). Every backend is compared with a plain-threshold baseline (Otsu, largest component,
holes filled; for AAL: the atlas labels without registration) in the same run.

    python -m evals.bench_segmentation [--medsam-slices 5]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu

from assistant.imaging.registration import array_to_sitk, load_template, sitk_to_array
from assistant.scans.samples import load_sample, sample_labels
from assistant.segmentation import BoxPrompt, StructurePrompt, resolve_structure, segment
from assistant.segmentation.atlas import registration_for, template_ventricles
from assistant.segmentation.result import keep_largest_component
from assistant.segmentation.slice_models import propagate, slice_segmenter
from assistant.volume import Volume

RESULTS = Path(__file__).parent / "results" / "bench_segmentation.json"
AAL_MIN_ML = 5.0
REPORTED_AAL = ("Hippocampus_L", "Hippocampus_R", "Thalamus_L", "Caudate_R", "Precentral_L")  # HD95 for these only


@dataclass
class Row:
    case: str
    target: str
    method: str
    dice: float
    hd95_mm: float
    seconds: float
    cpu_seconds: float = float("nan")  # process CPU time: wall time is inflated when the machine is shared
    volume_ml: float = float("nan")
    in_reference_csf: float = float("nan")  # ventricles: share of the mask in the reference's CSF class


def scores(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """MONAI Dice and 95th-percentile Hausdorff distance (mm)."""
    pred = torch.from_numpy(prediction.astype(np.float32))[None, None]
    true = torch.from_numpy(truth.astype(np.float32))[None, None]
    dice = float(compute_dice(pred, true, include_background=True)[0, 0])
    hd95 = float(compute_hausdorff_distance(pred, true, include_background=True, percentile=95, spacing=list(spacing))[0, 0])
    return dice, hd95


def dice_only(prediction: np.ndarray, truth: np.ndarray) -> float:
    pred = torch.from_numpy(prediction.astype(np.float32))[None, None]
    return float(compute_dice(pred, torch.from_numpy(truth.astype(np.float32))[None, None], include_background=True)[0, 0])


def otsu_baseline(volume: Volume) -> np.ndarray:
    data = np.nan_to_num(volume.data)
    mask = keep_largest_component(data > threshold_otsu(data))
    return ndimage.binary_fill_holes(mask)


def timed(run: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float]:
    started, cpu_started = time.perf_counter(), time.process_time()
    mask = run()
    return mask, time.perf_counter() - started, time.process_time() - cpu_started


def label(sample: str, name: str) -> np.ndarray:
    return np.asarray(nib.load(sample_labels(sample)[name]).dataobj)


def evaluate(rows: list[Row], case: str, target: str, method: str, volume: Volume, truth: np.ndarray, run: Callable[[], np.ndarray]) -> None:
    mask, seconds, cpu_seconds = timed(run)
    dice, hd95 = scores(mask, truth, volume.spacing)
    rows.append(Row(case, target, method, round(dice, 4), round(hd95, 2), round(seconds, 1), round(cpu_seconds, 1)))
    print(f"{case:14s} {target:22s} {method:18s} Dice {dice:.3f}  HD95 {hd95:7.2f} mm  {seconds:6.1f} s wall "
          f"{cpu_seconds:6.1f} s CPU", flush=True)


def structure_mask(volume: Volume, name: str) -> Callable[[], np.ndarray]:
    return lambda: segment(volume, StructurePrompt(resolve_structure(name, volume.modality))).mask


def _known_affine(volume: Volume) -> sitk.AffineTransform:
    """6 deg about z, 4 % scale, a 5 mm shift, about the volume's centre."""
    transform = sitk.AffineTransform(3)
    angle = np.deg2rad(6.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]) * 1.04
    transform.SetMatrix(rotation.flatten().tolist())
    transform.SetTranslation((5.0, -4.0, 3.0))
    transform.SetCenter(volume.voxel_to_world(np.array(volume.center_voxel)).tolist())
    return transform


def _moved(array: np.ndarray, volume: Volume, interpolator: int) -> np.ndarray:
    reference = array_to_sitk(volume.data, volume.affine)
    return sitk_to_array(sitk.Resample(array_to_sitk(array, volume.affine), reference, _known_affine(volume), interpolator, 0.0))


def moved_template_ventricles(moved: Volume) -> np.ndarray:
    return _moved(template_ventricles(), moved, sitk.sitkNearestNeighbor) > 0


def deformed_colin27() -> tuple[Volume, np.ndarray]:
    """Colin27 and its AAL labels moved by a known affine (6 deg, 4 % scale, 5 mm shift) on the same grid."""
    template = load_template("colin27")
    volume = template.volume
    moved = Volume(_moved(volume.data, volume, sitk.sitkLinear).astype(np.float32), volume.affine, volume.metadata,
                   name="colin27-deformed")
    return moved, _moved(template.labels, volume, sitk.sitkNearestNeighbor)


def bench_aal(rows: list[Row], deformed: tuple[Volume, np.ndarray]) -> None:
    volume, truth = deformed
    template = load_template("colin27")
    started = time.perf_counter()
    registration = registration_for(volume)
    warped = registration.warp_labels(template.labels)
    seconds = time.perf_counter() - started
    voxel_ml = volume.voxel_volume_ml
    large = [i for i, n in template.label_names.items() if (truth == i).sum() * voxel_ml > AAL_MIN_ML]
    for method, labels, secs in (("atlas", warped, seconds), ("baseline-no-reg", template.labels, 0.0)):
        dices = []
        for i in large:
            if template.label_names[i] not in REPORTED_AAL:
                dices.append(dice_only(labels == i, truth == i))
                continue
            dice, hd95 = scores(labels == i, truth == i, volume.spacing)
            dices.append(dice)
            rows.append(Row("colin27-deformed", template.label_names[i], method, round(dice, 4), round(hd95, 2), round(secs, 1)))
            print(f"{'colin27-deformed':14s} {template.label_names[i]:22s} {method:18s} Dice {dice:.3f}  HD95 {hd95:7.2f} mm", flush=True)
        rows.append(Row("colin27-deformed", f"AAL mean ({len(large)} > 5 mL)", method, round(float(np.mean(dices)), 4), float("nan"), round(secs, 1)))
        rows.append(Row("colin27-deformed", f"AAL min ({len(large)} > 5 mL)", method, round(float(np.min(dices)), 4), float("nan"), round(secs, 1)))
        print(f"colin27-deformed AAL {len(large)} labels > 5 mL {method}: mean Dice {np.mean(dices):.3f}, min {np.min(dices):.3f}, "
              f"fraction >= 0.80: {np.mean(np.array(dices) >= 0.8):.2f}  ({secs:.1f} s)", flush=True)


def csf_baseline(volume: Volume) -> np.ndarray:
    """Plain threshold for the ventricles: the darkest of three Otsu classes inside the Otsu head, largest component."""
    data = np.nan_to_num(volume.data)
    head = otsu_baseline(volume)
    return keep_largest_component(head & (data < threshold_multiotsu(data[head], classes=3)[0]))


def bench_ventricles(rows: list[Row], itk: Volume, mni: Volume, deformed: tuple[Volume, np.ndarray]) -> None:
    """No ventricle labels exist offline: volume (adults: about 7-50 mL), share of the mask in each reference's
    CSF class (ITK k-means class 4; MNI152 brain outside nilearn's grey and white matter masks), and on the
    deformed Colin27 the Dice against the template's ventricles moved by the known affine."""
    itk_tissue = label("mr-t1-itk", "tissue")
    mni_csf = (label("mr-t1-mni152", "brain_mask") > 0) & (label("mr-t1-mni152", "gm") == 0) & (label("mr-t1-mni152", "wm") == 0)
    moved_colin, _ = deformed
    cases = (
        ("itk-t1", itk, itk_tissue == 4, None),
        ("mni152", mni, mni_csf, None),
        ("colin27-deformed", moved_colin, None, moved_template_ventricles(moved_colin)),
    )
    for case, volume, csf, truth in cases:
        for method, run in (("atlas", structure_mask(volume, "lateral ventricles")), ("baseline-otsu", lambda: csf_baseline(volume))):
            mask, seconds, cpu_seconds = timed(run)
            dice, hd95 = scores(mask, truth, volume.spacing) if truth is not None else (float("nan"), float("nan"))
            share = float(csf[mask].mean()) if csf is not None else float("nan")
            volume_ml = float(mask.sum() * volume.voxel_volume_ml)
            rows.append(Row(case, "lateral ventricles", method, round(dice, 4), round(hd95, 2), round(seconds, 1),
                            round(cpu_seconds, 1), round(volume_ml, 1), round(share, 3)))
            print(f"{case:14s} {'lateral ventricles':22s} {method:18s} Dice {dice:.3f}  HD95 {hd95:7.2f} mm  "
                  f"{volume_ml:6.1f} mL  in reference CSF {share:.2f}  {seconds:6.1f} s wall {cpu_seconds:6.1f} s CPU", flush=True)


def bench_medsam(rows: list[Row], slices: int) -> None:
    """LiteMedSAM from a box around the truth on the central slices (slice-wise is slow on 2 cores)."""
    segmenter = slice_segmenter("medsam")
    for sample, name in (("mr-t1-itk", "skull_strip"), ("mr-t1-colin27", "brain")):
        volume, truth = load_sample(sample), label(sample, name) > 0
        z = volume.shape[2] // 2
        z0, z1 = z - slices // 2, z - slices // 2 + slices - 1
        xs, ys, _ = np.nonzero(truth[:, :, z0 : z1 + 1])
        prompt = BoxPrompt(np.array([xs.min(), ys.min(), z0]), np.array([xs.max(), ys.max(), z1]))
        band = np.zeros_like(truth)
        band[:, :, z0 : z1 + 1] = True
        evaluate(rows, sample, f"brain, {slices} slices", "medsam", volume, truth & band,
                 lambda: propagate(volume, prompt, segmenter)[0])
        box = np.zeros_like(truth)
        box[xs.min() : xs.max() + 1, ys.min() : ys.max() + 1, z0 : z1 + 1] = True
        evaluate(rows, sample, f"brain, {slices} slices", "baseline-otsu-box", volume, truth & band,
                 lambda: otsu_baseline(volume) & box)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--medsam-slices", type=int, default=5, help="central slices for LiteMedSAM (0 skips it)")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    load_template("colin27")  # loaded once per process: not part of any volume's runtime
    itk = load_sample("mr-t1-itk")
    evaluate(rows, "itk-t1", "brain", "atlas", itk, label("mr-t1-itk", "skull_strip") > 0, structure_mask(itk, "brain"))
    evaluate(rows, "itk-t1", "brain", "baseline-otsu", itk, label("mr-t1-itk", "skull_strip") > 0, lambda: otsu_baseline(itk))
    ct = load_sample("ct-head")
    for target, truth_name in (("bone", "bone"), ("head", "soft_tissue")):
        truth = label("ct-head", truth_name) > 0
        evaluate(rows, "ct-head", target, "classical", ct, truth, structure_mask(ct, target))
        evaluate(rows, "ct-head", target, "baseline-otsu", ct, truth, lambda: otsu_baseline(ct))
    mni = load_sample("mr-t1-mni152")
    truth = label("mr-t1-mni152", "brain_mask") > 0
    evaluate(rows, "mni152", "brain", "atlas", mni, truth, structure_mask(mni, "brain"))
    evaluate(rows, "mni152", "brain", "baseline-otsu", mni, truth, lambda: otsu_baseline(mni))
    robex = load_sample("mr-t1-robex")
    truth = label("mr-t1-robex", "brain_mask") > 0
    evaluate(rows, "robex", "brain", "atlas", robex, truth, structure_mask(robex, "brain"))
    evaluate(rows, "robex", "brain", "baseline-otsu", robex, truth, lambda: otsu_baseline(robex))
    deformed = deformed_colin27()
    bench_aal(rows, deformed)
    bench_ventricles(rows, itk, mni, deformed)
    if args.medsam_slices:
        bench_medsam(rows, args.medsam_slices)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
