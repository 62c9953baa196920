"""The 3D vision-language core: preprocessing, in-silico cases, M3D-compatible model and loader, the project's VLM."""

from __future__ import annotations

import json
import threading

import nibabel as nib
import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from assistant.anomaly.detector import fit_normal_model
from assistant.anomaly.lesions import LesionSpec, insert_lesion
from assistant.config import get_settings
from assistant.models.base import Message, ModelError
from assistant.vlm.cases import QUESTION_WORDINGS, LesionFacts, held_out_wording, read_cases, training_wordings
from assistant.vlm.data import LOBES, base_volume, case_questions, generate_cases, lobe_of, volume_world_x
from assistant.vlm.encoder import NormalModelEncoder, SymmetryGridEncoder
from assistant.vlm.m3d import M3DLaMed, M3DVisionConfig, load_m3d_checkpoint
from assistant.vlm.model import VisualProjector, VLMConfig, left_minus_right, load_llm, load_vlm
from assistant.vlm.preprocess import SliceSelection, VolumeNotSupported, axial_slices, check_volume, m3d_input
from assistant.volume import Modality, ScanLoadError, ScanMetadata, Volume

IMAGE_TOKEN_ID = 299


def _volume(data: np.ndarray, modality: Modality = Modality.MR, spacing: float = 2.0) -> Volume:
    return Volume(data.astype(np.float32), np.diag([spacing, spacing, spacing, 1.0]), ScanMetadata(source_format="NumPy", modality=modality))


def _blob_on_right(shape=(40, 48, 36)) -> Volume:
    data = np.random.default_rng(0).normal(100, 5, shape)
    data[30:36, 20:28, 15:21] = 400  # high x index = patient's right in RAS order
    return _volume(data)


# --- preprocessing -----------------------------------------------------------------------


def test_m3d_input_is_1x32x256x256_in_unit_range_and_radiological():
    image = m3d_input(_blob_on_right())
    assert image.shape == (1, 32, 256, 256)
    assert image.min() >= 0.0 and image.max() <= 1.0
    bright_columns = np.argwhere(image[0] > 0.9)[:, 2]
    assert bright_columns.mean() < 128  # the patient's right is on the image's left


