"""export-model end to end: zoo checkpoints in, bundles out, bad input refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from click.testing import CliRunner  # noqa: E402

from dnrt import semantics as S  # noqa: E402
from dnrt.bundle import load_bundle  # noqa: E402
from dnrt.cli import export_model_command, main  # noqa: E402
from dnrt.export.onnx_export import count_dense_nodes  # noqa: E402
from dnrt.models.zoo import build_generator  # noqa: E402

CONFIGS = {
    "official": {"in_channels": 3, "out_channels": 3, "features": 8, "residuals": 2, "affine": False},
    "cyclegan": {
        "input_nc": 3,
        "output_nc": 3,
        "ngf": 8,
        "n_blocks": 2,
        "norm": "instance",
        "affine": False,
        "use_dropout": False,
        "padding_type": "reflect",
        "bn_folded": False,
    },
    "cut": {
        "input_nc": 3,
        "output_nc": 3,
        "ngf": 8,
        "n_blocks": 2,
        "norm": "instance",
        "affine": False,
        "use_dropout": False,
        "padding_type": "reflect",
        "bn_folded": False,
        "antialias_down": True,
        "antialias_up": True,
        "down_filt_size": 3,
        "up_filt_size": 3,
    },
}


def save_checkpoint(
    tmp_path: Path, arch: str, wrap: str | None = None, **overrides
) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    module = build_generator(arch, {**CONFIGS[arch], **overrides}).eval()
    state = module.state_dict()
    path = tmp_path / f"{arch}.pth"
    torch.save({wrap: state} if wrap else state, path)
    return path, module


def run_cli(args: list[str]):
    return CliRunner().invoke(export_model_command, args, catch_exceptions=False)


@pytest.mark.parametrize("arch,wrap", [("official", None), ("cyclegan", "G_A"), ("cut", "netG")])
def test_export_detects_architecture_and_matches_pytorch(tmp_path: Path, arch: str, wrap: str | None) -> None:
    ckpt, module = save_checkpoint(tmp_path, arch, wrap)
    out = tmp_path / "model.dnrt"
    result = run_cli([str(ckpt), "-o", str(out), "--tile", "64", "--margin", "16", "--quiet"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    m = bundle.manifest
    assert m.architecture == arch and m.source["sha256"] and len(m.layers) == 2 * 2 + 5
    assert count_dense_nodes(bundle.dense_graph) == 9
    # The stats graph in IN flavour is the original generator, run by ONNX Runtime.
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 3, 96, 96)).astype(np.float32)
    sess = ort.InferenceSession(str(bundle.stats_graph), providers=["CPUExecutionProvider"])
    image, _, _ = sess.run(None, {"tiles": x, "collect_params": S.collect_flavour("in").as_array()})
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(image, want, atol=1e-4)


@pytest.mark.parametrize("features,residuals,nodes", [(64, 9, 23), (16, 3, 11)])
def test_official_layouts_give_expected_dense_norm_nodes(
    tmp_path: Path, features: int, residuals: int, nodes: int
) -> None:
    ckpt, _ = save_checkpoint(tmp_path, "official", features=features, residuals=residuals)
    out = tmp_path / "o.dnrt"
    result = run_cli([str(ckpt), "-o", str(out), "--quiet"] + (["--no-validate"] if features == 64 else []))
    assert result.exit_code == 0, result.output
    assert count_dense_nodes(out / "dense.onnx") == nodes
    m = load_bundle(out).manifest
    assert (m.tile, m.margin) == (512, 16) and m.config["features"] == features


def test_json_summary_and_info(tmp_path: Path) -> None:
    ckpt, _ = save_checkpoint(tmp_path, "official")
    out = tmp_path / "o.dnrt"
    result = run_cli([str(ckpt), "-o", str(out), "--tile", "64", "--json"])
    assert result.exit_code == 0
    import json

    summary = json.loads(result.stdout)
    assert summary["dense_norm_nodes"] == 9 and summary["validation"]["dense_image"] <= 1e-4
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0 and "official" in info.output and "9 (" in info.output
    assert "collect.onnx" in info.output and "older export" not in info.output
    (out / "collect.onnx").unlink()  # what a bundle from an older export looks like
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0 and "no collect.onnx" in info.output


def one_line_error(result, fragment: str) -> None:
    """Exactly one error line (progress lines may precede it), no traceback."""
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert fragment in errors[0], errors[0]


def test_bad_inputs_get_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out.dnrt"
    one_line_error(run_cli([str(tmp_path / "missing.pth"), "-o", str(out)]), "not found")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    one_line_error(run_cli([str(empty), "-o", str(out)]), "empty")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(2048))
    one_line_error(run_cli([str(junk), "-o", str(out)]), "junk.pth")
    ckpt, _ = save_checkpoint(tmp_path, "official")
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    one_line_error(run_cli([str(truncated), "-o", str(out)]), "trunc.pth")
    one_line_error(run_cli([str(ckpt), "-o", str(out), "--tile", "60", "--margin", "3"]), "even")
    one_line_error(run_cli([str(ckpt), "-o", str(tmp_path / "no" / "dir" / "o.dnrt")]), "does not exist")
    one_line_error(
        run_cli([str(ckpt), "-o", str(out), "--arch", "unet_512"]), "unknown generator architecture"
    )
    one_line_error(run_cli([str(ckpt), "-o", str(out), "--opset", "17"]), "opset")
    state = torch.load(ckpt, weights_only=True)
    state["block1.0.bias"] = state["block1.0.bias"][:5]  # 5 biases for 8 filters
    torch.save(state, tmp_path / "shape.pth")
    one_line_error(run_cli([str(tmp_path / "shape.pth"), "-o", str(out)]), "shape")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "dnrt-tmp" in p.name]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_carrying_pickle_is_refused_in_a_real_process(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"block1.0.weight": torch.zeros(1), "x": _Exploit(marker)}, evil)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from dnrt.cli import export_model_main; export_model_main()",
            str(evil),
            "-o",
            str(tmp_path / "o.dnrt"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: refusing to load") and proc.stderr.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "o.dnrt").exists()


def test_existing_bundle_needs_overwrite(tmp_path: Path) -> None:
    ckpt, _ = save_checkpoint(tmp_path, "official")
    out = tmp_path / "o.dnrt"
    assert run_cli([str(ckpt), "-o", str(out), "--tile", "64", "--quiet", "--no-validate"]).exit_code == 0
    before = (out / "manifest.json").read_text()
    one_line_error(run_cli([str(ckpt), "-o", str(out), "--tile", "64"]), "--overwrite")
    assert (out / "manifest.json").read_text() == before
    result = run_cli([str(ckpt), "-o", str(out), "--tile", "128", "--quiet", "--overwrite", "--no-validate"])
    assert result.exit_code == 0 and load_bundle(out).manifest.tile == 128


def test_build_engine_refuses_a_geometry_the_model_cannot_take(small_bundle_path: Path) -> None:
    """The geometry check comes before TensorRT is even looked for: a margin that gives odd
    norm-layer maps is the same one-line error trt-translate gives, on any machine."""
    result = CliRunner().invoke(main, ["build-engine", str(small_bundle_path), "--margin", "3"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "even" in lines[0] or "multiple" in lines[0], lines[0]
    assert "TensorRT" not in lines[0]
