"""describe_scan, probe_intensity and measure_distance on real scans."""

import numpy as np
import pytest

from assistant.scans.samples import load_sample
from assistant.session import ScanSession
from tools import build_tools
from tools.base import ToolError
from tools.describe_scan import describe_scan
from tools.measure_distance import MeasureDistanceArgs, measure_distance
from tools.probe_intensity import ProbeIntensityArgs, probe_intensity


@pytest.fixture(scope="module")
def ct():
    return load_sample("ct-head")


@pytest.fixture(scope="module")
def mr():
    return load_sample("mr-t1-itk")


def test_describe_ct_reports_geometry_from_the_file(ct):
    d = describe_scan(ct)
    assert d.modality == "CT"
    assert d.dimensions == ct.shape
    assert d.number_of_slices == ct.shape[2]
    assert d.slice_thickness_mm == pytest.approx(1.5, abs=0.01)  # InVesalius head CT: 1.5 mm slices
    assert d.field_of_view_mm[2] == pytest.approx(ct.shape[2] * 1.5, abs=0.1)
    assert d.intensity.unit == "HU"
    assert d.intensity.minimum <= -1000 and d.intensity.maximum > 1000  # air and bone
    assert "1.50 mm" in d.summary()


def test_describe_mr_uses_arbitrary_units(mr):
    d = describe_scan(mr)
    assert d.modality == "MR"
    assert d.intensity.unit == "a.u."
    assert d.spacing_mm == pytest.approx(mr.spacing, abs=1e-3)


def test_probe_centre_reads_the_centre_voxel(ct):
    result = probe_intensity(ct, ProbeIntensityArgs())
    assert result.voxel == ct.center_voxel
    assert result.value == pytest.approx(float(ct.data[ct.center_voxel]), abs=0.01)


def test_probe_corner_of_ct_is_air(ct):
    result = probe_intensity(ct, ProbeIntensityArgs(point=[0, 0, 0], radius_mm=3))
    assert result.stats.mean < -900  # the corner of a head CT is air


def test_probe_in_mm_matches_voxel_probe(ct):
    voxel = [40, 60, 30]
    world = ct.voxel_to_world(voxel).tolist()
    by_mm = probe_intensity(ct, ProbeIntensityArgs(point=world, units="mm"))
    by_voxel = probe_intensity(ct, ProbeIntensityArgs(point=voxel))
    assert by_mm.voxel == by_voxel.voxel == tuple(voxel)
    assert by_mm.value == by_voxel.value


def test_probe_box_statistics(mr):
    box = [10, 10, 10, 20, 20, 20]
    result = probe_intensity(mr, ProbeIntensityArgs(box=box))
    expected = mr.data[10:21, 10:21, 10:21]
    assert result.voxels == expected.size
    assert result.stats.mean == pytest.approx(float(expected.mean()), abs=0.01)


def test_probe_outside_the_scan_is_a_clear_error(ct):
    with pytest.raises(ToolError, match="outside the scan"):
        probe_intensity(ct, ProbeIntensityArgs(point=[10_000, 0, 0]))


def test_distance_respects_anisotropic_spacing(ct):
    # 10 voxels along z at 1.5 mm is 15 mm; 10 voxels along x at ~0.96 mm is less.
    along_z = measure_distance(ct, MeasureDistanceArgs(point_a=[50, 50, 10], point_b=[50, 50, 20]))
    along_x = measure_distance(ct, MeasureDistanceArgs(point_a=[50, 50, 10], point_b=[60, 50, 10]))
    assert along_z.distance_mm == pytest.approx(10 * ct.spacing[2], abs=0.01)
    assert along_x.distance_mm == pytest.approx(10 * ct.spacing[0], abs=0.01)
    assert along_z.distance_mm != pytest.approx(along_x.distance_mm, abs=0.5)


def test_distance_in_mm_is_exact(ct):
    a, b = ct.voxel_to_world([20, 30, 40]), ct.voxel_to_world([50, 70, 60])
    result = measure_distance(ct, MeasureDistanceArgs(point_a=a.tolist(), point_b=b.tolist(), units="mm"))
    assert result.distance_mm == pytest.approx(float(np.linalg.norm(b - a)), abs=0.01)


def test_langchain_tools_return_typed_artifacts(ct):
    session = ScanSession()
    session.load(ct)
    tools = {t.name: t for t in build_tools(session)}
    message = tools["describe_scan"].invoke({"name": "describe_scan", "args": {}, "id": "1", "type": "tool_call"})
    assert message.artifact.dimensions == ct.shape
    assert "slice thickness 1.50 mm" in message.content
    assert tools["probe_intensity"].args_schema.model_json_schema()["properties"]["units"]["enum"] == ["voxel", "mm"]