@pytest.mark.parametrize("depth", [32, 64])
def test_m3d_input_crops_the_background_and_resizes_as_m3d_does(depth):
    """A CT box of depth x 256 x 256 voxels inside air: M3D's crop keeps exactly the box and the resize to 32 slices
    averages slice pairs (area mode); expected values computed by hand from the HU window."""
    rng = np.random.default_rng(4)
    box = rng.uniform(0.0, 90.0, (256, 256, depth))  # RAS (x, y, z), all inside the (-20, 100) HU window
    hu = np.full((290, 270, depth + 12), -1000.0)
    hu[10:266, 7:263, 5:5 + depth] = box
    scaled = (box + 20.0) / 120.0
    scaled /= scaled.max()  # the window maps air to 0, so the min-max low is 0
    axial = scaled[::-1, ::-1, :].transpose(2, 1, 0)  # slices foot->head, rows anterior->posterior, columns right->left
    expected = axial.reshape(32, depth // 32, 256, 256).mean(axis=1)
    image = m3d_input(_volume(hu, Modality.CT))
    assert image.shape == (1, 32, 256, 256) and image.dtype == np.float32
    np.testing.assert_allclose(image[0], expected, rtol=0, atol=1e-5)


def test_m3d_input_refuses_a_volume_outside_the_window():
    with pytest.raises(VolumeNotSupported, match="outside the intensity window"):
        m3d_input(_volume(np.linspace(-1000, -500, 16**3).reshape(16, 16, 16), Modality.CT))


@pytest.mark.parametrize(
    "data, message",
    [
        (np.ones((64, 64, 1)) * np.arange(64)[:, None, None], "at least 8"),
        (np.where(np.eye(16)[:, :, None] > 0, np.nan, 1.0) * np.ones((16, 16, 16)), "NaN"),
        (np.zeros((16, 16, 16)), "same value"),
    ],
)
def test_unusable_volumes_are_refused_with_a_reason(data, message):
    with pytest.raises(VolumeNotSupported, match=message):
        check_volume(_volume(data))


def test_a_2d_array_is_not_a_volume():
    with pytest.raises(ScanLoadError):
        Volume(np.zeros((64, 64), dtype=np.float32), np.eye(4), ScanMetadata(source_format="NumPy"))


def test_slice_selection_is_explicit_and_windowed_to_uint8():
    images, indices = axial_slices(_blob_on_right(), SliceSelection(count=4, size=64))
    assert len(images) == len(indices) == 4 and indices == sorted(indices)
    assert images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8


def test_ct_window_saturates_bone_and_keeps_blood_apart_from_brain():
    hu = np.full((16, 16, 16), 35.0)
    hu[:4], hu[-4:] = 1000.0, 70.0  # bone, blood-like
    image = m3d_input(_volume(hu, Modality.CT))[0]
    assert image.max() == pytest.approx(1.0)
    assert image[image > 0].min() < 0.6 < image.max()


# --- in-silico cases -----------------------------------------------------------------------


def _lesion_facts(side: str, diameter_mm: float, lobe: str | None) -> LesionFacts:
    return LesionFacts(kind="mass", appearance="bright", diameter_mm=diameter_mm, side=side, lobe=lobe,
                       center_mm=(0.0, 0.0, 0.0), contrast=0.4)


def test_questions_follow_the_facts():
    qa = {pair.topic: pair for pair in case_questions("CT", whole_head=False, lesions=[])}
    assert qa["modality"].answer == "CT" and qa["presence"].answer == "no" and qa["coverage"].answer == "no"
    assert not {"side", "size", "count", "size_band", "lobe"} & set(qa)
    assert lobe_of("Frontal_Sup_L") == "frontal" and lobe_of("Thalamus_R") == "other"
    lesions = [_lesion_facts("left", 27.0, "temporal"), _lesion_facts("right", 12.0, "frontal")]
    qa = {pair.topic: pair for pair in case_questions("MR", whole_head=True, lesions=lesions)}
    assert (qa["count"].answer, qa["side"].answer, qa["size_band"].answer, qa["lobe"].answer) == ("two", "both", "large", "temporal")
    assert "27 mm" in qa["caption"].answer and "Two lesions" in qa["caption"].answer
    qa = {pair.topic: pair for pair in case_questions("MR", whole_head=True, lesions=[_lesion_facts("right", 15.0, None)])}
    assert (qa["count"].answer, qa["side"].answer, qa["size_band"].answer) == ("one", "right", "medium") and "lobe" not in qa
    assert all(pair.answer in pair.options for pair in qa.values() if pair.kind == "closed")


def test_benchmark_wordings_are_never_trained_on():
    for topic, (trained, held_out) in QUESTION_WORDINGS.items():
        assert trained and held_out and not set(trained) & set(held_out), topic
    assert held_out_wording("presence", 0) not in training_wordings("presence")


def test_cases_written_by_an_older_version_are_refused_with_the_remedy(tmp_path):
    old = {"case_id": "x", "base": "mr-t1-mni152", "split": "train", "image": "v.nii.gz", "modality": "MR", "whole_head": True,
           "lesion": None, "qa": []}
    (tmp_path / "cases.jsonl").write_text(json.dumps(old) + "\n")
    with pytest.raises(ValueError, match="scanchat vlm data"):
        read_cases(tmp_path / "cases.jsonl")


@pytest.mark.slow
def test_generated_lesions_are_on_their_stated_side_and_split_by_base(tmp_path):
    cases = generate_cases(tmp_path, cases_per_base=6, seed=3, bases=("mr-t1-mni152", "mr-t1-colin27"))
    assert {c.split for c in cases if c.base == "mr-t1-colin27"} == {"eval"}
    assert {c.split for c in cases if c.base == "mr-t1-mni152"} == {"train"}
    lesioned = [c for c in cases if c.lesions]
    assert lesioned, "every second case carries lesions"
    for case in lesioned:
        image = nib.load(tmp_path / case.image)
        base = base_volume(case.base).volume
        assert [lesion.diameter_mm for lesion in case.lesions] == sorted((lesion.diameter_mm for lesion in case.lesions), reverse=True)
        for lesion in case.lesions:
            assert (lesion.center_mm[0] > 0) == (lesion.side == "right")  # MNI space: x > 0 is the patient's right
            assert 9 <= lesion.diameter_mm <= 35 and lesion.lobe is not None
            centre = np.round(np.linalg.solve(image.affine, [*lesion.center_mm, 1])[:3]).astype(int)
            base_centre = np.round(base.world_to_voxel(lesion.center_mm)).astype(int)
            if lesion.appearance != "ring":  # a ring's centre may sit where rim and core blend back to the tissue
                assert abs(float(image.dataobj[tuple(centre)]) - float(base.data[tuple(base_centre)])) > 0.1 * np.percentile(base.data, 99)
        qa = {pair.topic: pair.answer for pair in case.qa}
        assert qa["count"] == ("one", "two", "three")[len(case.lesions) - 1]
        assert qa["side"] == (case.lesion.side if len({lesion.side for lesion in case.lesions}) == 1 else "both")
    assert read_cases(tmp_path / "cases.jsonl") == cases


@pytest.mark.slow
def test_heads_outside_mni_space_get_lobes_and_a_brain_mask_through_registration():
    """pycortex ships no brain mask and no atlas: both come from Colin27 through the registration. Its lesions'
    lobes agree with where they lie (frontal lesions in front of occipital ones), and its brain is a head's brain."""
    base = base_volume("mr-t1-pycortex")
    brain_ml = base.brain.sum() * np.prod(base.volume.spacing) / 1000
    assert 900 < brain_ml < 1900
    assert base.aal is not None and (base.aal[base.brain] > 0).mean() > 0.3
    lobes = {lobe_of(base.aal_names.get(int(label))) for label in np.unique(base.aal[base.aal > 0])}
    assert {"frontal", "temporal", "parietal", "occipital"} <= lobes
    y_of = {lobe: np.mean([base.volume.voxel_to_world(ijk)[1] for ijk in np.argwhere(np.isin(base.aal, [
        label for label, name in base.aal_names.items() if lobe_of(name) == lobe]))[::50]]) for lobe in ("frontal", "occipital")}
    assert y_of["frontal"] > y_of["occipital"] + 40  # RAS: y grows anterior


def test_a_ring_lesion_has_a_bright_rim_round_a_dark_core():
    image = np.full((40, 40, 40), 100.0, dtype=np.float32)
    image[0, 0, 0] = 0.0  # lesions never darken below the image's minimum
    region = np.ones_like(image, dtype=bool)
    lesion = insert_lesion(image, region, (1.0, 1.0, 1.0), LesionSpec(diameter_mm=20.0, pattern="ring", contrast=0.5),
                           np.random.default_rng(0))
    centre = np.asarray(lesion.center_voxel)
    rim = lesion.image[tuple(centre + [8, 0, 0])]  # 8 mm out on a 10 mm radius: in the rim
    core = lesion.image[tuple(centre)]
    assert rim > 120 and core < 90  # rim +50%, core -25% of the 99th percentile


# --- M3D-LaMed-compatible model ----------------------------------------------------------------


_TINY_VISION = dict(hidden_size=32, layers=2, heads=4, mlp_dim=64)  # M3D's layout and names, small widths for speed


def _tiny_llm() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


def _tiny_m3d() -> M3DLaMed:
    return M3DLaMed(M3DVisionConfig(**_TINY_VISION), _tiny_llm(), IMAGE_TOKEN_ID).eval()


# M3D-LaMed's published parameter names (LamedPhi3ForCausalLM: model.vision_tower = ViT3DTower whose
# .vision_tower is M3D's copy of MONAI's ViT without a classification head; model.mm_projector = 'spp'
# projector with projector = Sequential(Linear, GELU, Linear)), written out here rather than taken from the loader.
_VISION = "model.vision_tower.vision_tower."
_BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.out_proj.weight", "attn.out_proj.bias", "norm2.weight",
               "norm2.bias", "mlp.linear1.weight", "mlp.linear1.bias", "mlp.linear2.weight", "mlp.linear2.bias")
