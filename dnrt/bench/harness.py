"""``dnrt bench``: speed, memory and fidelity of every normalization mode on one image.

Each mode runs ``dnrt.translate`` file to file in a fresh process (``dnrt.bench.child``), so
its peak host memory and peak GPU memory are its own; rounds of all modes are interleaved
``repeat`` times and the best wall time of each mode is kept, so that ratios between modes
(what a comparison of modes is about) are measured under the same machine load. Fidelity is then
computed band by band from the output TIFFs (``dnrt.bench.fidelity``): the seam score, PSNR /
SSIM / local colour error against the ground truth when the slide is synthetic (or
``--ground-truth`` is given), and the difference from whole-image inference (the generator
once over the whole image with plain InstanceNorm) when that fits in ``max_whole_megapixels``.

Everything measured goes into one result dict (``--json``), which :func:`format_report`
prints as tables beside the paper's Table S1 and :mod:`dnrt.bench.plot` draws.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnrt.bench.machine import describe_machine, load_average, machine_info, versions
from dnrt.errors import DnrtError
from dnrt.runtime.options import GPU_BACKENDS, TranslateOptions

__all__ = [
    "DEFAULT_SIZE",
    "MODE_SPECS",
    "PAPER_TABLE_S1",
    "BenchOptions",
    "format_report",
    "parse_modes",
    "run_benchmark",
    "run_child",
    "synthetic_pair",
]

SCHEMA = "dnrt-bench/1"

#: The paper's Table S1 image: 4,302 x 3,024 px, stored here as height x width (landscape).
DEFAULT_SIZE = (3024, 4302)
DEFAULT_MODES = ("in", "tin", "kin", "dn-two-pass", "dn-streaming")


@dataclass(frozen=True)
class ModeSpec:
    norm: str
    schedule: str
    label: str
    #: Streaming only: run collect and infer side by side (None: the backend decides).
    overlap: bool | None = None
    #: DN only: the degenerate-statistics rule and ratio of this run (None: the bench's setting).
    degenerate: str | None = None
    degenerate_ratio: float | None = None


MODE_SPECS: dict[str, ModeSpec] = {
    "in": ModeSpec("in", "streaming", "IN (patch-wise)"),
    "tin": ModeSpec("tin", "streaming", "TIN (thumbnail)"),
    "kin": ModeSpec("kin", "streaming", "KIN (kernel 5)"),
    "dn-two-pass": ModeSpec("dn", "two-pass", "DN two-pass"),
    "dn-streaming": ModeSpec("dn", "streaming", "DN streaming"),
    # DN streaming with the two passes one after the other (one stream / one thread pool):
    # with dn-streaming it shows what overlapping collect and infer buys.
    "dn-serial": ModeSpec("dn", "streaming", "DN streaming, passes not overlapped", overlap=False),
}
MODE_ALIASES = {"dn": "dn-streaming", "dn-one-stage": "dn-streaming", "dn-2pass": "dn-two-pass"}

#: Table S1 of the DN paper (docs/semantics.md section 7): one 4,302 x 3,024 image, RTX 3090,
#: PyTorch fp32, the official generator (64 features, 9 blocks), T = 512.
PAPER_TABLE_S1: dict[str, dict[str, Any]] = {
    "in": {"label": "IN (patch-wise)", "runtime_s": 2.46, "gpu_mb": 2951},
    "tin": {"label": "TIN", "runtime_s": 2.62, "gpu_mb": 3335},
    "kin": {"label": "KIN", "runtime_s": 4.42, "gpu_mb": 3145},
    "dn-two-pass": {"label": "DN two-pass", "runtime_s": 5.51, "gpu_mb": 3161},
    "dn-streaming": {"label": "DN one-stage", "runtime_s": 4.35, "gpu_mb": 4157},
}
PAPER_NOTE = "paper Table S1: RTX 3090, PyTorch fp32, official 64-feature generator; different hardware"

#: Thresholds of the expectations: what DN's seams should look like against the ground truth's.
SEAM_CLOSE_TO_ONE = 1.10
#: DN's seam score may exceed the ground truth's own (its noise floor) by this much.
SEAM_NEAR_GROUND_TRUTH = 0.10


def mode_spec(name: str) -> ModeSpec:
    """The spec of a mode name: one of ``MODE_SPECS``, or a DN one with a degenerate-statistics
    rule of its own, ``dn-streaming:RULE`` or ``dn-streaming:RULE=RATIO`` (rules compared side
    by side in one run)."""
    from dnrt.semantics import DEGENERATE_RATIO_DEFAULT, check_degenerate

    base, _, variant = name.partition(":")
    base = MODE_ALIASES.get(base, base)
    if base not in MODE_SPECS:
        raise DnrtError(f"unknown mode {name!r} (expected some of {', '.join(MODE_SPECS)})", exit_code=2)
    spec = MODE_SPECS[base]
    if not variant:
        return spec
    if spec.norm != "dn":
        raise DnrtError(f"mode {name!r}: only DN modes take a degenerate-statistics rule", exit_code=2)
    rule, _, ratio_text = variant.partition("=")
    try:
        ratio = float(ratio_text) if ratio_text else None
        check_degenerate(rule, DEGENERATE_RATIO_DEFAULT if ratio is None else ratio)
    except (ValueError, DnrtError) as exc:
        raise DnrtError(f"mode {name!r}: {exc}", exit_code=2) from None
    label = f"{spec.label}, {rule}" + (f" {ratio:g}" if ratio is not None else "")
    return ModeSpec(spec.norm, spec.schedule, label, spec.overlap, rule, ratio)


def parse_modes(text: str | None) -> list[str]:
    if not text:
        return list(DEFAULT_MODES)
    modes: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        base, sep, variant = name.partition(":")
        name = MODE_ALIASES.get(base, base) + sep + variant
        mode_spec(name)  # validates
        if name not in modes:
            modes.append(name)
    if not modes:
        raise DnrtError("no modes given", exit_code=2)
    return modes


@dataclass
class BenchOptions:
    model: Path | None = None
    demo: bool = False
    image: Path | None = None
    size: tuple[int, int] = DEFAULT_SIZE
    ground_truth: Path | None = None
    seed: int = 0
    #: Synthetic slide only: the scanner conditions (``dnrt.data.synthetic.SCANNERS`` or options).
    scanner: str = "clean"
    modes: list[str] = field(default_factory=lambda: list(DEFAULT_MODES))
    #: How every mode translates (backend, batch, threads, tile, margin, precision, DN's
    #: degenerate-statistics rule, compression, ...); each mode sets its mode, schedule and
    #: overlap (``ModeSpec``), and its own degenerate rule where it names one.
    translate: TranslateOptions = field(default_factory=TranslateOptions)
    repeat: int = 3
    max_whole_megapixels: float = 16.0
    fidelity: bool = True
    workdir: Path | None = None
    cache_dir: Path | None = None
    timeout: float | None = None


Log = Callable[[str], None]


# --------------------------------------------------------------------------- inputs


def cache_dir(options: BenchOptions) -> Path:
    if options.cache_dir is not None:
        return Path(options.cache_dir)
    env = os.environ.get("DNRT_CACHE_DIR")
    if env:
        return Path(env) / "bench"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dnrt" / "bench"


def synthetic_pair(
    directory: Path, seed: int, height: int, width: int, log: Log, scanner: str = "clean"
) -> tuple[Path, Path]:
    """The synthetic H&E slide and its IHC ground truth, generated once into ``directory``."""
    from dnrt.data.synthetic import pair_stem, parse_scanner, write_pair

    conditions = parse_scanner(scanner)
    stem = pair_stem(seed, height, width, conditions)
    he, ihc = directory / f"{stem}_he.tif", directory / f"{stem}_ihc.tif"
    if he.is_file() and ihc.is_file():
        return he, ihc
    directory.mkdir(parents=True, exist_ok=True)
    log(f"generating the synthetic slide {height} x {width} (seed {seed}, {conditions.name}) in {directory}")
    # Written in a private folder and moved in place, so a cache is never half written.
    from dnrt.atomic import commit, new_temp, remove_stale_temps

    remove_stale_temps(he)
    with new_temp(he, folder=True) as tmp:
        a, b = write_pair(tmp, seed, height, width, scanner=conditions)
        commit(Path(a), he, overwrite=True)
        commit(Path(b), ihc, overwrite=True)
    return he, ihc


def demo_bundle(directory: Path, log: Log) -> Path:
    """The embedded demo model exported once into ``directory`` (needs PyTorch the first time)."""
    try:
        from dnrt import demo
    except ImportError:
        raise DnrtError("the demo model is not part of this dnrt build (pass --model BUNDLE)") from None
    weights = demo.demo_weights_path()
    if not weights.is_file():
        demo.demo_info()  # raises the demo module's own one-line error about what is missing
        raise DnrtError(f"demo model weights not found: {weights}")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    out = directory / f"demo-{digest}.dnrt"
    if (out / "manifest.json").is_file():
        return out
    directory.mkdir(parents=True, exist_ok=True)
    log(f"exporting the demo model to {out}")
    from dnrt.atomic import commit_dir, remove_stale_temps, temp_name

    remove_stale_temps(out)
    tmp = temp_name(out)  # export writes the folder; it appears under its name only when whole
    try:
        demo.export_demo_bundle(tmp, log=lambda _: None)
    except ImportError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DnrtError(f"exporting the demo model needs PyTorch and onnx ({exc.name} is missing)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_dir(tmp, out)
    return out


def resolve_model(options: BenchOptions, log: Log) -> tuple[Path, dict[str, Any]]:
    from dnrt.bundle import load_bundle

    if options.model is not None and options.demo:
        raise DnrtError("pass either --model BUNDLE or --demo, not both", exit_code=2)
    if options.model is None and not options.demo:
        raise DnrtError("no model: pass --model BUNDLE (written by export-model) or --demo", exit_code=2)
    path = demo_bundle(cache_dir(options), log) if options.demo else Path(options.model)  # type: ignore[arg-type]
    if not path.exists():
        raise DnrtError(f"model bundle not found: {path}")
    bundle = load_bundle(path)
    m = bundle.manifest
    info = {
        "bundle": str(path),
        "demo": bool(options.demo),
        "architecture": m.architecture,
        "config": m.config,
        "norm_layers": len(m.layers),
        "tile": m.tile,
        "margin": m.margin,
        "source": m.source,
    }
    return path, info


def resolve_image(options: BenchOptions, log: Log) -> dict[str, Any]:
    from dnrt.runtime.io import open_image

    if options.image is not None:
        image = Path(options.image)
        with open_image(image) as src:  # DnrtError (one line) for anything unreadable
            info = {
                "path": str(image),
                "height": src.height,
                "width": src.width,
                "channels": src.channels,
                "description": src.description,
                "synthetic": False,
                "ground_truth": None,
            }
        if options.ground_truth is not None:
            with open_image(options.ground_truth) as gt:
                if (gt.height, gt.width) != (info["height"], info["width"]):
                    raise DnrtError(
                        f"--ground-truth is {gt.width} x {gt.height} but the image is {info['width']} x {info['height']}"
                    )
            info["ground_truth"] = str(options.ground_truth)
        return info
    h, w = options.size
    if h < 1 or w < 1:
        raise DnrtError(f"bad --size {h}x{w}", exit_code=2)
    he, ihc = synthetic_pair(cache_dir(options), options.seed, h, w, log, options.scanner)
    from dnrt.data.synthetic import parse_scanner

    scanner = parse_scanner(options.scanner).name
    return {
        "path": str(he),
        "height": h,
        "width": w,
        "channels": 3,
        "synthetic": True,
        "seed": options.seed,
        "scanner": scanner,
        "description": f"synthetic H&E slide, seed {options.seed}, scanner {scanner}",
        "ground_truth": str(ihc),
    }


# --------------------------------------------------------------------------- child runs


def run_child(spec: dict[str, Any], workdir: Path, timeout: float | None = None) -> dict[str, Any]:
    """Run one task of :mod:`dnrt.bench.child` in a fresh interpreter; returns its result
    (plus ``process_s``: the child's whole life, interpreter start and imports included)."""
    fd, spec_path = tempfile.mkstemp(prefix="spec-", suffix=".json", dir=workdir)
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)
    result_path = spec_path[: -len(".json")] + ".result.json"
    env = dict(os.environ)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dnrt.bench.child", spec_path, result_path],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    finally:
        os.unlink(spec_path)
    elapsed = time.perf_counter() - start
    try:
        with open(result_path) as f:
            result = json.load(f)
        os.unlink(result_path)
    except (OSError, json.JSONDecodeError):
        tail = (proc.stderr or "").strip().splitlines()
        why = tail[-1] if tail else f"exit status {proc.returncode}"
        if proc.returncode < 0:
            why = f"killed by signal {-proc.returncode} (out of memory?)"
        return {"ok": False, "error": f"the measuring process died: {why}"}
    result["process_s"] = elapsed
    return result


