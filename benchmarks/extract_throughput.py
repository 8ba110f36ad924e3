"""Throughput of the extraction job: the Ray Data job against a plain single-process loop (figures, not a test).

    python benchmarks/extract_throughput.py                      # CPU: tiny models, synthetic city at 64 px
    python benchmarks/extract_throughput.py --device cuda --models paper-random --side 512 --strategy inpaint

Phases, each printed as soon as it ends (a watchdog exits after --timeout-s, so it never hangs):
1. photos: a synthetic city rendered at --side (--unique captures), saved as JPEG and copied to --images files;
2. plain loop: one process, one image at a time (decode, models, encode), --loop-precision (fp32: the naive
   baseline), over --loop-images photos;
3. (CUDA) GPU only, per --gpu-only (default eager,compile): the fused chain on one batch of the decoded photos,
   no I/O: the bound the job could reach; it prints the first batch's time (cudnn autotuning, compilation) apart.
   Compiling here fills --compile-cache, which the Ray job's compiled variants then reuse, as a second job on a
   machine or a cluster with a shared cache would;
4. the Ray job (jobs/extract.py's run_extract), decode to Parquet, model loading included, with the GPU's mean
   utilisation while it ran (pynvml or nvidia-smi), per --variants (default: cpu fused,pools; cuda
   fused+compile,fused+compile,fused+compile+mt; a run that would start with under --min-job-s left is skipped;
   a variant named twice runs twice: for a compiled job, once with a cold and once with a warm cache). After the
   last run of the first variant, it is rerun on a quarter of the photos: the steady rate without start-up is
   (N - n) / (T_N - T_n). Last, each job's ratio to the plain loop.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

T0 = time.perf_counter()
CUDA_VARIANTS = "fused+compile,fused+compile,fused+compile+mt"


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", flush=True)


def watchdog(seconds: float) -> None:
    def fire():
        say(f"TIMEOUT after {seconds:.0f} s: exiting (figures above are valid)")
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def left(args) -> float:
    return args.timeout_s - (time.perf_counter() - T0)


class GpuSampler:
    """Samples GPU utilisation every 200 ms (pynvml, else nvidia-smi) in the background; mean over a window."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._read = self._nvml() or self._smi()
        if self._read:
            threading.Thread(target=self._loop, daemon=True).start()

    @staticmethod
    def _nvml():
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            return None

    @staticmethod
    def _smi():
        if shutil.which("nvidia-smi") is None:
            return None

        def read():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5)
            return float(out.stdout.split()[0])

        return read

    def _loop(self):
        while not self._stop.wait(0.2):
            try:
                self.samples.append((time.perf_counter(), self._read()))
            except Exception:
                return

    def mean(self, start: float, end: float) -> str:
        values = [u for t, u in self.samples if start <= t <= end]
        return f"{np.mean(values):.0f}% (n={len(values)})" if values else "n/a"


def make_photos(args, work: Path) -> str:
    """A manifest of --images JPEG files, copies of --unique synthetic-city captures rendered at --side."""
    from PIL import Image

    from vprlib.data.manifest import write_manifest
    from vprlib.demo.city import CityConfig, generate_city

    city = work / "city"
    places = max(2, math.ceil(args.unique / 16))  # 16 captures per place (8 headings, 2 visits)
    manifest = generate_city(CityConfig(places=places, side=args.side, workers=0), str(city))
    uris = manifest["uri"].to_pylist()[: args.unique]
    jpegs = []
    for uri in uris:
        buffer = io.BytesIO()
        Image.open(city / uri).convert("RGB").save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    photos = work / "photos"
    photos.mkdir(exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(args.images)]
    for i, name in enumerate(names):
        (photos / name).write_bytes(jpegs[i % len(jpegs)])
    rng = np.random.default_rng(0)
    table = pa.table({"image_id": [n[:-4] for n in names], "uri": [str(photos / n) for n in names],
                      "lat": 51.5 + rng.uniform(0, 0.01, len(names)), "lon": -0.1 + rng.uniform(0, 0.01, len(names))})
    path = work / "manifest.parquet"
    write_manifest(table, str(path))
    return str(path)