PUBLISHED_VISION_KEYS = [
    "model.vision_tower.vision_tower.cls_token",
    "model.vision_tower.vision_tower.patch_embedding.position_embeddings",
    "model.vision_tower.vision_tower.patch_embedding.patch_embeddings.1.weight",
    "model.vision_tower.vision_tower.patch_embedding.patch_embeddings.1.bias",
    "model.vision_tower.vision_tower.norm.weight",
    "model.vision_tower.vision_tower.norm.bias",
    *[f"model.vision_tower.vision_tower.blocks.{i}.{name}" for i in range(2) for name in _BLOCK_KEYS],
]
PUBLISHED_PROJECTOR_KEYS = ["model.mm_projector.projector.0.weight", "model.mm_projector.projector.0.bias",
                            "model.mm_projector.projector.2.weight", "model.mm_projector.projector.2.bias"]


def _reference_tower():
    """MONAI's own ViT with M3D's arguments (ViT3DTower in LaMed/src/model/multimodal_encoder/vit.py), random weights."""
    from monai.networks.nets import ViT

    torch.manual_seed(1)
    vit = ViT(in_channels=1, img_size=(32, 256, 256), patch_size=(4, 16, 16), hidden_size=32, mlp_dim=64, num_layers=2,
              num_heads=4, proj_type="perceptron", classification=True, spatial_dims=3).eval()
    for name, parameter in vit.named_parameters():
        torch.nn.init.normal_(parameter, mean=1.0 if name.endswith("norm1.weight") else 0.0, std=0.3)  # norms differ
    return vit


