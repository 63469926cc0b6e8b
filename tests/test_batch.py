"""``dnrt batch`` in one process: outputs, names, the ledger and resume, failures, bad input.

The Ray mode is tested in test_batch_ray.py; everything here runs without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
tifffile = pytest.importorskip("tifffile")

from fakes import write_toy_bundle  # noqa: E402

from dnrt.batch.cli import batch_command  # noqa: E402
from dnrt.batch.jobs import make_jobs, slides_from_arguments, slides_from_list  # noqa: E402
from dnrt.batch.ledger import LEDGER_NAME, Ledger, read_records  # noqa: E402
from dnrt.errors import DnrtError  # noqa: E402
from dnrt.runtime.cli import translate_command  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_bundle(tmp_path_factory.mktemp("bundle") / "toy")


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 70 * np.sin(yy[..., None] / 11.0 + np.array([0.0, 1.0, 2.0])) * np.cos(xx[..., None] / 7.0)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def write_slides(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"slide{i}.tif"
        tifffile.imwrite(path, _rgb(h, w, i), photometric="rgb", tile=(32, 32), compression="zlib")
        paths.append(path)
    return paths


def run_batch(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(batch_command, [str(a) for a in args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def reference(tmp: Path, slide: Path, bundle: Path, *options: str) -> bytes:
    """What trt-translate writes for ``slide`` with ``options``."""
    out = tmp / f"ref-{slide.stem}-{abs(hash(options))}.tif"
    if not out.exists():
        result = CliRunner().invoke(
            translate_command, [str(slide), "-o", str(out), "-m", str(bundle), "-q", *options]
        )
        assert result.exit_code == 0, result.stderr
    return out.read_bytes()


def leftovers(folder: Path) -> list[str]:
    """Temporaries (complete or partial) anywhere under ``folder``."""
    return [p.name for p in folder.rglob("*") if ".dnrt-" in p.name]


OPTS = ("--backend", "ort", "--mode", "dn")


# --------------------------------------------------------------------------- results


def test_batch_outputs_equal_trt_translate_and_summary(tmp_path: Path, bundle: Path) -> None:
    slides = write_slides(tmp_path / "in", [(70, 90), (40, 64), (100, 50)])
    out = tmp_path / "out"
    code, stdout, stderr = run_batch(*slides, "--out-dir", out, "-m", bundle, *OPTS, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert (summary["slides"], summary["done"], summary["skipped"], summary["failed"]) == (3, 3, 0, 0)
    assert summary["tile_runs"] > 0 and summary["workers"] == 1
    for slide in slides:
        assert (out / f"{slide.stem}.tif").read_bytes() == reference(tmp_path, slide, bundle, *OPTS)
    assert sorted(p.name for p in out.iterdir()) == sorted([LEDGER_NAME] + [f"{s.stem}.tif" for s in slides])


def test_translation_options_reach_every_slide(tmp_path: Path, bundle: Path) -> None:
    slides = write_slides(tmp_path / "in", [(70, 90), (40, 64)])
    out = tmp_path / "out"
    opts = ("--backend", "ort", "--mode", "KIN", "--kin-kernel", "3", "--compression", "none", "--tile", "32")
    code, _, stderr = run_batch(*slides, "--out-dir", out, "-m", bundle, *opts, "-q")
    assert code == 0, stderr
    for slide in slides:
        data = (out / f"{slide.stem}.tif").read_bytes()
        assert data == reference(tmp_path, slide, bundle, *opts)
        assert data != reference(tmp_path, slide, bundle, *OPTS)  # the options did change something


def test_every_trt_translate_option_is_a_batch_option() -> None:
    """An option added to trt-translate must work in dnrt batch: the same option, same default."""
    from dnrt.runtime.cli import options_from_cli
    from dnrt.runtime.options import TranslateOptions

    batch = {p.name: p for p in batch_command.params}
    assert len(batch) == len(batch_command.params), "a batch option shadows a trt-translate one"
    # Per-file paths (the input, the output, the tissue mask PNG) are the batch's own business:
    # one value cannot serve every slide.
    per_file = ("input", "output", "tissue_mask")
    shared = [p for p in translate_command.params if p.name not in per_file]
    for param in shared:
        assert param.name in batch and batch[param.name].opts == param.opts, param.name
    parsed_batch = batch_command.make_context("batch", ["--out-dir", "o", "-m", "b"]).params
    parsed_translate = translate_command.make_context("translate", ["i.tif", "-o", "o.tif", "-m", "b"]).params
    for param in shared:
        assert parsed_batch[param.name] == parsed_translate[param.name], param.name  # same default
    settings = {p.name: parsed_batch[p.name] for p in shared if p.name not in ("model", "quiet", "as_json")}
    assert options_from_cli(settings) == TranslateOptions()


# --------------------------------------------------------------------------- names


def test_name_template_fields_and_subfolders(tmp_path: Path, bundle: Path) -> None:
    slides = write_slides(tmp_path / "in", [(40, 40), (40, 48)])
    out = tmp_path / "out"
    code, _, stderr = run_batch(
        *slides, "--out-dir", out, "-m", bundle, *OPTS, "-q", "--name", "{parent}/{index:03d}-{stem}.png"
    )
    assert code == 0, stderr
    assert sorted(p.name for p in (out / "in").iterdir()) == ["000-slide0.png", "001-slide1.png"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("../{stem}.tif", "leaves the output folder"),
        ("a/../../{stem}.tif", "leaves the output folder"),
        ("/abs/{stem}.tif", "is absolute"),
        ("{stem}.exe", "unsupported suffix"),
        ("{nope}.tif", "unknown field 'nope'"),
        ("{stem.tif", "output name template"),
        ("same.tif", "both write 'same.tif'"),
    ],
)
def test_bad_names_refused_before_any_work(tmp_path: Path, bundle: Path, template: str, message: str) -> None:
    slides = write_slides(tmp_path / "in", [(40, 40), (40, 48)])
    out = tmp_path / "out"
    code, stdout, stderr = run_batch(*slides, "--out-dir", out, "-m", bundle, *OPTS, "--name", template)
    assert code == 1, stderr
    assert stderr.startswith("error: ") and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()  # refused before the output folder was even created


def test_duplicate_stems_from_two_folders_refused(tmp_path: Path) -> None:
    a = write_slides(tmp_path / "a", [(40, 40)])[0]
    b = write_slides(tmp_path / "b", [(40, 40)])[0]
    with pytest.raises(DnrtError, match="both write 'slide0.tif'"):
        make_jobs(slides_from_arguments([a, b]), tmp_path / "out")
    jobs = make_jobs(slides_from_arguments([a, b]), tmp_path / "out", "{parent}-{stem}.tif")
    assert [j.name for j in jobs] == ["a-slide0.tif", "b-slide0.tif"]


def test_symlink_inside_out_dir_cannot_lead_out(tmp_path: Path) -> None:
    slide = write_slides(tmp_path / "in", [(40, 40)])[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(DnrtError, match="leaves the output folder"):
        make_jobs(slides_from_arguments([slide]), out, "link/{stem}.tif")


# --------------------------------------------------------------------------- list files


def test_list_file_with_header_relative_paths_and_output_column(tmp_path: Path, bundle: Path) -> None:
    slides = write_slides(tmp_path / "data" / "in", [(40, 40), (48, 40)])
    listing = tmp_path / "data" / "list.csv"
    listing.write_text("path,output,case\nin/slide0.tif,,c7\nin/slide1.tif,special.tif,c8\n")
    out = tmp_path / "out"
    code, _, stderr = run_batch(
        "--list", listing, "--out-dir", out, "-m", bundle, *OPTS, "-q", "--name", "{case}.tif"
    )
    assert code == 0, stderr
    assert sorted(p.name for p in out.glob("*.tif")) == ["c7.tif", "special.tif"]
    assert (out / "special.tif").read_bytes() == reference(tmp_path, slides[1], bundle, *OPTS)


def test_list_columns_are_fields_and_win_over_computed_ones(tmp_path: Path) -> None:
    write_slides(tmp_path / "in", [(40, 40), (40, 40)])
    listing = tmp_path / "list.csv"
    listing.write_text("path,index,stem\nin/slide0.tif,7,a\nin/slide1.tif,8,b\n")
    jobs = make_jobs(slides_from_list(listing), tmp_path / "out", "{index}-{stem}.tif")
    assert [j.name for j in jobs] == ["7-a.tif", "8-b.tif"]
    with pytest.raises(DnrtError, match="output name template"):
        make_jobs(slides_from_list(listing), tmp_path / "out", "{index:05d}.tif")  # a string column


def test_plain_list_one_path_a_line(tmp_path: Path) -> None:
    write_slides(tmp_path / "in", [(40, 40), (40, 40)])
    listing = tmp_path / "list.txt"
    listing.write_text("in/slide0.tif\n\nin/slide1.tif\n")
    assert [s.path.name for s in slides_from_list(listing)] == ["slide0.tif", "slide1.tif"]


def test_list_with_missing_paths_is_one_error_line_and_nothing_written(tmp_path: Path, bundle: Path) -> None:
    write_slides(tmp_path / "in", [(40, 40)])
    listing = tmp_path / "list.csv"
    listing.write_text("path\nin/slide0.tif\nin/gone.tif\nin/also-gone.tif\n")
    out = tmp_path / "out"
    code, _, stderr = run_batch("--list", listing, "--out-dir", out, "-m", bundle, *OPTS)
    assert code == 1
    assert (
        stderr.strip()
        == f"error: list.csv row 3: slide '{tmp_path / 'in' / 'gone.tif'}' does not exist (and 1 more missing)"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "names no slides"), ("path\n", "names no slides"), ("path,x\n,1\n", "is empty")],
)
def test_bad_list_files(tmp_path: Path, bundle: Path, content: str, message: str) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text(content)
    code, _, stderr = run_batch("--list", listing, "--out-dir", tmp_path / "out", "-m", bundle)
    assert code == 1 and message in stderr and len(stderr.strip().splitlines()) == 1


def test_slides_and_list_together_is_a_usage_error(tmp_path: Path, bundle: Path) -> None:
    slide = write_slides(tmp_path / "in", [(40, 40)])[0]
    listing = tmp_path / "list.csv"
    listing.write_text(f"{slide}\n")
    code, _, stderr = run_batch(slide, "--list", listing, "--out-dir", tmp_path / "out", "-m", bundle)
    assert code == 2 and "not both" in stderr


# --------------------------------------------------------------------------- failures


def test_corrupt_slide_recorded_and_the_batch_goes_on(tmp_path: Path, bundle: Path) -> None:
    good = write_slides(tmp_path / "in", [(40, 40), (48, 40)])
    bad = tmp_path / "in" / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 20)
    out = tmp_path / "out"
    code, stdout, stderr = run_batch(good[0], bad, good[1], "--out-dir", out, "-m", bundle, *OPTS, "--json")
    assert code == 3  # some failed
    summary = json.loads(stdout)
    assert (summary["done"], summary["failed"]) == (2, 1)
    failed = [r for r in summary["results"] if r["status"] == "failed"]
    assert failed[0]["output"] == "broken.tif" and "broken.tif" in failed[0]["error"]
    assert stderr.count("failed: ") == 1 and "Traceback" not in stderr
    assert not (out / "broken.tif").exists() and leftovers(out) == []
    records = read_records(out / LEDGER_NAME)
    assert records["broken.tif"]["status"] == "failed" and "\n" not in records["broken.tif"]["error"]
    # A re-run retries the failure only.
    code, stdout, _ = run_batch(good[0], bad, good[1], "--out-dir", out, "-m", bundle, *OPTS, "--json")
    summary = json.loads(stdout)
    assert code == 3 and (summary["done"], summary["skipped"], summary["failed"]) == (0, 2, 1)


def test_existing_output_not_ours_is_refused_unless_overwrite(tmp_path: Path, bundle: Path) -> None:
    slide = write_slides(tmp_path / "in", [(40, 40)])[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "slide0.tif").write_bytes(b"precious")
    code, _, stderr = run_batch(slide, "--out-dir", out, "-m", bundle, *OPTS)
    assert code == 3 and "pass --overwrite" in stderr
    assert (out / "slide0.tif").read_bytes() == b"precious"
    code, _, stderr = run_batch(slide, "--out-dir", out, "-m", bundle, *OPTS, "--overwrite", "-q")
    assert code == 0, stderr
    assert (out / "slide0.tif").read_bytes() == reference(tmp_path, slide, bundle, *OPTS)


def test_out_dir_that_is_a_file_or_has_no_parent(tmp_path: Path, bundle: Path) -> None:
    slide = write_slides(tmp_path / "in", [(40, 40)])[0]
    (tmp_path / "file").write_text("x")
    code, _, stderr = run_batch(slide, "--out-dir", tmp_path / "file", "-m", bundle)
    assert code == 1 and "is not a folder" in stderr
    code, _, stderr = run_batch(slide, "--out-dir", tmp_path / "no" / "such", "-m", bundle)
    assert code == 1 and "parent folder does not exist" in stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_out_dir(tmp_path: Path, bundle: Path) -> None:
    slide = write_slides(tmp_path / "in", [(40, 40)])[0]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, stderr = run_batch(slide, "--out-dir", locked, "-m", bundle)
        assert code == 1 and "is not writable" in stderr
    finally:
        locked.chmod(0o700)


def test_unwritable_out_dir_probe_writes_for_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root passes os.access on read-only folders: the ledger proves writability by writing."""
    import dnrt.atomic as atomic

    def refuse(dest: Path, marker: str = atomic.TEMP_MARKER) -> Path:
        raise DnrtError("cannot create a file: Read-only file system")

    monkeypatch.setattr(atomic, "create_temp", refuse)
    with pytest.raises(DnrtError, match="is not writable"):
        Ledger(tmp_path).open()