def test_tools_without_a_scan_say_so():
    tools = {t.name: t for t in build_tools(ScanSession())}
    with pytest.raises(ToolError, match="No scan is loaded"):
        tools["describe_scan"].invoke({})


def test_distance_summary_and_finding_quote_the_measured_figures(ct):
    result = measure_distance(ct, MeasureDistanceArgs(point_a=[50, 50, 10], point_b=[50, 50, 20]))
    assert result.summary() == ("Distance between voxel [50, 50, 10] and voxel [50, 50, 20]: 15.0 mm "
                                "(offset x 0.0, y 0.0, z 15.0 mm).")  # 10 slices of 1.5 mm, straight up
    [finding] = result.findings({"point_a": [50, 50, 10]})
    assert (finding.what, finding.where, finding.source_tool) == ("distance", "from voxel [50, 50, 10] to voxel [50, 50, 20]",
                                                                  "measure_distance")
    assert [(q.value, q.unit) for q in finding.quantities] == [(15.0, "mm")] and finding.parameters == {"point_a": [50, 50, 10]}


def test_probe_summaries_and_findings_quote_the_value_or_the_mean(mr):
    voxel = probe_intensity(mr, ProbeIntensityArgs(point=[64, 30, 64]))
    value = float(mr.data[64, 30, 64])
    x, y, z = mr.voxel_to_world([64, 30, 64])
    assert value > 0 and voxel.summary().startswith(f"Intensity at voxel [64, 30, 64] ({x:.1f}, {y:.1f}, {z:.1f} mm): "
                                                    f"{value:.1f} a.u.")
    [finding] = voxel.findings({})
    assert (finding.what, finding.where, finding.quantities[0].value) == ("intensity", "voxel [64, 30, 64]", value)
    box = probe_intensity(mr, ProbeIntensityArgs(box=[54, 20, 54, 64, 30, 64]))
    expected = mr.data[54:65, 20:31, 54:65]
    assert expected.std() > 0 and box.summary() == (f"Intensity in the box (1331 voxels): mean {expected.mean():.1f} a.u., std {expected.std():.1f}, "
                             f"min {expected.min():.1f}, max {expected.max():.1f}, median {np.median(expected):.1f}.")
    [finding] = box.findings({"box": [54, 20, 54, 64, 30, 64]})
    assert finding.what == "mean intensity (box)" and finding.where == "box [54, 20, 54, 64, 30, 64]"
    assert finding.quantities[0].value == pytest.approx(float(expected.mean()), abs=0.01)
    sphere = probe_intensity(mr, ProbeIntensityArgs(point=[60, 60, 60], radius_mm=3))
    assert "Intensity in the sphere around voxel [60, 60, 60]" in sphere.summary()
    assert sphere.findings({})[0].what == "mean intensity (sphere)"


def test_scan_description_findings_are_the_technique_figures(ct):
    description = describe_scan(ct)
    findings = {f.what: [(q.value, q.unit) for q in f.quantities] for f in description.findings({})}
    assert findings == {
        "CT (NIfTI)": [],
        "slice thickness": [(1.5, "mm")],
        "number of slices": [(float(ct.shape[2]), "slices")],
        "field of view": [(v, "mm") for v in description.field_of_view_mm],
    }
    assert description.field_of_view_mm == tuple(round(n * s, 1) for n, s in zip(ct.shape, ct.spacing))
    summary = description.summary()
    assert f"dimensions {ct.shape[0]} x {ct.shape[1]} x {ct.shape[2]} voxels, {ct.shape[2]} axial slices" in summary
    assert "orientation RAS" in summary


def test_description_of_a_hand_built_volume():
    """13 x 13 x 6 voxels of 0.8 x 0.8 x 2.5 mm: field of view 10.4 x 10.4 x 15.0 mm, slices 2.5 mm thick."""
    from assistant.volume import Modality, ScanMetadata, Volume

    data = np.arange(13 * 13 * 6, dtype=np.float32).reshape(13, 13, 6)
    volume = Volume(data, np.diag([0.8, 0.8, 2.5, 1.0]), ScanMetadata(source_format="NumPy", modality=Modality.MR))
    description = describe_scan(volume)
    assert description.field_of_view_mm == (10.4, 10.4, 15.0) and description.slice_thickness_mm == 2.5
    assert (description.number_of_slices, description.voxel_count) == (6, 1014)
    assert (description.intensity.minimum, description.intensity.maximum, description.intensity.p50) == (0.0, 1013.0, 506.5)
    assert ("dimensions 13 x 13 x 6 voxels, 6 axial slices; voxel spacing 0.80 x 0.80 x 2.50 mm, slice thickness 2.50 mm; "
            "field of view 10.4 x 10.4 x 15.0 mm; orientation RAS; intensity 0.0 to 1013.0 a.u. (mean 506.5, median 506.5)"
            ) in description.summary()