def _child_spec(
    task: str,
    options: BenchOptions,
    model: Path,
    image: str,
    output: Path,
    backend: str,
    spec: ModeSpec | None = None,
) -> dict[str, Any]:
    translate = options.translate
    out: dict[str, Any] = {
        "task": task,
        "input": image,
        "output": str(output),
        "model": str(model),
        "backend": backend,
        "threads": translate.threads,
        "compression": translate.compression,
        "gpu": backend in GPU_BACKENDS,
        "backend_options": translate.backend_options(),
    }
    if spec is not None:
        changes: dict[str, Any] = {
            "backend": backend,
            "mode": spec.norm,
            "schedule": spec.schedule,
            "overlap": spec.overlap,
        }
        if spec.degenerate is not None:  # only DN modes name one (mode_spec)
            changes["degenerate"] = spec.degenerate
        if spec.degenerate_ratio is not None:
            changes["degenerate_ratio"] = spec.degenerate_ratio
        out["options"] = measured_options(translate, **changes)
    return out


def measured_options(options: TranslateOptions, **changes: Any) -> dict[str, Any]:
    """The JSON form of the options a measured run translates with (a ``translate`` spec's
    ``options``, read by ``dnrt.bench.child``): ``options`` with ``changes``; level 0 only (no
    pyramid, as when the recorded runs were made); every tile through the network (the bench
    measures the modes; background skipping has its own benchmark, benchmarks/background.py);
    the previous round's output replaced."""
    return options.replace(**changes, pyramid=False, overwrite=True, background="translate").to_dict()


