"""The UI's per-session plumbing without a browser: scans of any shape, private export folders that die with the
session, and an export failure that costs only the download (the browser suite drives the same code end to end)."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.config import Settings
from assistant.session import ToolRecord
from assistant.volume import Modality, ScanMetadata, Volume
from tools.segment import SegmentTool
from ui.app import PLANES, ScanChatApp, _slider


def _ct(shape: tuple[int, int, int], spacing=(0.7, 0.7, 5.0)) -> Volume:
    data = np.full(shape, -1000.0, np.float32)
    data[tuple(slice(s // 4, max(s // 4 + 1, 3 * s // 4)) for s in shape)] = 1200.0  # a block of bone
    return Volume(data, np.diag([*spacing, 1.0]), ScanMetadata(source_format="NumPy", modality=Modality.CT))


@pytest.fixture
def app(tmp_path) -> ScanChatApp:
    return ScanChatApp(Settings(cache_dir=tmp_path / "cache", ui_exports_dir=tmp_path / "exports"))


@pytest.mark.parametrize("shape", [(64, 64, 1), (64, 64, 2), (1, 64, 64), (64, 1, 64), (2, 3, 1), (200, 3, 150)])
def test_scans_of_any_shape_give_three_views_and_usable_sliders(app, shape):
    state = app.new_state()
    state.session.load(_ct(shape))
    state.cursor = {plane: 10_000 for plane in PLANES}  # a cursor left over from a bigger scan is clamped
    images = app.views(state, "bone", True)
    assert [image.ndim for image in images] == [3, 3, 3]
    for plane, image in zip(PLANES, images):
        assert image.shape[0] >= 1 and image.shape[1] >= 1, plane
    single = _slider(1, 0)
    assert single["maximum"] > single["minimum"] and single["interactive"] is False
    assert _slider(2, 1)["maximum"] == 1 and _slider(2, 1)["interactive"] is True


def _segmented(app: ScanChatApp):
    state = app.new_state()
    state.session.load(_ct((40, 40, 20), spacing=(1.0, 1.0, 2.0)))
    tool = SegmentTool(session=state.session)
    result = tool.execute(tool.args_schema(structure="bone"))
    state.session.records.append(ToolRecord(name="segment", arguments={"structure": "bone"}, result=result))
    return state


def test_downloads_live_in_a_private_per_session_folder_deleted_with_the_session(app):
    first, second = _segmented(app), _segmented(app)
    files, note = app.offer_downloads(first)
    other, _ = app.offer_downloads(second)
    assert note == "" and len(files) == 1 and files[0].endswith("bone.nii.gz")
    folder = app.settings.exports_dir / first.export_id
    assert all(str(folder) in f for f in files) and (folder.stat().st_mode & 0o777) == 0o700
    first.close()
    assert not folder.exists()
    assert all(__import__("os").path.exists(f) for f in other), "closing one session deleted another's files"


def test_an_export_failure_costs_the_download_not_the_chat(app, tmp_path):
    state = _segmented(app)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the export folder should be")
    state.exports_root = blocker
    files, note = app.offer_downloads(state)
    assert "could not be exported" in note
    assert files["value"] is None  # the download box is cleared, with the note beside it


def test_a_2d_nifti_opens_as_a_one_slice_volume_with_three_views(app, tmp_path):
    import nibabel as nib

    from assistant.scans.loading import load_scan

    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(48 * 32, dtype=np.float32).reshape(48, 32), np.diag([0.5, 0.5, 3.0, 1.0])), path)
    volume = load_scan(path)
    assert volume.shape == (48, 32, 1) and volume.spacing == pytest.approx((0.5, 0.5, 3.0))
    assert volume.data[47, 31, 0] == 48 * 32 - 1  # the same voxels, not a resampled copy
    state = app.new_state()
    state.session.load(volume)
    assert [image.ndim for image in app.views(state, "auto", True)] == [3, 3, 3]