def test_a_failed_join_names_token_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray joins an address without the cluster's token unless RAY_AUTH_MODE=token, and then
    reports only "Failed to connect": the error line says what to set."""
    import types

    from dnrt.batch import cluster

    def init(**kwargs: object) -> None:
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:1\nmore detail")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setattr(cluster, "_import_ray", lambda local=False: fake)
    monkeypatch.setattr(cluster, "_check_reachable", lambda address, timeout: None)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(DnrtError) as error:
        cluster.connect("127.0.0.1:1", timeout=10)
    assert str(error.value) == (
        "cannot join the Ray cluster at 127.0.0.1:1: Failed to connect to Ray cluster at 127.0.0.1:1 "
        "(a cluster started with token authentication, Ray's default, needs RAY_AUTH_MODE=token and "
        "its token: ~/.ray/auth_token or RAY_AUTH_TOKEN)"
    )
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # set: the plain reason
    with pytest.raises(DnrtError, match=r"127.0.0.1:1$"):
        cluster.connect("127.0.0.1:1", timeout=10)


def test_local_ray_is_a_fresh_cluster_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--ray`` alone starts a cluster of its own ("local"), never the one RAY_ADDRESS or the
    last ``ray start`` names, and asks Ray to keep it on loopback before Ray is imported."""
    import types

    from dnrt.batch import cluster

    calls: list[dict] = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.append(kw))
    imports: list[bool] = []
    monkeypatch.setattr(cluster, "_import_ray", lambda local=False: imports.append(local) or fake)
    assert cluster.connect(None, timeout=10) is True
    assert calls[0]["address"] == "local" and imports == [True]
    monkeypatch.setattr(cluster, "_check_reachable", lambda address, timeout: None)
    cluster.connect("10.1.2.3:6379", timeout=10)
    assert calls[1]["address"] == "10.1.2.3:6379" and imports == [True, False]