# --------------------------------------------------------------------------- whole-image memory

#: Whole-image inference runs only if its estimated memory is below this share of what is available.
WHOLE_MEMORY_SHARE = 0.5
#: Bytes per activation element held by ONNX Runtime's CPU provider over a whole-image run,
#: per unit of (channels / stride^2) summed over the norm layers: measured 18.9 GB for the demo
#: generator (16 features, 4 blocks: 120 full-resolution channel equivalents) on 13.0 MP, i.e.
#: about 3 float32 buffers per norm layer kept alive (conv output, norm output, activation).
WHOLE_BYTES_PER_ELEMENT = 12.0


def whole_image_memory_gb(model: Path, height: int, width: int) -> float:
    """Estimated peak memory (GB) of running the bundle's stats graph once on the whole image."""
    from dnrt.bundle import load_bundle

    manifest = load_bundle(model).manifest
    equivalents = sum(layer.channels / (layer.stride * layer.stride) for layer in manifest.layers)
    elements = height * width * (equivalents + 2 * (manifest.in_channels + manifest.out_channels))
    return elements * WHOLE_BYTES_PER_ELEMENT / 1e9 + 0.3


def memory_available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except (OSError, ValueError):
        pass
    return None


# --------------------------------------------------------------------------- the run


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def run_benchmark(options: BenchOptions, log: Log = lambda _: None) -> dict[str, Any]:
    """Measure every mode of ``options`` and return the result dict (see ``--json``)."""
    from dnrt.runtime.backends import resolve_backend_name

    if options.repeat < 1:
        raise DnrtError("--repeat must be at least 1", exit_code=2)
    started = _dt.datetime.now(_dt.timezone.utc)
    load_before = load_average()
    model_path, model = resolve_model(options, log)
    image = resolve_image(options, log)
    backend = resolve_backend_name(options.translate.backend, options.translate.precision)

    own_workdir = options.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dnrt-bench-")) if own_workdir else Path(options.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = _measure(options, image, model_path, model, backend, workdir, log)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["started"] = started.isoformat(timespec="seconds")
    result["load_average"] = {"before": load_before, "after": load_average(), "during": result.pop("_loads")}
    return result