def _reference_features(vit, images: torch.Tensor) -> torch.Tensor:
    """M3D's patch features from MONAI's forward: the final LayerNorm's output without the cls token."""
    captured = []
    handle = vit.norm.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.inference_mode():
        vit(images)
    handle.remove()
    return captured[0][:, 1:]


def _reference_projection(state: dict[str, torch.Tensor], features: torch.Tensor, grid=(8, 16, 16)) -> torch.Tensor:
    """M3D's 'spp' projector by hand: 2x2x2 means over the patch grid, then Linear, GELU, Linear."""
    b, _, d = features.shape
    cells = features.reshape(b, grid[0] // 2, 2, grid[1] // 2, 2, grid[2] // 2, 2, d).mean(dim=(2, 4, 6)).reshape(b, -1, d)
    hidden = torch.nn.functional.gelu(cells @ state["model.mm_projector.projector.0.weight"].T
                                      + state["model.mm_projector.projector.0.bias"])
    return hidden @ state["model.mm_projector.projector.2.weight"].T + state["model.mm_projector.projector.2.bias"]


def _published_state(vit) -> dict[str, torch.Tensor]:
    """A checkpoint as M3D publishes it: the reference tower, a random projector, an independent LLM."""
    own = vit.state_dict()
    state = {key: own[key[len(_VISION):]].clone() for key in PUBLISHED_VISION_KEYS}
    generator = torch.Generator().manual_seed(2)
    for key, shape in zip(PUBLISHED_PROJECTOR_KEYS, [(32, 32), (32,), (32, 32), (32,)]):
        state[key] = torch.randn(shape, generator=generator) * 0.3
    state.update({key: tensor.clone() for key, tensor in _tiny_llm().state_dict().items()})  # HF's own names
    return state


def test_m3d_forward_splices_256_visual_tokens_and_generates():
    model = _tiny_m3d()
    ids = torch.tensor([[1, 2] + [IMAGE_TOKEN_ID] * 256 + [3]])
    image = torch.from_numpy(m3d_input(_blob_on_right()))[None]
    assert model(ids, image).logits.shape == (1, 259, 300)
    assert model.generate(ids, image, 4, pad_token_id=0).shape[1] == 4
    with pytest.raises(ModelError, match="256 image placeholders"):
        model(ids[:, :100], image)


def test_a_published_m3d_checkpoint_loads_strictly_and_matches_monai_and_m3d_projector():
    """Independent reference: MONAI's ViT as M3D builds it, saved under M3D's published names, must load with no
    missing, unexpected or mismatched key and give MONAI's own features (cls token dropped) and M3D's projection."""
    vit = _reference_tower()
    state = _published_state(vit)
    model = _tiny_m3d()
    report = load_m3d_checkpoint(model, state)
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert report.loaded == len(state)
    image = torch.rand(1, 1, 32, 256, 256, generator=torch.Generator().manual_seed(3))
    expected = _reference_features(vit, image)
    with torch.inference_mode():
        features = model.vision_tower(image)
        projected = model.mm_projector(features)
    assert features.shape == (1, 2048, 32) and float(expected.std()) > 0.1  # the tolerance below is meaningful
    assert torch.allclose(features, expected, rtol=0, atol=1e-5)
    reference_tokens = _reference_projection(state, expected)
    assert projected.shape == (1, 256, 32) and float(reference_tokens.std()) > 0.1
    assert torch.allclose(projected, reference_tokens, rtol=0, atol=1e-5)


def test_checkpoint_with_missing_or_mismatched_keys_names_them():
    model = _tiny_m3d()
    state = _published_state(_reference_tower())
    del state["model.mm_projector.projector.0.weight"]
    state["model.vision_tower.vision_tower.norm.weight"] = torch.zeros(7)
    with pytest.raises(ModelError, match=r"mm_projector\.projector\.0\.weight.*norm\.weight: \[7\]"):
        load_m3d_checkpoint(model, state)


# --- the project's VLM ---------------------------------------------------------------------


def _with_lesion(name: str, side: str, contrast: float, seed: int) -> Volume:
    """A base volume with one 20 mm lesion in the stated hemisphere (RAS: world x grows to the patient's right)."""
    base = base_volume(name)
    x = volume_world_x(base.volume.affine, np.indices(base.brain.shape).reshape(3, -1).T).reshape(base.brain.shape)
    hemisphere = base.brain & ((x > base.midline_x_mm + 6) if side == "right" else (x < base.midline_x_mm - 6))
    spec = LesionSpec(diameter_mm=20.0, polarity="hyper" if contrast > 0 else "hypo", contrast=abs(contrast))
    lesion = insert_lesion(base.volume.data, hemisphere, base.volume.spacing, spec, np.random.default_rng(seed))
    return Volume(lesion.image, base.volume.affine, base.volume.metadata)


@pytest.mark.slow
def test_weight_free_features_show_presence_and_side_on_a_held_out_base():
    """A threshold fitted on a training base (MNI152) separates lesion from none on held-out Colin27, and the
    odd-blob channel is largest on the lesion's side for a dark and a bright lesion (the first version's
    features were at chance on both)."""
    encoder = SymmetryGridEncoder()
    lesions = [("left", -0.4), ("right", 0.4)]

    def features(name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return encoder.features(base_volume(name).volume), [encoder.features(_with_lesion(name, side, contrast, seed))
                                                              for seed, (side, contrast) in enumerate(lesions)]

    normal, with_lesions = features("mr-t1-mni152")
    assert normal.shape == (12, 3, 2, 3)  # [C, z, x, y]; x cell 0 is the patient's left
    assert float(normal[6].max()) == 0.0 and float(encoder.features(base_volume("ct-head").volume)[6].min()) > 0.3  # air in HU: CT only
    threshold = (float(normal[0].max()) + min(float(f[0].max()) for f in with_lesions)) / 2
    normal, with_lesions = features("mr-t1-colin27")
    assert float(normal[0].max()) < threshold < min(float(f[0].max()) for f in with_lesions)
    for (side, _), grid in zip(lesions, with_lesions):
        assert ("left", "right")[int(grid[1].amax(dim=(0, 2)).argmax())] == side
        assert (float(left_minus_right(grid[None])[0, 1]) > 0) == (side == "left")  # the VLM's hemisphere token


def _lesions_at(centres_mm: list[tuple[float, float, float]], diameter_mm: float, head: str = "mr-t1-mni152") -> Volume:
    """A head in MNI space (MNI152, Colin27) at 2 mm with bright spheres centred on the given MNI points."""
    base = base_volume(head)
    image = base.volume.data
    for seed, centre in enumerate(centres_mm):
        offsets = np.indices(base.brain.shape).T - base.volume.world_to_voxel(centre)
        reach_mm = np.linalg.norm(offsets * np.asarray(base.volume.spacing), axis=-1).T
        region = reach_mm <= 0.7 * diameter_mm + 3  # just room for the lesion: insert_lesion keeps 0.7 diameters inside
        image = insert_lesion(image, region, base.volume.spacing, LesionSpec(diameter_mm=diameter_mm, contrast=0.5),
                              np.random.default_rng(seed)).image
    return Volume(image, base.volume.affine, base.volume.metadata)


@pytest.mark.slow
def test_blob_channels_say_where_the_largest_lesion_is_how_large_and_how_many():
    """Channels 7-11: a frontal lesion lies further forward than an occipital one, a lateral one further from the
    plane than a deep one; the diameter reads close to the lesion's; two lesions count two."""
    encoder = SymmetryGridEncoder()
    front, back = (encoder.features(_lesions_at([centre], 20.0)) for centre in [(30, 40, 20), (-25, -80, 10)])
    assert float(front[7, 0, 0, 0]) > float(back[7, 0, 0, 0]) + 0.3
    lateral, deep = (encoder.features(_lesions_at([centre], 16.0)) for centre in [(46, -20, 10), (16, -20, 10)])
    assert float(lateral[9, 0, 0, 0]) > float(deep[9, 0, 0, 0]) + 0.2
    assert 0.12 <= float(front[10, 0, 0, 0]) <= 0.30  # dm: a 20 mm lesion
    assert float(front[11, 0, 0, 0]) == 1.0
    two = encoder.features(_lesions_at([(30, 40, 20), (-30, -70, 10)], 20.0))
    assert float(two[11, 0, 0, 0]) == 2.0


@pytest.mark.slow
def test_normal_model_channels_say_how_unusual_the_brain_is_which_side_and_which_lobe():
    """Channels 12-22 on Colin27, which the normal model (normative, MNI152 + ITK T1) never saw: a left frontal and a
    right occipital lesion raise the margin over the lesion-free head, the strongest one-sided deviation is on the
    lesion's side and the lobe shares point at its lobe; a CT gets no normal-model channels."""
    encoder = NormalModelEncoder(fit_normal_model("normative", scans=("mr-t1-mni152", "mr-t1-itk")))
    normal = encoder.features(base_volume("mr-t1-colin27").volume)
    assert normal.shape == (23, 3, 2, 3) and torch.equal(normal[:12], SymmetryGridEncoder().features(base_volume("mr-t1-colin27").volume))
    assert float(normal[12, 0, 0, 0]) > 0.35  # the template fit of a well-aligned head
    for centre, side, lobe in [((-30, 40, 20), "left", "frontal"), ((25, -80, 10), "right", "occipital")]:
        grid = encoder.features(_lesions_at([centre], 25.0, head="mr-t1-colin27"))
        assert float(grid[13, 0, 0, 0]) > float(normal[13, 0, 0, 0]) + 0.2
        on_side = ("left", "right").index(side)
        assert float(grid[14, 0, on_side, 0]) > float(grid[14, 0, 1 - on_side, 0])
        assert LOBES[int(grid[16:21, 0, 0, 0].argmax())] == lobe
    assert not encoder.features(base_volume("ct-head").volume)[12:].any()


def test_a_model_trained_on_older_features_is_refused_with_the_remedy(tmp_path):
    VLMConfig(encoder="symmetry-grid", feature_dim=7, grid=(3, 2, 3), llm_folder="unused").save(tmp_path)
    with pytest.raises(ModelError, match="older version.*scanchat vlm train"):
        load_vlm(tmp_path)


def test_presence_token_reads_the_largest_finding_value_wherever_it_is(tmp_path):
    """The presence token sees how far the largest asymmetry stands above the head's own level, not where it lies nor
    the head's other channels;
    the hemisphere token sees the side of a finding but not a head lit brighter on one side. A model folder from
    before these tokens loads without them."""
    projector = VisualProjector(7, 16, cells=18, hemisphere_token=True, presence_channels=(0,), hemisphere_channels=(0, 1, 2, 3)).eval()
    normal = torch.rand(1, 7, 3, 2, 3) * 0.1
    normal[0, 0] = 0.05  # the same asymmetry in every cell, so moving the lesion leaves the median where it was
    left, right = normal.clone(), normal.clone()
    left[0, 0, 0, 0, 0] = right[0, 0, 2, 1, 2] = 1.0
    lit_from_the_left = left.clone()
    lit_from_the_left[0, 4:, :, 0] += 1.0  # intensity, height and air channels of the left half
    more_asymmetric_head = left.clone()
    more_asymmetric_head[0, 0] += 0.2  # every cell: a head less symmetric than another, not a finding
    with torch.no_grad():
        tokens = {name: projector(grid)[0] for name, grid in
                  [("normal", normal), ("left", left), ("right", right), ("lit", lit_from_the_left), ("head", more_asymmetric_head)]}
    assert tokens["left"].shape == (20, 16)
    presence, hemisphere = -1, -2
    assert torch.allclose(tokens["left"][presence], tokens["right"][presence])
    assert torch.allclose(tokens["left"][presence], tokens["lit"][presence])
    assert torch.allclose(tokens["left"][presence], tokens["head"][presence], atol=1e-5)
    assert not torch.allclose(tokens["left"][presence], tokens["normal"][presence], atol=1e-4)
    assert not torch.allclose(tokens["left"][hemisphere], tokens["right"][hemisphere], atol=1e-4)
    assert torch.allclose(tokens["left"][hemisphere], tokens["lit"][hemisphere])
    VLMConfig(encoder="symmetry-grid", feature_dim=7, grid=(3, 2, 3), presence_channels=(0,)).save(tmp_path)
    assert VLMConfig.load(tmp_path).visual_tokens == 20
    saved = json.loads((tmp_path / "vlm_config.json").read_text())
    del saved["presence_channels"]
    (tmp_path / "vlm_config.json").write_text(json.dumps(saved))
    assert VLMConfig.load(tmp_path).presence_channels == () and VLMConfig.load(tmp_path).visual_tokens == 19


def test_gpu_quantization_on_a_cpu_machine_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelError, match="CUDA"):
        load_llm("unused", "4bit")


def test_answer_only_loss_of_a_left_padded_batch_equals_each_example_alone():
    """The training loss (logits at answer positions only, left padding) is the plain causal-LM loss."""
    from assistant.vlm.model import ScanChatVLM, VLMConfig, load_llm, prompt_text
    from assistant.vlm.train import Example, collate, default_llm_folder

    torch.manual_seed(0)
    folder = default_llm_folder(get_settings())
    _, tokenizer = load_llm(folder)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2)).eval()
    model = ScanChatVLM(VLMConfig(encoder="symmetry-grid", feature_dim=7, grid=(3, 2, 3), llm_folder=folder), llm, tokenizer).eval()
    tokens = model.config.visual_tokens
    examples = [Example("a", "presence", prompt_text("Is there a focal lesion in this scan?", tokens), "yes"),
                Example(None, "tool choice", prompt_text("what is 'stroke' in French?", 0), '{"tool": "lookup_term"}'),
                Example("b", "size", prompt_text("How large is it?", tokens), "About 21 mm in diameter.")]
    features = {"a": torch.randn(7, 3, 2, 3), "b": torch.randn(7, 3, 2, 3)}
    batch = collate(examples, tokenizer, features)
    assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][:, 0] == 0).any()  # left-padded
    assert batch["grids"].shape[0] == 2  # a tool request made without a scan shows none
    with torch.no_grad():
        loss = model.answer_loss(**batch)
        total, tokens = 0.0, 0
        for example in examples:
            alone = collate([example], tokenizer, features)
            out = model.llm(inputs_embeds=model.input_embeddings(alone["input_ids"], alone["grids"]), labels=alone["labels"])
            count = int((alone["labels"] != -100).sum())
            total, tokens = total + float(out.loss) * count, tokens + count
    assert float(loss) == pytest.approx(total / tokens, rel=1e-4)