def job_config(args, manifest: str, output: str, **overrides):
    from vprlib.extract.config import extract_config

    options = dict(input=manifest, output=output, strategy=args.strategy, models=args.models, side=args.side,
                   device=args.device, precision=args.precision, batch_size=args.batch_size,
                   decode_batch_size=args.decode_batch_size, rows_per_file=args.rows_per_file,
                   compile=args.compile, actor_threads=args.actor_threads,
                   prefetch_batches=args.prefetch_batches, max_failure_fraction=1.0)
    options.update(overrides)
    return extract_config(**options)


def plain_loop(args, manifest: str, sampler: GpuSampler) -> float:
    """One process, one image at a time: decode, the fused chain at batch 1, encode; write one Parquet file."""
    import pyarrow.parquet as pq
    import torch

    from vprlib.data.manifest import read_manifest
    from vprlib.extract.decode import load_image
    from vprlib.extract.stages import FusedChain
    from vprlib.maps import encode_depth, encode_seg

    uris = read_manifest(manifest)["uri"].to_pylist()[: args.loop_images]
    config = job_config(args, manifest, "unused", precision=args.loop_precision, compile=False)
    start = time.perf_counter()
    chain = FusedChain(config.spec, config.run)
    say(f"plain loop: models loaded in {time.perf_counter() - start:.1f} s ({args.loop_precision}, batch 1)")
    chain.compute({"image": load_image(uris[0], args.side)[None]})  # warm-up (allocator, cudnn)
    rows = []
    start = time.perf_counter()
    for uri in uris:
        maps = chain.compute({"image": load_image(uri, args.side)[None]})
        rows.append({"uri": uri, "depth": encode_depth(maps["depth"][0]), "seg": encode_seg(maps["seg"][0])})
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(args.work_dir, "plain_loop.parquet"),
                   compression="zstd")
    end = time.perf_counter()
    rate = len(uris) / (end - start)
    say(f"RESULT plain loop: {len(uris)} images in {end - start:.1f} s = {rate:.2f} images/s; "
        f"GPU util {sampler.mean(start, end)}")
    del chain
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rate