def _measure(
    options: BenchOptions,
    image: dict[str, Any],
    model_path: Path,
    model: dict[str, Any],
    backend: str,
    workdir: Path,
    log: Log,
) -> dict[str, Any]:
    modes = options.modes
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    outputs = {m: workdir / f"out_{m}.tif" for m in modes}
    loads: list[float] = []
    total = len(modes) * options.repeat
    k = 0
    for _ in range(options.repeat):
        for mode in modes:
            k += 1
            la = load_average()
            if la:
                loads.append(la[0])
            spec = _child_spec(
                "translate", options, model_path, image["path"], outputs[mode], backend, mode_spec(mode)
            )
            res = run_child(spec, workdir, options.timeout)
            if not res.get("ok"):
                raise DnrtError(f"mode {mode} failed: {res.get('error')}")
            res["load_1min"] = la[0] if la else None
            runs[mode].append(res)
            gpu = res.get("gpu", {}).get("process_peak_mb")
            gpu_text = f", GPU {gpu:.0f} MB" if gpu else ""
            log(
                f"[{k}/{total}] {mode:<13} {res['wall_s']:7.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB{gpu_text}"
            )

    mp = image["height"] * image["width"] / 1e6
    whole: dict[str, Any] | None = None
    whole_out = workdir / "out_whole.tif"
    not_measured: list[str] = []
    need_gb = whole_image_memory_gb(model_path, image["height"], image["width"])
    free_gb = memory_available_gb()
    if mp <= options.max_whole_megapixels and free_gb is not None and need_gb > WHOLE_MEMORY_SHARE * free_gb:
        not_measured.append(
            f"whole-image inference: skipped (needs about {need_gb:.1f} GB by estimate, "
            f"{free_gb:.1f} GB available; try a smaller --size)"
        )
    elif mp <= options.max_whole_megapixels:
        log(f"whole-image inference ({mp:.1f} MP, plain InstanceNorm on the whole image, ~{need_gb:.1f} GB)")
        spec = _child_spec("whole", options, model_path, image["path"], whole_out, backend)
        res = run_child(spec, workdir, options.timeout)
        if res.get("ok"):
            whole = {k: res[k] for k in ("wall_s", "process_s", "peak_rss_mb", "gpu", "backend")}
        else:
            whole = {"error": res.get("error")}
            not_measured.append(f"whole-image inference: failed ({res.get('error')})")
    else:
        not_measured.append(
            f"whole-image inference: skipped ({mp:.1f} MP > --max-whole-megapixels {options.max_whole_megapixels:g})"
        )

    result: dict[str, Any] = {
        "schema": SCHEMA,
        "command": None,  # the command line, filled in by the CLI
        "machine": machine_info(),
        "versions": versions(),
        "image": {**image, "megapixels": round(mp, 3)},
        "model": model,
        "settings": {
            "backend": backend,
            "batch": options.translate.batch,
            "threads": options.translate.threads,
            "precision": options.translate.precision,
            "margin_source": options.translate.margin_source,
            "degenerate": options.translate.degenerate.value,
            "degenerate_ratio": options.translate.degenerate_ratio,
            "repeat": options.repeat,
            "compression": options.translate.compression,
            "max_whole_megapixels": options.max_whole_megapixels,
            "timing": "wall_s = the dnrt.translate() call, file to file (bundle load, session creation, "
            "TIFF read, inference, TIFF write); process_s adds interpreter start and imports; best of "
            "`repeat` interleaved rounds, each run in a fresh process",
        },
        "modes": {},
        "reference": {"whole": whole},
        "paper_table_s1": {"note": PAPER_NOTE, "modes": PAPER_TABLE_S1},
        "not_measured": not_measured,
        "_loads": loads,
    }
    for mode in modes:
        result["modes"][mode] = _summarize(mode, runs[mode], mp)
    _relative(result)

    if options.fidelity:
        _fidelity(result, outputs, whole_out if whole and "error" not in whole else None, log)
    result["expectations"] = _expectations(result)
    result["not_measured"].extend(_not_measured(result))
    return result