def test_the_vlms_tool_decisions_are_the_banks_in_short_prompts():
    from assistant.choosers import NO_TOOL, example_bank
    from assistant.vlm.acting import decisions_for, tool_schemas

    schemas = tool_schemas()
    bank = example_bank()
    decisions = decisions_for(bank, schemas)
    choices = [d for d in decisions if d.topic == "tool choice"]
    assert [json.loads(d.answer)["tool"] for d in choices] == [e.tool for e in bank]
    menu = ", ".join([*sorted(schemas), NO_TOOL])
    assert all(d.prompt.endswith(f"One of: {menu}.") for d in choices)
    with_arguments = [e for e in bank if e.arguments and schemas.get(e.tool, {}).get("properties")]
    filled = [d for d in decisions if d.topic == "tool arguments"]
    assert [json.loads(d.answer) for d in filled] == [e.arguments for e in with_arguments] and filled
    for decision, example in zip(filled, with_arguments):
        assert example.text.strip() in decision.prompt and all(name in decision.prompt for name in schemas[example.tool]["properties"])
        assert decision.with_scan == (example.scan is not None)
    follow_up = next(d for d, e in zip(choices, bank) if e.previous)
    assert follow_up.prompt.startswith("Earlier request: ")
    assert len(max((d.prompt for d in decisions), key=len)) < 1500  # short: a CPU can train on thousands of them