def test_second_driver_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    with Ledger(tmp_path), pytest.raises(DnrtError, match="another dnrt batch"):
        Ledger(tmp_path).open()
    with Ledger(tmp_path):  # released on close
        pass


# --------------------------------------------------------------------------- resume


def test_resume_skips_done_and_redoes_changed_inputs_and_options(tmp_path: Path, bundle: Path) -> None:
    slides = write_slides(tmp_path / "in", [(40, 40), (48, 40), (40, 56)])
    out = tmp_path / "out"
    args = [*slides, "--out-dir", out, "-m", bundle, *OPTS, "--json"]
    assert run_batch(*args)[0] == 0
    code, stdout, _ = run_batch(*args)
    assert code == 0 and json.loads(stdout)["skipped"] == 3
    # A changed input (new content, new mtime) is redone; the others are skipped.
    tifffile.imwrite(slides[1], _rgb(48, 40, 99), photometric="rgb", tile=(32, 32))
    code, stdout, _ = run_batch(*args)
    summary = json.loads(stdout)
    assert (summary["done"], summary["skipped"]) == (1, 2)
    assert [r["output"] for r in summary["results"] if r["status"] == "done"] == ["slide1.tif"]
    assert (out / "slide1.tif").read_bytes() == reference(tmp_path, slides[1], bundle, *OPTS, "--overwrite")
    # A changed translation option redoes all (its own earlier outputs are replaced, no --overwrite).
    code, stdout, _ = run_batch(*args, "--mode", "in")
    assert code == 0 and json.loads(stdout)["done"] == 3
    # --threads does not change the pixels: nothing to redo.
    code, stdout, _ = run_batch(*args, "--mode", "in", "--threads", "1")
    assert json.loads(stdout)["skipped"] == 3
    # A removed output is redone.
    (out / "slide2.tif").unlink()
    code, stdout, _ = run_batch(*args, "--mode", "in")
    assert json.loads(stdout)["done"] == 1