def _summarize(mode: str, runs: list[dict[str, Any]], mp: float) -> dict[str, Any]:
    spec = mode_spec(mode)
    best = min(runs, key=lambda r: r["wall_s"])
    report = best["report"]
    seconds = report["seconds"]
    compute = sum(seconds.get(k, 0.0) for k in ("collect", "infer", "thumbnail"))
    gpu_peaks = [r["gpu"].get("process_peak_mb") for r in runs if r.get("gpu", {}).get("process_peak_mb")]
    torch_peaks = [
        r["gpu"].get("torch_max_allocated_mb") for r in runs if r.get("gpu", {}).get("torch_max_allocated_mb")
    ]
    wall = best["wall_s"]
    return {
        "label": spec.label,
        "norm": spec.norm,
        "schedule": spec.schedule,
        "overlap": report.get("overlap"),
        "margin_source": report.get("margin_source"),
        "degenerate": report.get("degenerate"),
        "degenerate_ratio": report.get("degenerate_ratio"),
        "backend": report.get("backend"),
        "batch": report.get("batch"),
        "tile": report.get("tile"),
        "margin": report.get("margin"),
        "tiles": report.get("tiles"),
        "tile_runs": report.get("tile_runs"),
        "wall_s": wall,
        "wall_s_runs": [r["wall_s"] for r in runs],
        "process_s": best.get("process_s"),
        "pipeline_s": seconds.get("total"),
        "compute_s": compute,
        "seconds": seconds,
        "tiles_per_s": report["tiles"] / wall if wall > 0 else None,
        "megapixels_per_s": mp / wall if wall > 0 else None,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "rss_before_mb": best.get("rss_before_mb"),
        "gpu_peak_mb": max(gpu_peaks) if gpu_peaks else None,
        "torch_max_allocated_mb": max(torch_peaks) if torch_peaks else None,
        "load_1min_runs": [r.get("load_1min") for r in runs],
    }


