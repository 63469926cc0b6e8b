"""``dnrt batch --ray`` on a local Ray cluster that the tests start (two CPUs, loopback, no dashboard).

Slides are small and the toy bundle's tiles are enlarged (--tile 64) so that each test takes
seconds; starting the cluster once per module is most of the time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
ray = pytest.importorskip("ray", reason="dnrt batch --ray needs Ray: pip install 'dnrt[cluster]'")

from test_batch import DRIVER, leftovers, reference, run_batch, write_slides  # noqa: E402

from dnrt.batch.ledger import LEDGER_NAME, read_records  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

OPTS = ("--backend", "ort", "--mode", "dn", "--tile", "64")
TEMP = re.compile(r"\.(.+)\.dnrt-tmp-([0-9]+)-[0-9a-f]{8}")


@pytest.fixture(scope="module")
def cluster() -> str:
    """The GCS address of a local two-CPU Ray cluster, shared by this process and subprocesses."""
    import signal

    # ray.init on the main thread installs its own SIGTERM handler and ray.shutdown leaves it:
    # the tests after these (which check how dnrt handles signals) need the process's own.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fakes import write_toy_bundle

    return write_toy_bundle(tmp_path_factory.mktemp("bundle") / "toy")


def _all_done_once(out: Path, names: list[str]) -> None:
    lines = [json.loads(x) for x in (out / LEDGER_NAME).read_text().splitlines() if x.strip()]
    for name in names:
        done = [r for r in lines if r["output"] == name and r["status"] == "done"]
        failed = [r for r in lines if r["output"] == name and r["status"] == "failed"]
        assert len(done) == 1 and not failed, (name, done, failed)


def test_three_slides_on_two_workers_equal_trt_translate(tmp_path: Path, bundle: Path, cluster: str) -> None:
    slides = write_slides(tmp_path / "in", [(200, 260), (130, 190), (256, 128)])
    out = tmp_path / "out"
    code, stdout, stderr = run_batch(
        *slides, "--out-dir", out, "-m", bundle, *OPTS, "--ray", cluster, "--json"
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["workers"] == 2 and summary["done"] == 3
    assert len({r["pid"] for r in summary["results"]}) == 2  # both workers translated
    for slide in slides:
        assert (out / f"{slide.stem}.tif").read_bytes() == reference(tmp_path, slide, bundle, *OPTS)
    _all_done_once(out, [f"{s.stem}.tif" for s in slides])
    assert leftovers(out) == []


def _run_killing_first_writer(out: Path, *args: str | Path) -> tuple[int, str, str, list[int]]:
    """Run the batch while a watcher SIGKILLs the process writing slide0.tif, mid-slide."""
    killed: list[int] = []
    stop = threading.Event()

    def kill_first_writer() -> None:
        # The temporary's name carries the writing process's id: kill that process mid-slide.
        while not stop.is_set():
            for name in os.listdir(out) if out.is_dir() else []:
                match = TEMP.fullmatch(name)
                if match and match.group(1) == "slide0.tif":
                    killed.append(int(match.group(2)))
                    os.kill(killed[0], signal.SIGKILL)
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_first_writer, daemon=True)
    watcher.start()
    try:
        code, stdout, stderr = run_batch(*args)
    finally:
        stop.set()
        watcher.join(5)
    assert killed, "the slide finished before the watcher saw its temporary"
    return code, stdout, stderr, killed


def test_worker_killed_mid_slide_is_retried_and_leaves_nothing(
    tmp_path: Path, bundle: Path, cluster: str
) -> None:
    slides = write_slides(tmp_path / "in", [(1024, 1024), (96, 96), (128, 96)])
    out = tmp_path / "out"
    code, stdout, stderr, killed = _run_killing_first_writer(
        out, *slides, "--out-dir", out, "-m", bundle, *OPTS, "--ray", cluster, "--workers", "2", "--json"
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    first = next(r for r in summary["results"] if r["output"] == "slide0.tif")
    assert first["status"] == "done" and first["pid"] != killed[0]  # redone by the restarted worker
    _all_done_once(out, [f"{s.stem}.tif" for s in slides])
    assert leftovers(out) == []  # the killed worker's temporary was removed by the retry
    assert (out / "slide0.tif").read_bytes() == reference(tmp_path, slides[0], bundle, *OPTS)


def test_worker_dying_past_its_retries_fails_that_slide_only(
    tmp_path: Path, bundle: Path, cluster: str
) -> None:
    slides = write_slides(tmp_path / "in", [(1024, 1024), (96, 96), (128, 96), (64, 64)])
    out = tmp_path / "out"
    args = [*slides, "--out-dir", out, "-m", bundle, *OPTS, "--ray", cluster, "--workers", "1", "--json"]
    code, stdout, stderr, _ = _run_killing_first_writer(out, *args, "--retries", "0")
    assert code == 3, stderr
    summary = json.loads(stdout)
    status = {r["output"]: r["status"] for r in summary["results"]}
    assert status == {
        "slide0.tif": "failed",
        "slide1.tif": "done",
        "slide2.tif": "done",
        "slide3.tif": "done",
    }
    error = next(r["error"] for r in summary["results"] if r["output"] == "slide0.tif")
    assert error.startswith("the worker died on this slide")
    assert not (out / "slide0.tif").exists()  # the replacement worker did the rest
    code, stdout, _ = run_batch(*args)  # the re-run redoes slide0 and removes the dead one's temporary
    assert code == 0 and json.loads(stdout)["done"] == 1
    assert leftovers(out) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_driver_killed_then_resumed_on_the_cluster(
    tmp_path: Path, bundle: Path, cluster: str, signum: int
) -> None:
    slides = write_slides(tmp_path / "in", [(256, 256)] * 16)
    out = tmp_path / "out"
    args = [
        str(a) for a in [*slides, "--out-dir", out, "-m", bundle, *OPTS, "--ray=" + cluster, "--workers", "1"]
    ]
    proc = subprocess.Popen([*DRIVER, *args, "-q"], stderr=subprocess.PIPE, text=True)

    def done() -> int:
        path = out / LEDGER_NAME
        return sum(r["status"] == "done" for r in read_records(path).values()) if path.exists() else 0

    try:
        deadline = time.monotonic() + 120
        while done() < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = done()
    assert 1 <= done_before < len(slides)  # killed mid-batch
    if signum == signal.SIGTERM:
        assert proc.returncode == 143
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert errors == [
            "error: terminated (SIGTERM); finished slides are in the ledger, run again to do the rest"
        ]
        assert "Traceback" not in stderr
        assert leftovers(out) == []  # the driver stopped its worker and removed its temporary
    else:
        assert proc.returncode == -signal.SIGKILL
    code, stdout, stderr = run_batch(*args, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["skipped"] == done_before and summary["done"] == len(slides) - done_before
    for slide in slides:
        assert (out / f"{slide.stem}.tif").read_bytes() == reference(tmp_path, slide, bundle, *OPTS)
    assert leftovers(out) == []


def _driver(*args: str | Path, timeout: float = 60) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run([*DRIVER, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr, time.monotonic() - start


def test_bare_ray_starts_a_local_cluster_of_its_own(tmp_path: Path, bundle: Path, cluster: str) -> None:
    """``--ray`` with no address: dnrt starts (and stops) a Ray instance for this batch, even with
    the module's cluster running and named by RAY_ADDRESS (test_batch.py checks it asks Ray for
    "local")."""
    slides = write_slides(tmp_path / "in", [(96, 96), (64, 80)])
    out = tmp_path / "out"
    args = [str(a) for a in [*slides, "--out-dir", out, "-m", bundle, *OPTS, "--workers", "1", "--json"]]
    env = {**os.environ, "RAY_ADDRESS": cluster}
    proc = subprocess.run([*DRIVER, *args, "--ray"], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["done"] == 2 and summary["workers"] == 1
    for slide in slides:
        assert (out / f"{slide.stem}.tif").read_bytes() == reference(tmp_path, slide, bundle, *OPTS)


def test_dead_ray_address_is_one_line_within_30_s(tmp_path: Path, bundle: Path) -> None:
    slide = write_slides(tmp_path / "in", [(40, 40)])[0]
    out = tmp_path / "out"
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, stderr, seconds = _driver(slide, "--out-dir", out, "-m", bundle, "--ray", f"127.0.0.1:{port}")
    assert code == 1 and seconds < 30
    assert stderr.strip().splitlines() == [
        f"error: Ray cluster at 127.0.0.1:{port} does not answer (Connection refused)"
    ]
    assert not out.exists()  # checked before the output folder is created


def test_silent_ray_address_times_out_with_one_line(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port that accepts connections but never speaks Ray: the bounded wait ends it."""
    slide = write_slides(tmp_path / "in", [(40, 40)])[0]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    port = server.getsockname()[1]
    conns: list[socket.socket] = []
    threading.Thread(
        target=lambda: [conns.append(server.accept()[0]) for _ in iter(int, 1)], daemon=True
    ).start()
    try:
        env = {**os.environ, "DNRT_RAY_CONNECT_TIMEOUT_S": "8"}
        start = time.monotonic()
        proc = subprocess.run(
            [*DRIVER, slide, "--out-dir", tmp_path / "out", "-m", bundle, "--ray", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        seconds = time.monotonic() - start
    finally:
        server.close()
    assert proc.returncode == 1 and seconds < 30, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("error: ")]
    assert lines == [f"error: Ray cluster at 127.0.0.1:{port} did not answer within 8 s"]


def test_ray_taking_a_slide_as_its_address_is_a_usage_error(tmp_path: Path, bundle: Path) -> None:
    slides = write_slides(tmp_path / "in", [(40, 40), (40, 40)])
    code, _, stderr = run_batch("--out-dir", tmp_path / "out", "-m", bundle, "--ray", *slides)
    assert code == 2 and "--ray took" in stderr


def test_more_workers_than_the_cluster_holds_is_refused(tmp_path: Path, bundle: Path, cluster: str) -> None:
    slides = write_slides(tmp_path / "in", [(40, 40), (40, 40), (40, 40)])
    out = tmp_path / "out"
    code, _, stderr = run_batch(*slides, "--out-dir", out, "-m", bundle, "--ray", cluster, "--workers", "3")
    assert code == 1 and "do not fit the Ray cluster (2 CPUs, 0 GPUs)" in stderr
    assert not (out / LEDGER_NAME).exists()  # no slide was recorded as started