def gpu_only(args, manifest: str, sampler: GpuSampler, mode: str) -> None:
    """The fused chain on one batch of the decoded photos, again and again: what the GPU work alone sustains."""
    import torch

    from vprlib.data.manifest import read_manifest
    from vprlib.extract.decode import load_image
    from vprlib.extract.stages import FusedChain

    compiled = mode == "compile"
    config = job_config(args, manifest, "unused", compile=compiled)
    chain = FusedChain(config.spec, config.run)
    uris = read_manifest(manifest)["uri"].to_pylist()[: args.batch_size]
    images = np.stack([load_image(uri, args.side) for uri in uris])
    start = time.perf_counter()
    chain.compute({"image": images})  # first batch: cudnn autotuning, and compilation with compile
    first = time.perf_counter() - start
    batches = max(2, args.gpu_only_images // args.batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        chain.compute({"image": images})
    end = time.perf_counter()
    rate = batches * args.batch_size / (end - start)
    detail = ""
    if compiled:
        from torch._dynamo.utils import counters

        breaks = sum(counters["graph_break"].values())
        detail = (f"; {counters['stats']['unique_graphs']} graphs, {breaks} graph breaks, cache "
                  f"{os.environ.get('TORCHINDUCTOR_CACHE_DIR')}")
    precision = config.run.precision if args.device == "cuda" else "fp32"
    say(f"RESULT {args.device.upper()} only ({mode} {precision}, batch {args.batch_size}, host copies included, no "
        f"decode/encode): {rate:.1f} images/s; GPU util {sampler.mean(start, end)}; first batch {first:.1f} s{detail}")
    del chain
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def ray_job(args, manifest: str, variant: str, sampler: GpuSampler, tag: str = "") -> tuple[float, float, int]:
    """One Ray job run; a variant is a mode plus options: "+compile", "+x2" (2 actors sharing the GPU, so one's host
    work overlaps the other's kernels), "+mt" (2 batches at once per actor, each on its own CUDA stream), "+nobench"
    (cudnn's heuristics instead of its autotuner), e.g. fused+compile+x2."""
    from vprlib.extract.pipeline import run_extract

    output = os.path.join(args.work_dir, f"maps-{variant.replace('+', '-')}{tag}")
    shutil.rmtree(output, ignore_errors=True)
    mode, *extras = variant.split("+")
    unknown = set(extras) - {"compile", "x2", "mt", "nobench"}
    if unknown:
        raise ValueError(f"unknown variant option(s) {sorted(unknown)} in {variant!r}; known: compile, x2, mt, "
                         f"nobench")
    actors = 2 if "x2" in extras else 1
    config = job_config(args, manifest, output, mode=mode, compile=args.compile or "compile" in extras,
                        actors=actors, gpus_per_actor=1.0 / actors, concurrent_batches="mt" in extras,
                        actor_threads=max(2, args.actor_threads) if "mt" in extras else args.actor_threads,
                        cudnn_benchmark="nobench" not in extras)
    start = time.perf_counter()
    summary = run_extract(config)
    end = time.perf_counter()
    rate = summary["images_per_s"]
    run = config.run
    say(f"RESULT Ray job ({variant}{tag}, {run.precision}, batch {run.batch_size}, compile={run.compile}, "
        f"threads={run.actor_threads}, concurrent={run.concurrent_batches}, actors={run.actors}, "
        f"cudnn.benchmark={run.cudnn_benchmark}): "
        f"{summary['rows_this_run']} images, {rate:.2f} images/s end to end (decode to Parquet, model loading "
        f"included; {end - start:.1f} s in run_extract); ok {summary['rows_ok']}, failed {summary['rows_failed']}; "
        f"GPU util {sampler.mean(start, end)}")
    shutil.rmtree(output, ignore_errors=True)  # ~1 MB per map at 512: do not fill the disk across variants
    return rate, end - start, summary["rows_this_run"]


def marginal_rate(args, manifest: str, variant: str, sampler: GpuSampler, full: tuple) -> float:
    """Steady rate without start-up: the same job on a quarter of the photos, then (N - n) / (T_N - T_n)."""
    import pyarrow.parquet as pq

    small = os.path.join(args.work_dir, "manifest-quarter.parquet")
    table = pq.read_table(manifest)
    pq.write_table(table.slice(0, table.num_rows // 4), small)
    _, seconds, rows = ray_job(args, small, variant, sampler, tag="-quarter")
    if full[1] > seconds and full[2] > rows:
        rate = (full[2] - rows) / (full[1] - seconds)
        startup = seconds - rows / rate
        say(f"RESULT Ray job ({variant}) marginal rate, start-up excluded: {rate:.1f} images/s "
            f"(({full[2]} - {rows}) images / ({full[1]:.1f} - {seconds:.1f}) s); start-up about {startup:.1f} s")
        return rate
    return 0.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default="tiny", help="tiny, paper-random, paper or a folder")
    parser.add_argument("--strategy", default="inpaint", choices=["inpaint", "synthetic", "none"])
    parser.add_argument("--side", type=int, default=None, help="map side (default: 64 on cpu, 512 on cuda)")
    parser.add_argument("--images", type=int, default=None, help="photos for the Ray job (cpu 512, cuda 1536)")
    parser.add_argument("--unique", type=int, default=64, help="distinct rendered captures the photos copy")
    parser.add_argument("--loop-images", type=int, default=None, help="photos for the plain loop (cpu 48, cuda 64)")
    parser.add_argument("--loop-precision", default=None, choices=["fp32", "bf16"], help="default fp32")
    parser.add_argument("--gpu-only-images", type=int, default=256, help="CUDA: images per GPU-only run (0 off)")
    parser.add_argument("--gpu-only", default=None,
                        help="chain-only runs (no I/O), comma-separated from eager, compile (cuda default: both; cpu: "
                        "none)")
    parser.add_argument("--compile-cache", default="",
                        help="torch.compile's cache folder (default: WORK/compile-cache, cold at the start)")
    parser.add_argument("--variants", default=None,
                        help="Ray job runs, comma-separated, each a mode (fused, pools) optionally +compile "
                        f"(default: cpu fused,pools; cuda {CUDA_VARIANTS})")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=None, help="model batch (cpu 8, cuda 32)")
    parser.add_argument("--decode-batch-size", type=int, default=8)
    parser.add_argument("--rows-per-file", type=int, default=None, help="default: 2 model batches")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--actor-threads", type=int, default=2)
    parser.add_argument("--prefetch-batches", type=int, default=4)
    parser.add_argument("--work-dir", default="", help="where photos and maps go (default: a temporary folder)")
    parser.add_argument("--timeout-s", type=float, default=570.0, help="exit (status 3) after this many seconds")
    parser.add_argument("--marginal", action=argparse.BooleanOptionalAction, default=True,
                        help="after the first variant, rerun it on a quarter of the photos for the start-up-free rate")
    parser.add_argument("--min-job-s", type=float, default=90.0, help="skip a Ray job run with less time left")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.side = args.side or (512 if cuda else 64)
    args.images = args.images or (1536 if cuda else 512)
    args.loop_images = args.loop_images or (64 if cuda else 48)
    args.loop_precision = args.loop_precision or "fp32"
    args.variants = args.variants or (CUDA_VARIANTS if cuda else "fused,pools")
    args.batch_size = args.batch_size or (32 if cuda else 8)
    args.gpu_only = ("eager,compile" if cuda else "") if args.gpu_only is None else args.gpu_only
    args.rows_per_file = args.rows_per_file or 2 * args.batch_size
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="extract-bench-")
    args.compile_cache = os.path.abspath(args.compile_cache or os.path.join(args.work_dir, "compile-cache"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    watchdog(args.timeout_s)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    say(f"config: {json.dumps({k: v for k, v in vars(args).items()})}")
    say(f"torch {torch.__version__}, cuda available {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "") + f", {os.cpu_count()} CPUs")
    sampler = GpuSampler()
    work = Path(args.work_dir)
    start = time.perf_counter()
    manifest = make_photos(args, work)
    seconds = time.perf_counter() - start
    say(f"photos: {args.images} JPEGs at {args.side} px ({args.unique} distinct) in {seconds:.1f} s")
    loop_rate = plain_loop(args, manifest, sampler)
    # This process and the local Ray cluster it starts (its workers inherit this environment) share one compile
    # cache. Not through --compile-cache, which goes by runtime_env: untried with the GPU machine's bare Ray wheels.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.compile_cache
    for mode in [m.strip() for m in args.gpu_only.split(",") if m.strip()]:
        if args.gpu_only_images and left(args) > 120:
            try:
                gpu_only(args, manifest, sampler, mode)
            except Exception as exc:  # e.g. a compile failure must not cost the Ray job's figures
                say(f"RESULT GPU only ({mode}) FAILED: {type(exc).__name__}: {exc}")
    import ray

    root = str(Path(__file__).resolve().parents[1])  # workers find vprlib even where it is not pip-installed
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(include_dashboard=False, logging_level="WARNING")
    say(f"ray {ray.__version__}: {ray.cluster_resources()}")
    rates = {}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    marginal_after = max(i for i, v in enumerate(variants) if v == variants[0]) if variants else -1
    for i, variant in enumerate(variants):
        if left(args) < args.min_job_s:
            say(f"skipping Ray job ({variant}): {left(args):.0f} s left")
            continue
        run = variants[:i].count(variant) + 1  # a repeated variant, e.g. a compiled job again with a warm cache
        name = variant if run == 1 else f"{variant}, run {run}"
        try:
            result = ray_job(args, manifest, variant, sampler, tag="" if run == 1 else f"-run{run}")
            rates[name] = result[0]
            if i == marginal_after and args.marginal and left(args) > args.min_job_s:
                rates[f"{name}, start-up excluded"] = marginal_rate(args, manifest, variant, sampler, result)
        except Exception as exc:  # one variant failing must not cost the others' figures
            say(f"RESULT Ray job ({name}) FAILED: {type(exc).__name__}: {exc}")
    for variant, rate in rates.items():
        say(f"RESULT ratio Ray job ({variant}) / plain loop: {rate / loop_rate:.2f}x "
            f"({rate:.2f} vs {loop_rate:.2f} images/s, {args.device})")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