def test_ledger_ignores_a_torn_last_line_and_appends_after_it(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        ledger.append({"output": "a.tif", "status": "done"})
    with open(tmp_path / LEDGER_NAME, "ab") as fh:
        fh.write(b'{"v":1,"output":"b.tif","sta')  # a driver killed mid-write
    with Ledger(tmp_path) as ledger:
        assert set(ledger.records) == {"a.tif"}
        ledger.append({"output": "c.tif", "status": "done"})
    assert set(read_records(tmp_path / LEDGER_NAME)) == {"a.tif", "c.tif"}
    lines = (tmp_path / LEDGER_NAME).read_bytes().split(b"\n")
    assert json.loads(lines[2])["output"] == "c.tif"  # on its own line, after the torn one


def test_started_slide_may_be_replaced_even_if_its_output_appears_after_planning(tmp_path: Path) -> None:
    """A killed driver's Ray worker can finish a slide after the re-run planned it (CI saw this):
    a slide the ledger says this batch started is the batch's own, present or not yet."""
    from dnrt.batch.runner import plan_tasks

    slides = write_slides(tmp_path / "in", [(40, 40), (40, 40)])
    out = tmp_path / "out"
    out.mkdir()
    jobs = make_jobs(slides_from_arguments([str(s) for s in slides]), out, "{stem}.tif")
    with Ledger(out) as ledger:
        ledger.append({"output": jobs[0].name, "status": "started"})
        tasks, refused, skipped = plan_tasks(jobs, ledger, "h", overwrite=False)
    assert not refused and not skipped
    assert [t.overwrite for t in tasks] == [True, False]  # no output yet for either


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def _done_count(out: Path) -> int:
    return sum(1 for r in read_records(out / LEDGER_NAME).values() if r["status"] == "done")


DRIVER = [sys.executable, "-c", "from dnrt.cli import main; main()", "batch"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_driver_killed_mid_batch_then_resumed(tmp_path: Path, bundle: Path, signum: int) -> None:
    slides = write_slides(tmp_path / "in", [(160, 160)] * 16)
    out = tmp_path / "out"
    args = [str(a) for a in [*slides, "--out-dir", out, "-m", bundle, *OPTS, "--threads", "1"]]
    proc = subprocess.Popen([*DRIVER, *args, "-q"], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: out.exists() and (out / LEDGER_NAME).exists() and _done_count(out) >= 1)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = _done_count(out)
    if signum == signal.SIGTERM:
        assert proc.returncode == 143
        assert stderr.strip().splitlines() == [
            "error: terminated (SIGTERM); finished slides are in the ledger, run again to do the rest"
        ]
        assert leftovers(out) == []  # the slide in progress left nothing
    else:
        assert proc.returncode == -signal.SIGKILL
    assert 1 <= done_before < len(slides)  # killed mid-batch
    code, stdout, stderr = run_batch(*args, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["skipped"] == done_before and summary["done"] == len(slides) - done_before
    assert leftovers(out) == []  # a SIGKILLed driver's temporary is cleaned by the redo
    for slide in slides:
        assert (out / f"{slide.stem}.tif").read_bytes() == reference(tmp_path, slide, bundle, *OPTS)