def _relative(result: dict[str, Any]) -> None:
    """Ratios to IN measured in this run, and the paper's ratios beside them."""
    modes = result["modes"]
    base = modes.get("in")
    paper_in = PAPER_TABLE_S1["in"]
    for name, m in modes.items():
        if base is not None:
            m["wall_vs_in"] = _ratio(m["wall_s"], base["wall_s"])
            # per interleaved round, so a reader sees how stable the ratio is under load
            m["wall_vs_in_runs"] = [
                _ratio(a, b) for a, b in zip(m["wall_s_runs"], base["wall_s_runs"], strict=False)
            ]
            m["compute_vs_in"] = _ratio(m["compute_s"], base["compute_s"])
            m["rss_vs_in"] = _ratio(m["peak_rss_mb"], base["peak_rss_mb"])
            m["gpu_vs_in"] = _ratio(m["gpu_peak_mb"], base["gpu_peak_mb"])
        paper = PAPER_TABLE_S1.get(name)
        m["paper"] = (
            None
            if paper is None
            else {
                **paper,
                "runtime_vs_in": paper["runtime_s"] / paper_in["runtime_s"],
                "gpu_vs_in": paper["gpu_mb"] / paper_in["gpu_mb"],
            }
        )


def _fidelity(result: dict[str, Any], outputs: dict[str, Path], whole: Path | None, log: Log) -> None:
    from dnrt.bench import fidelity

    gt = result["image"].get("ground_truth")
    tile = next(iter(result["modes"].values()))["tile"]
    t0 = time.perf_counter()
    against = [
        name for name, present in (("the ground truth", gt), ("whole-image inference", whole)) if present
    ]
    log("fidelity: seam scores" + (", comparisons with " + " and ".join(against) if against else ""))
    ref: dict[str, Any] = result["reference"]
    if gt:
        ref["ground_truth"] = {"seam": fidelity.seam_score(gt, tile).as_dict()}
    if whole is not None:
        ref["whole"]["seam"] = fidelity.seam_score(whole, tile).as_dict()
        if gt:
            ref["whole"]["vs_ground_truth"] = fidelity.compare(whole, gt)
    for mode, m in result["modes"].items():
        f: dict[str, Any] = {"seam": fidelity.seam_score(outputs[mode], tile).as_dict()}
        if gt:
            f["vs_ground_truth"] = fidelity.compare(outputs[mode], gt)
        if whole is not None:
            f["vs_whole"] = fidelity.compare(outputs[mode], whole, with_ssim=False)
        m["fidelity"] = f
    result["fidelity_seconds"] = time.perf_counter() - t0