def test_a_volume_is_encoded_once_per_volume_while_it_lives():
    from assistant.vlm.backends import VisionChatModel

    class Counting(VisionChatModel):
        def prepare(self, volume):
            self.calls += 1
            return float(volume.data.sum())

    model = Counting(get_settings())
    model.calls = 0
    first, second = _blob_on_right(), _volume(np.ones((40, 48, 36)))
    assert model.prepared(first) == model.prepared(first) and model.calls == 1
    assert model.prepared(second) == float(second.data.sum()) and model.calls == 2  # another scan is its own
    del first
    import gc

    gc.collect()
    assert len(model._prepared) == 1  # a closed scan's features go with it


def test_only_a_model_that_decides_itself_can_be_the_vlm_chooser():
    from assistant.choosers import make_chooser
    from assistant.models.base import ChatModel

    class TextOnly(ChatModel):
        name = "text-only"

        def stream(self, messages, **kwargs):
            yield "{}"

    with pytest.raises(ValueError, match="decides tools itself.*text-only does not"):
        make_chooser("vlm", TextOnly())


@pytest.mark.slow
def test_a_vlm_trained_on_the_tool_bank_chooses_and_fills_arguments_itself_looking_at_the_scan(tmp_path):
    from assistant.agent import Agent
    from assistant.session import ScanSession
    from assistant.vlm.backends import ScanChatVLMChatModel
    from assistant.vlm.train import train

    data = tmp_path / "data"
    generate_cases(data, cases_per_base=2, seed=1, bases=("mr-t1-mni152",))
    settings = get_settings().model_copy(update={"llm": "smollm2-135m", "tool_chooser": "vlm"})
    summary = train(data, tmp_path / "vlm", encoder="symmetry-grid", align_steps=1, tune_steps=2, batch_size=2, tool_bank=True,
                    settings=settings)
    assert summary["tool_decisions"] > 1000 and summary["decisions_per_batch"] == 1
    model = ScanChatVLMChatModel(tmp_path / "vlm", settings)
    assert model.decider is model
    session = ScanSession()
    session.volume = _blob_on_right()
    agent = Agent(model, session, settings)
    chosen = agent.choose_tool([Message(role="user", content="how far apart are (0, 0, 0) and (10, 0, 0) in mm?")])
    assert chosen in [*agent.tools, "none"] and session.volume in model._prepared  # it decided looking at the scan
    schema = agent.tools["measure_distance"].args_schema.model_json_schema()
    arguments = model.fill_arguments("how far apart are (0, 0, 0) and (10, 0, 0) in mm?", None, "measure_distance", schema,
                                     session.volume)
    assert isinstance(arguments, dict) and set(schema.get("required", [])) <= set(arguments)  # held to the schema


