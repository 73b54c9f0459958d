"""LLM speed: mlxarm.lm on each executor beside llama.cpp, mlx-lm on real MLX and HF transformers, on the
same model, the same machine and the same thread count, in one run.

For every system: prefill tokens/s of a ``--prompt-tokens`` prompt (128), decode tokens/s over
``--gen-tokens`` greedy steps (64, never stopping at end-of-text; measured after a warm-up generation of
three tokens, ``_measure``), time to first token in a fresh process
(for mlxarm twice: with an empty kernel cache, which that process then fills with every kernel the runs
use, and with the cache it filled), and the process's peak RSS (for mlxarm the warm process's, and in
parentheses the cold one's: compiling loads LLVM, which a process finding every kernel cached never does). For mlxarm
on the LLVM executor also the host (Python) time of a decode step: its wall time less the time spent in
native code (its compiled program and the replayed sampling kernels). Every system runs in its own process, so RSS and first-token times are its own.

The peers live in their own venv (``--peers-venv``, default benchmarks/.peers; ``--setup-peers`` creates it:
llama-cpp-python, which builds llama.cpp from source once (about 10 minutes), mlx[cpu] with mlx-lm, torch
2.13.0 CPU with transformers, accelerate and gguf). mlx-lm runs on MLX-format folders made from the same GGUF by
``mlxarm-lm convert`` (float32, and 4-bit group 32), so every system computes the same model.

    python benchmarks/lm.py [--model GGUF] [--devices llvm,numpy] [--peers llama.cpp,mlx-lm,transformers]
                            [--threads 2] [--rounds 1] [--setup-peers]

With ``--rounds N`` mlxarm's warm processes and llama.cpp's take turns N times and each is reported by
its median round (all rounds are in the JSON): on a shared machine, speed drifts over minutes.

Results: benchmarks/results/lm.json and lm.png.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER_PACKAGES = ["llama-cpp-python", "mlx[cpu]", "mlx-lm", "torch==2.13.0", "transformers", "accelerate", "gguf"]
# A prompt long enough for any --prompt-tokens up to a few hundred; cut to the exact token count.
TEXT = ("The history of computing is a story of people who wanted machines to do arithmetic for them. "
        "Early mechanical calculators added and multiplied with gears; later, punched cards stored "
        "programs and data, and electronic computers replaced relays with vacuum tubes, then transistors, "
        "then integrated circuits holding billions of switches. Each step made computers smaller, cheaper "
        "and faster, until a phone in a pocket held more power than the machines that sent people to the "
        "moon. Today the same ideas run language models on laptops, phones and small boards: a model is a "
        "long list of numbers, and generating text means multiplying those numbers by a vector, one token "
        "at a time, as fast as memory can deliver them. ") * 4


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _emit(result: dict) -> None:
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    print("RESULT " + json.dumps(result), flush=True)


def _measure(run, n_prompt: int, options, result: dict) -> dict:
    """Time to first token from a first ``run(1)`` in the process, then, after a warm-up run of three
    tokens (two decode steps: mlxarm traces its compiled decode step and captures its program there,
    and keeps them for later generations, as a chat's next turn would), prefill and decode speed from a
    run of ``gen_tokens`` more tokens; ``run(n)`` returns its start time and one time stamp per token
    produced (the first right after the prompt). Every system gets the same runs."""
    start, stamps = run(1)
    result["ttft_s"] = stamps[0] - start
    run(3)  # with an empty kernel cache, this fills it with the decode step's kernels too
    if not options.first_token_only:
        start, stamps = run(options.gen_tokens + 1)
        result["prefill_tps"] = n_prompt / (stamps[0] - start)
        result["decode_tps"] = options.gen_tokens / (stamps[-1] - stamps[0])
    return result


# --- workers (each runs in its own process) --------------------------------------------------------------

def worker_mlxarm(options, ids: list) -> None:
    import statistics

    import mlxarm.core  # noqa: F401
    from mlxarm import lm
    from mlxarm.backend import executor_for
    from mlxarm.lm.generate import generate_step

    t0 = time.perf_counter()
    model, _ = lm.load(options.model)
    load_s = time.perf_counter() - t0
    result = {"load_s": load_s}
    ex = executor_for(None)
    natives: list = []  # per token: the executor's native seconds so far (compiled programs' driver calls)

    def run(n_gen):
        start = time.perf_counter()
        stamps = []
        natives.clear()
        for _token, _ in generate_step(ids, model, max_tokens=n_gen):
            stamps.append(time.perf_counter())
            natives.append(getattr(ex, "native_seconds", None))
        return start, stamps

    def timed(n_gen):
        start, stamps = run(n_gen)
        if natives and natives[0] is not None and len(stamps) > 4:
            # Host (Python) time of a decode step: its wall time less its native time (the program and the
            # replayed sampling kernels), over the steps after the first two (which trace the compiled
            # step and capture its program).
            result["host_ms_per_step"] = 1e3 * statistics.median(
                (stamps[i] - stamps[i - 1]) - (natives[i] - natives[i - 1]) for i in range(3, len(stamps)))
        return start, stamps

    _measure(timed, len(ids), options, result)
    _emit(result)


def worker_llamacpp(options, ids: list) -> None:
    import numpy as np
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=options.model, n_ctx=len(ids) + options.gen_tokens + 8, n_batch=512,
                n_threads=options.threads, n_threads_batch=options.threads, verbose=False)
    result = {"load_s": time.perf_counter() - t0}

    n_vocab = llm.n_vocab()

    def last_logits():  # the batch asked for the last token's logits only: row 0
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def run(n_gen):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        token = int(np.argmax(last_logits()))
        stamps = [time.perf_counter()]
        for _ in range(n_gen):
            llm.eval([token])
            token = int(np.argmax(last_logits()))
            stamps.append(time.perf_counter())
        return start, stamps

    _emit(_measure(lambda n: run(n - 1), len(ids), options, result))


def worker_mlxlm(options, ids: list) -> None:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    mx.set_default_device(mx.cpu)
    t0 = time.perf_counter()
    model, _ = load(options.model)
    result = {"load_s": time.perf_counter() - t0}

    def run(n_gen):
        start = time.perf_counter()
        stamps = []
        for _ in generate_step(mx.array(ids, mx.uint32), model, max_tokens=n_gen):
            stamps.append(time.perf_counter())
        return start, stamps

    _emit(_measure(run, len(ids), options, result))


def worker_transformers(options, ids: list) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(options.threads)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(options.model),
                                                 gguf_file=os.path.basename(options.model),
                                                 torch_dtype=torch.float32)
    model.eval()
    result = {"load_s": time.perf_counter() - t0}

    @torch.inference_mode()
    def run(n_gen):
        start = time.perf_counter()
        out = model(torch.tensor([ids]), use_cache=True)
        past, token = out.past_key_values, out.logits[0, -1].argmax()
        stamps = [time.perf_counter()]
        for _ in range(n_gen):
            out = model(token.view(1, 1), past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[0, -1].argmax()
            stamps.append(time.perf_counter())
        return start, stamps

    _emit(_measure(lambda n: run(n - 1), len(ids), options, result))


WORKERS = {"mlxarm": worker_mlxarm, "llama.cpp": worker_llamacpp, "mlx-lm": worker_mlxlm,
           "transformers": worker_transformers}


# --- the driver ---------------------------------------------------------------------------------------

def _spawn(python: str, worker: str, model: str, ids: list, options, env: dict, first_token_only=False):
    cmd = [python, os.path.abspath(__file__), "--worker", worker, "--model", model,
           "--threads", str(options.threads), "--gen-tokens", str(options.gen_tokens), "--ids", json.dumps(ids)]
    if first_token_only:
        cmd.append("--first-token-only")
    full_env = dict(os.environ, **env)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MLXARM_THREADS"):
        full_env[var] = str(options.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=options.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def setup_peers(venv: str) -> None:
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    print(f"installing the peers into {venv} (llama-cpp-python builds llama.cpp: about 10 minutes once)",
          flush=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q"] + PEER_PACKAGES, check=True)


def _has(python: str, module: str) -> bool:
    return os.path.exists(python) and subprocess.run(
        [python, "-c", f"import {module}"], capture_output=True).returncode == 0


def _converted(options, out_dir: str) -> dict:
    """MLX-format folders of the model for mlx-lm: name -> folder (made once, by mlxarm-lm convert)."""
    made = {}
    for name, extra in (("float32", ["--dtype", "float32"]), ("4-bit", ["-q", "--q-bits", "4",
                                                                         "--q-group-size", "32"])):
        folder = os.path.join(out_dir, f"mlx-{name}")
        if not os.path.exists(os.path.join(folder, "config.json")):
            proc = subprocess.run([sys.executable, "-m", "mlxarm.lm", "convert", "--model", options.model,
                                   "--mlx-path", folder] + extra, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"  convert ({name}) failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
        made[name] = folder
    return made


def plot(results: list, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in results if "decode_tps" in r]
    if not rows:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.5))
    names = [r["system"] for r in rows]
    for ax, key, title in ((axes[0], "prefill_tps", "prefill tokens/s"), (axes[1], "decode_tps",
                                                                           "decode tokens/s")):
        ax.barh(names, [r[key] for r in rows], color=["C0" if n.startswith("mlxarm") else "C7" for n in names])
        ax.set_title(title)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: the embedded model)")
    parser.add_argument("--devices", default="llvm,numpy", help="mlxarm executors to run, comma-separated")
    parser.add_argument("--peers", default="llama.cpp,mlx-lm,transformers")
    parser.add_argument("--peers-venv", default=os.path.join(HERE, ".peers"))
    parser.add_argument("--setup-peers", action="store_true", help="create the peers' venv first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed to each process")
    parser.add_argument("--rounds", type=int, default=1,
                        help="warm runs of mlxarm and llama.cpp, taking turns; each reports its median")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--first-token-only", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)

    if options.worker:
        WORKERS[options.worker](options, json.loads(options.ids))
        return 0

    sys.path.insert(0, ROOT)
    from mlxarm import lm

    options.model = os.path.abspath(options.model or lm.default_model_path())
    _, tokenizer = lm.load(options.model)
    ids = tokenizer.encode(TEXT)[:options.prompt_tokens]
    if len(ids) < options.prompt_tokens:
        parser.error(f"the benchmark text has only {len(ids)} tokens")
    if options.setup_peers:
        setup_peers(options.peers_venv)
    os.makedirs(options.out, exist_ok=True)
    peer_python = os.path.join(options.peers_venv, "bin", "python")
    size_mb = os.path.getsize(options.model) / 2**20
    print(f"model {os.path.basename(options.model)} ({size_mb:.0f} MiB), prompt {len(ids)} tokens, "
          f"{options.gen_tokens} decoded, {options.threads} threads", flush=True)

    results = []

    def record(system, result):
        result["system"] = system
        results.append(result)
        if "error" in result:
            print(f"{system:28s} failed: {result['error']}", flush=True)
            return
        extra = f", host {result['host_ms_per_step']:.2f} ms/step" if "host_ms_per_step" in result else ""
        cold = f", first token cold {result['ttft_cold_s']:.2f} s" if "ttft_cold_s" in result else ""
        if "peak_rss_cold_mb" in result:
            extra = f" ({result['peak_rss_cold_mb']:.0f} MB cold)" + extra
        print(f"{system:28s} prefill {result.get('prefill_tps', 0):8.1f} tok/s  decode "
              f"{result.get('decode_tps', 0):7.2f} tok/s  first token {result['ttft_s']:.2f} s{cold}  "
              f"peak RSS {result['peak_rss_mb']:.0f} MB{extra}", flush=True)

    # mlxarm's warm processes and llama.cpp's take turns, ``--rounds`` times: each is reported by its
    # median round (by decode speed), so a stretch of a busy machine does not fall on one of them only.
    peers = [p for p in options.peers.split(",") if p]
    rounds: dict = {}
    colds: dict = {}
    with tempfile.TemporaryDirectory() as caches:
        devices = [d for d in options.devices.split(",") if d]
        for device in devices:
            env = {"MLXARM_DEVICE": device, "XDG_CACHE_HOME": os.path.join(caches, device)}
            colds[device] = _spawn(sys.executable, "mlxarm", options.model, ids, options, env, first_token_only=True)
        llama = "llama.cpp" in peers and _has(peer_python, "llama_cpp")
        if "llama.cpp" in peers and not llama:
            print(f"llama.cpp: llama_cpp is not importable from {peer_python} (use --setup-peers)")
        for _ in range(max(1, options.rounds)):
            for device in devices:
                env = {"MLXARM_DEVICE": device, "XDG_CACHE_HOME": os.path.join(caches, device)}
                rounds.setdefault(f"mlxarm {device}", []).append(
                    _spawn(sys.executable, "mlxarm", options.model, ids, options, env))
            if llama:
                rounds.setdefault("llama.cpp (GGUF Q4_1)", []).append(
                    _spawn(peer_python, "llama.cpp", options.model, ids, options, {}))
    for system, runs in rounds.items():
        good = sorted((r for r in runs if "error" not in r), key=lambda r: r["decode_tps"])
        result = good[len(good) // 2] if good else runs[0]
        if len(runs) > 1:
            result["rounds"] = [{k: r.get(k) for k in ("prefill_tps", "decode_tps", "ttft_s")} for r in runs]
        cold = colds.get(system[len("mlxarm "):]) if system.startswith("mlxarm ") else None
        if cold is not None and "error" not in result and "error" not in cold:
            result["ttft_cold_s"] = cold["ttft_s"]
            result["peak_rss_cold_mb"] = cold["peak_rss_mb"]  # compiling: the compiler is loaded
        record(system, result)
        if len(runs) > 1:
            print(" " * 29 + "rounds (prefill/decode tok/s): "
                  + ", ".join(f"{r.get('prefill_tps', 0):.1f}/{r.get('decode_tps', 0):.2f}" for r in runs))
    if "mlx-lm" in peers:
        if _has(peer_python, "mlx_lm"):
            for name, folder in _converted(options, options.out).items():
                record(f"mlx-lm on MLX CPU ({name})", _spawn(peer_python, "mlx-lm", folder, ids, options, {}))
        else:
            print(f"mlx-lm: mlx_lm is not importable from {peer_python} (use --setup-peers)")
    if "transformers" in peers:
        if _has(peer_python, "transformers") and _has(peer_python, "torch"):
            record("HF transformers (torch f32)",
                   _spawn(peer_python, "transformers", options.model, ids, options, {}))
        else:
            print(f"transformers: transformers/torch are not importable from {peer_python} (use --setup-peers)")

    base = next((r for r in results if r["system"].startswith("llama.cpp") and "decode_tps" in r), None)
    if base:
        print(f"\nratios to llama.cpp (decode / prefill):")
        for r in results:
            if "decode_tps" in r:
                print(f"  {r['system']:28s} {r['decode_tps'] / base['decode_tps']:6.3f}x / "
                      f"{r['prefill_tps'] / base['prefill_tps']:6.3f}x")
    out = {"model": os.path.basename(options.model), "model_mb": size_mb, "prompt_tokens": len(ids),
           "gen_tokens": options.gen_tokens, "threads": options.threads, "results": results}
    with open(os.path.join(options.out, "lm.json"), "w") as f:
        json.dump(out, f, indent=2)
    if plot(results, os.path.join(options.out, "lm.png")):
        print(f"wrote {os.path.join(options.out, 'lm.json')} and lm.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