def _get(d: dict[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _expectations(result: dict[str, Any]) -> dict[str, Any]:
    """What DN should show against the other modes, checked against what was measured (never
    assumed): the lowest seam score, close to the ground truth's own; PSNR at least IN's and
    KIN's; no block worse than IN's (a blown-out tile); TIN losing local colour."""
    modes = result["modes"]
    seams = {k: _get(m, "fidelity", "seam", "score") for k, m in modes.items()}
    seams = {k: v for k, v in seams.items() if v is not None and not math.isnan(v)}
    out: dict[str, Any] = {}
    dn = "dn-streaming" if "dn-streaming" in modes else ("dn-two-pass" if "dn-two-pass" in modes else None)
    if dn in seams and len(seams) > 1:
        others = {k: v for k, v in seams.items() if mode_spec(k).norm != "dn"}
        out["dn_seam_lowest"] = {
            "met": all(seams[dn] <= v for v in others.values()),
            "dn": seams[dn],
            "others": others,
        }
        gt_seam = _get(result, "reference", "ground_truth", "seam", "score")
        limit = SEAM_CLOSE_TO_ONE if gt_seam is None else gt_seam + SEAM_NEAR_GROUND_TRUTH
        out["dn_seam_near_ground_truth"] = {
            "met": seams[dn] <= limit,
            "dn": seams[dn],
            "limit": limit,
            "ground_truth": gt_seam,
        }
    psnr = {k: _get(m, "fidelity", "vs_ground_truth", "psnr") for k, m in modes.items()}
    psnr = {k: v for k, v in psnr.items() if v is not None}
    if dn and dn in psnr:
        rivals = {k: psnr[k] for k in ("in", "kin") if k in psnr}
        if rivals:
            out["dn_psnr_at_least_in_kin"] = {
                "met": all(psnr[dn] >= v for v in rivals.values()),
                "dn": psnr[dn],
                "others": rivals,
            }
    blocks = {
        k: (
            _get(m, "fidelity", "vs_ground_truth", "colour_error"),
            _get(m, "fidelity", "vs_ground_truth", "worst_block_error"),
        )
        for k, m in modes.items()
    }
    if dn in blocks and "in" in blocks and None not in blocks[dn] + blocks["in"]:
        (dn_mean, dn_worst), (in_mean, in_worst) = blocks[dn], blocks["in"]
        out["dn_blocks_no_worse_than_in"] = {
            "met": dn_worst <= in_worst and dn_mean <= in_mean,
            "dn_worst": dn_worst,
            "dn_mean": dn_mean,
            "others": {"in worst": in_worst, "in mean": in_mean},
            "measure": "64 px block-mean colour error vs the ground truth (8-bit units): worst block and mean",
        }
    colour = {k: _get(m, "fidelity", "vs_ground_truth", "colour_error") for k, m in modes.items()}
    colour = {k: v for k, v in colour.items() if v is not None}
    if "tin" in colour and len(colour) > 1:
        out["tin_loses_local_colour"] = {
            "met": all(colour["tin"] >= v for k, v in colour.items() if k != "tin"),
            "tin": colour["tin"],
            "others": {k: v for k, v in colour.items() if k != "tin"},
            "measure": "mean |difference| of 64 px block-mean colours vs the ground truth (8-bit units)",
        }
    return out


def _not_measured(result: dict[str, Any]) -> list[str]:
    notes = []
    backend = result["settings"]["backend"]
    if backend not in GPU_BACKENDS:
        notes.append("GPU memory: not measured (the backend runs on the CPU)")
    if backend != "trt":
        from importlib.util import find_spec

        why = "this run used another backend" if find_spec("tensorrt") else "TensorRT is not installed here"
        notes.append(f"TensorRT: not measured ({why})")
    if not result["image"].get("ground_truth"):
        notes.append(
            "PSNR/SSIM against a ground truth: no ground truth (use the synthetic slide or --ground-truth)"
        )
    return notes


# --------------------------------------------------------------------------- output


def _fmt(value: Any, spec: str = ".2f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, str):  # "inf" as written to JSON
        return value
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def format_report(result: dict[str, Any]) -> str:
    """The terminal report: header, speed/memory table beside Table S1, fidelity table, notes."""
    img, model, settings = result["image"], result["model"], result["settings"]
    lines = []
    first = next(iter(result["modes"].values()))
    nw = max(14, *(len(name) + 2 for name in result["modes"]))
    src = (
        f"synthetic slide (seed {img.get('seed')}), IHC ground truth" if img.get("synthetic") else img["path"]
    )
    lines.append(
        f"dnrt bench: {img['width']} x {img['height']} px ({img['megapixels']:.1f} MP), {first['tiles']} tiles of "
        f"{first['tile']} + margin {first['margin']}; {src}"
    )
    arch = (
        f"{model['architecture']} {json.dumps(model['config'])}"
        if model.get("config")
        else model["architecture"]
    )
    lines.append(f"model:    {'demo model, ' if model.get('demo') else ''}{arch} ({model['bundle']})")
    lines.append(
        f"backend:  {settings['backend']}: {first['backend']}; batch {first['batch']}, {settings['precision']}"
    )
    la = result.get("load_average") or {}
    before, after = ((la.get(k) or [None])[0] for k in ("before", "after"))
    during = [x for x in la.get("during") or [] if x is not None]
    span = f", {min(during):.2f}-{max(during):.2f} during" if during else ""
    lines.append(
        f"machine:  {describe_machine(result['machine'])}; 1-min load average {_fmt(before)} before{span}, "
        f"{_fmt(after)} after"
    )
    lines.append(
        f"timing:   best of {settings['repeat']} interleaved rounds, each mode in a fresh process; wall = "
        "translate() file to file (model load, TIFF read, inference, TIFF write)"
    )
    lines.append("")
    head = (
        f"{'mode':<{nw}}{'wall s':>8}{'compute s':>10}{'tiles/s':>9}{'MP/s':>7}{'RSS MB':>8}{'GPU MB':>8}"
        f"{'x IN':>7}  |{'paper s':>8}{'x IN':>6}{'GPU MB':>8}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for name, m in result["modes"].items():
        p = m.get("paper") or {}
        lines.append(
            f"{name:<{nw}}{_fmt(m['wall_s']):>8}{_fmt(m['compute_s']):>10}{_fmt(m['tiles_per_s'], '.1f'):>9}"
            f"{_fmt(m['megapixels_per_s'], '.2f'):>7}{_fmt(m['peak_rss_mb'], '.0f'):>8}{_fmt(m['gpu_peak_mb'], '.0f'):>8}"
            f"{_fmt(m.get('wall_vs_in')):>7}  |{_fmt(p.get('runtime_s')):>8}{_fmt(p.get('runtime_vs_in')):>6}"
            f"{_fmt(p.get('gpu_mb'), '.0f'):>8}"
        )
    whole = result["reference"].get("whole")
    if whole and "error" not in whole:
        lines.append(
            f"{'whole image':<{nw}}{_fmt(whole['wall_s']):>8}{'':>10}{'':>9}{'':>7}"
            f"{_fmt(whole['peak_rss_mb'], '.0f'):>8}{_fmt(_get(whole, 'gpu', 'process_peak_mb'), '.0f'):>8}"
        )
    lines.append(f"right of |: {PAPER_NOTE}. x IN: ratio to IN measured in this run.")

    if any("fidelity" in m for m in result["modes"].values()):
        lines.append("")
        head = (
            f"{'mode':<{nw}}{'seam':>7}{'global':>8}{'jump':>7}  |{'PSNR GT':>8}{'SSIM GT':>8}{'colour':>8}"
            f"{'worst':>7}  |{'MAE whole':>10}{'PSNR whole':>11}"
        )
        lines.append(head)
        lines.append("-" * len(head))
        ref = result["reference"]
        rows = [(name, m.get("fidelity", {})) for name, m in result["modes"].items()]
        if ref.get("whole") and "seam" in ref["whole"]:
            rows.append(
                (
                    "whole image",
                    {"seam": ref["whole"]["seam"], "vs_ground_truth": ref["whole"].get("vs_ground_truth")},
                )
            )
        if ref.get("ground_truth"):
            rows.append(("ground truth", {"seam": ref["ground_truth"]["seam"]}))
        for name, f in rows:
            gt = f.get("vs_ground_truth") or {}
            wh = f.get("vs_whole") or {}
            lines.append(
                f"{name:<{nw}}{_fmt(_get(f, 'seam', 'score'), '.3f'):>7}{_fmt(_get(f, 'seam', 'global_score'), '.3f'):>8}"
                f"{_fmt(_get(f, 'seam', 'excess'), '.2f'):>7}  |"
                f"{_fmt(gt.get('psnr')):>8}{_fmt(gt.get('ssim'), '.4f'):>8}{_fmt(gt.get('colour_error')):>8}"
                f"{_fmt(gt.get('worst_block_error'), '.1f'):>7}  |"
                f"{_fmt(wh.get('mae'), '.3f'):>10}{_fmt(wh.get('psnr')):>11}"
            )
        lines.append(
            "seam: boundary / near-boundary gradient (1 = invisible seams; the ground truth's own value is "
            "the noise floor); global: boundary / all interior pairs; jump: boundary - near, 8-bit units."
        )
        lines.append(
            "GT: against the ground-truth IHC rendering; colour / worst: mean and largest |error| of 64 px "
            "block colours; whole: against whole-image inference."
        )

    if result.get("expectations"):
        lines.append("expectations (checked, not assumed):")
        for name, e in result["expectations"].items():
            detail = ", ".join(
                f"{k} {_fmt(v, '.3f') if isinstance(v, float) else v}"
                for k, v in e.items()
                if k not in ("met", "others", "measure")
            )
            others = ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in (e.get("others") or {}).items())
            lines.append(
                f"  {name}: {'yes' if e['met'] else 'NO'} ({detail}{'; ' + others if others else ''})"
            )
    for note in result.get("not_measured", []):
        lines.append(f"not measured: {note}")
    return "\n".join(lines)


def markdown_report(result: dict[str, Any]) -> str:
    """The terminal report as a Markdown page (for ``benchmarks/results/``)."""
    machine = result["machine"]
    versions_line = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
    lines = [
        f"# dnrt bench: {result['image']['width']} x {result['image']['height']}, "
        f"{result['settings']['backend']}, {describe_machine(machine)}",
        "",
        f"- started: {result.get('started')}",
        f"- command: `{result.get('command') or 'dnrt bench'}`",
        f"- platform: {machine.get('platform')}",
        f"- versions: {versions_line}",
        "",
        "```",
        format_report(result),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
            return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    from dnrt.atomic import write_file_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, json.dumps(clean(result), indent=2) + "\n")