@pytest.mark.slow
def test_trained_vlm_answers_from_the_volume_and_falls_back_on_a_2d_image(tmp_path):
    from assistant.vlm.backends import ScanChatVLMChatModel, load_vision_model_or_text
    from assistant.vlm.train import train

    data = tmp_path / "data"
    generate_cases(data, cases_per_base=2, seed=1, bases=("mr-t1-mni152",))
    settings = get_settings().model_copy(update={"llm": "smollm2-135m"})  # the small text model takes over on fallback
    summary = train(data, tmp_path / "vlm", encoder="symmetry-grid", align_steps=2, tune_steps=2, batch_size=2, settings=settings)
    assert summary["tune_loss_first_last"][0] > 0
    model = ScanChatVLMChatModel(tmp_path / "vlm", settings)
    answer = "".join(model.stream([Message(role="user", content="Is there a focal lesion in this scan?")],
                                  volume=_blob_on_right(), max_new_tokens=4))
    assert answer and model.last_looked_at_volume and model.last_usage.completion_tokens > 0
    flat = _volume(np.random.default_rng(0).normal(size=(64, 64, 2)))
    text = "".join(model.stream([Message(role="user", content="Describe this scan.")], volume=flat, max_new_tokens=4))
    assert text and not model.last_looked_at_volume and "at least 8" in model.last_volume_note
    other: dict = {}  # another user's turn on the same model, in its own thread, meanwhile

    def other_turn() -> None:
        "".join(model.stream([Message(role="user", content="Is there a lesion?")], volume=_blob_on_right(), max_new_tokens=4))
        other.update(looked=model.last_looked_at_volume, note=model.last_volume_note)

    thread = threading.Thread(target=other_turn)
    thread.start()
    thread.join()
    assert other == {"looked": True, "note": None}
    assert not model.last_looked_at_volume and "at least 8" in model.last_volume_note  # this turn's flags stay
    fallback, note = load_vision_model_or_text(f"m3d:{tmp_path / 'missing'}", settings)
    assert not fallback.sees_volumes and "does not exist" in note
    # an evaluator's run says which turns the VLM answered looking at the scan: small talk is worded by the model,
    # a measured fact is rendered from the tool's field
    from evals.harness.loading import load_scenarios
    from evals.harness.metrics import compute_metrics
    from evals.harness.runner import EvalRunner

    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "look.yaml").write_text("name: look-then-measure\nscan: {sample: mr-t1-mni152}\nturns:\n"
                                                  "  - user: hello, thanks for your help today\n"
                                                  "  - user: how thick are the slices?\n")
    results = EvalRunner(model, settings).run(load_scenarios(tmp_path / "suite"))
    greeting, thickness = results[0].turns
    assert greeting.looked_at_volume and greeting.answer, greeting
    assert not thickness.looked_at_volume and [call.name for call in thickness.tool_calls] == ["describe_scan"]
    assert compute_metrics(results).answers_looking_at_volume == 1
