"""LLM speed on a GPU: mlxarm.lm on the Vulkan and OpenCL executors beside PyTorch on CUDA (HF
transformers when it is importable, else a plain PyTorch llama), on the same card in one run.

The model is SmolLM2-135M-shaped (a llama: hidden 576, 30 layers, ffn 1536, 9 heads, 3 key/value heads,
vocabulary 49152, tied embeddings, rope theta 100000) with random weights, built where the benchmark runs
(speed does not depend on the values, and the embedded 98 MB GGUF is too large to carry to the GPU
machine). mlxarm's copy is quantized as the GGUF is (linears 4-bit, the embedding 8-bit, groups of 32,
float16 scales and biases) with ``mlxarm.nn.quantize``, written as an MLX-format folder (config.json,
model.safetensors and a byte-level tokenizer.json) and read back by ``mlxarm.lm.load``. The peer runs
the same shapes dense, in float32 and in float16.

For every system: prefill tokens/s of a ``--prompt-tokens`` prompt (128), decode tokens/s over
``--gen-tokens`` greedy steps (64, never stopping at end-of-text; fewer when a run's decoding passes
``--decode-budget`` seconds), the median decode step, and time to first token in a fresh process
(for mlxarm twice: with an empty kernel cache and with a warm one). Every system runs in its own
process, measured as benchmarks/lm.py measures.

    source .gpu/enter.sh; python3 benchmarks/lm_gpu.py --out $OUT          # on the GPU machine
    python benchmarks/lm_gpu.py --prompt-tokens 16 --gen-tokens 4 --layers 2  # a smoke run anywhere

Results: DIR/lm_gpu.json and DIR/lm_gpu.png (DIR: ``--out``, default benchmarks/results).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from lm import TEXT, _emit  # noqa: E402  (the CPU benchmark's prompt text and result line)

# SmolLM2-135M's configuration (mlx-lm's llama keys); --layers replaces num_hidden_layers.
SHAPE = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
         "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-5,
         "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": True}
LINEAR_BITS, EMBEDDING_BITS, GROUP_SIZE = 4, 8, 32


# --- the model folder -------------------------------------------------------------------------------

def build_folder(folder: str, layers: int) -> dict:
    """Write the quantized random model as an MLX-format folder; returns its config."""
    import mlxarm.core as mx
    import mlxarm.nn as nn
    from mlxarm.lm.models import ARCHITECTURES
    from mlxarm.utils import tree_flatten

    module = ARCHITECTURES["llama"]
    args = module.ModelArgs(**dict(SHAPE, num_hidden_layers=layers))
    mx.random.seed(0)
    model = module.Model(args)
    # Uniform values like the linears' (the embedding's normal initializer is slow to sample on the host).
    model.model.embed_tokens.weight = mx.random.uniform(-0.1, 0.1, model.model.embed_tokens.weight.shape)

    def settings(_path, m):
        if isinstance(m, nn.Embedding):
            return {"group_size": GROUP_SIZE, "bits": EMBEDDING_BITS}
        return {"group_size": GROUP_SIZE, "bits": LINEAR_BITS} if isinstance(m, nn.Linear) else False

    nn.quantize(model, class_predicate=settings)
    # GGUF's Q4_1/Q8_0 blocks hold float16 scales and offsets; the loader keeps them so.
    weights = {name: value.astype(mx.float16) if name.endswith((".scales", ".biases")) else value
               for name, value in tree_flatten(model.parameters())}
    os.makedirs(folder, exist_ok=True)
    mx.save_safetensors(os.path.join(folder, "model.safetensors"), weights, metadata={"format": "mlx"})
    config = {k: v for k, v in dataclasses.asdict(args).items() if v is not None}
    config["quantization"] = {"group_size": GROUP_SIZE, "bits": LINEAR_BITS, "mode": "affine",
                              "model.embed_tokens": {"group_size": GROUP_SIZE, "bits": EMBEDDING_BITS}}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    from mlxarm.lm.tokenizer import _byte_symbols  # GPT-2's byte -> printable character map

    symbols = _byte_symbols()[0]
    tokenizer = {"model": {"type": "BPE", "vocab": {symbols[b]: b for b in range(256)}, "merges": []},
                 "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
                 "decoder": {"type": "ByteLevel"}}
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f)
    return config


# --- workers (each runs in its own process) -----------------------------------------------------------

def _timed(run, options) -> dict:
    """Time to first token of the process's first run, then prefill and decode rates of a later one,
    after two runs of four decode steps: they build the decode kernels (which a kernel cache keeps
    across runs) and the Vulkan pipelines of the bound decode step's buffers (``backend.gpu_bind``,
    built over a process's first two generations, kept by it). Each generation binds its decode step
    again in its first two steps, which are measured."""
    start, stamps = run(0)
    result = {"ttft_s": stamps[0] - start}
    if not options.first_token_only:
        run(4)
        run(4)
        start, stamps = run(options.gen_tokens)
        steps = [b - a for a, b in zip(stamps, stamps[1:])]
        result.update(prefill_tps=len(options.ids) / (stamps[0] - start), decoded=len(steps),
                      decode_tps=len(steps) / (stamps[-1] - stamps[0]) if steps else None,
                      decode_step_ms_median=1e3 * statistics.median(steps) if steps else None)
    return result


def worker_mlxarm(options) -> None:
    import mlxarm.core as mx
    from mlxarm import lm
    from mlxarm.lm.generate import generate_step

    t0 = time.perf_counter()
    model, _ = lm.load(options.model)
    result = {"load_s": time.perf_counter() - t0, "device_name": mx.device_info().get("device_name")}

    def run(n_gen):
        start = time.perf_counter()
        stamps = []
        for _token, _ in generate_step(options.ids, model, max_tokens=n_gen + 1):
            stamps.append(time.perf_counter())
            if stamps[-1] - stamps[0] > options.decode_budget:
                break
        return start, stamps

    result.update(_timed(run, options))
    _emit(result)


def _torch_eager_llama(torch, dtype, device, layers: int, weights: dict = None):
    """SmolLM2's forward pass in plain PyTorch (rmsnorm, rotary embedding, grouped-query attention over
    a preallocated key/value cache, SwiGLU MLP, tied output head); ``weights`` by Hugging Face's names,
    random when not given. Returns ``forward(ids (1, L), position) -> the last position's logits``."""
    import torch.nn.functional as F

    d, f, h, kv, v = (SHAPE[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                          "num_key_value_heads", "vocab_size"))
    hd, eps = d // h, SHAPE["rms_norm_eps"]
    if weights is None:
        gen = torch.Generator().manual_seed(0)
        shapes = {"model.embed_tokens": (v, d), "model.norm": (d,)}
        for i in range(layers):
            for name, shape in (("self_attn.q_proj", (h * hd, d)), ("self_attn.k_proj", (kv * hd, d)),
                                ("self_attn.v_proj", (kv * hd, d)), ("self_attn.o_proj", (d, h * hd)),
                                ("mlp.gate_proj", (f, d)), ("mlp.up_proj", (f, d)), ("mlp.down_proj", (d, f)),
                                ("input_layernorm", (d,)), ("post_attention_layernorm", (d,))):
                shapes[f"model.layers.{i}.{name}"] = shape
        weights = {f"{name}.weight": torch.randn(*shape, generator=gen) * shape[-1] ** -0.5 if len(shape) == 2
                   else torch.ones(shape) for name, shape in shapes.items()}
    w = {name: value.to(device, dtype) for name, value in weights.items()}
    embed = w["model.embed_tokens.weight"]
    blocks = [{key: w[f"model.layers.{i}.{name}.weight"] for key, name in (
        ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"), ("o", "self_attn.o_proj"),
        ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"), ("down", "mlp.down_proj"),
        ("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"))} for i in range(layers)]
    inv_freq = 1.0 / SHAPE["rope_theta"] ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd)
    cache_k = torch.zeros(layers, 1, kv, 4096, hd, device=device, dtype=dtype)
    cache_v = torch.zeros_like(cache_k)

    def rmsnorm(x, weight):
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)

    def rotate(x, cos, sin):
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(ids, position):
        n = ids.shape[1]
        angles = torch.outer(torch.arange(position, position + n, device=device, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        x = embed[ids]
        for i, b in enumerate(blocks):
            y = rmsnorm(x, b["norm1"])
            q = (y @ b["q"].T).view(1, n, h, hd).transpose(1, 2)
            k = (y @ b["k"].T).view(1, n, kv, hd).transpose(1, 2)
            val = (y @ b["v"].T).view(1, n, kv, hd).transpose(1, 2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            cache_k[i, :, :, position:position + n] = k
            cache_v[i, :, :, position:position + n] = val
            keys = cache_k[i, :, :, :position + n].repeat_interleave(h // kv, dim=1)
            values = cache_v[i, :, :, :position + n].repeat_interleave(h // kv, dim=1)
            # A prompt starts at position 0 (top-left causal mask); a decode step sees every cached key.
            att = F.scaled_dot_product_attention(q, keys, values, is_causal=n > 1)
            x = x + att.transpose(1, 2).reshape(1, n, h * hd) @ b["o"].T
            y = rmsnorm(x, b["norm2"])
            x = x + (F.silu(y @ b["gate"].T) * (y @ b["up"].T)) @ b["down"].T
        return rmsnorm(x[:, -1], w["model.norm.weight"]) @ embed.T

    return forward


def worker_torch(options) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32, as ours computes it
    torch.backends.cudnn.allow_tf32 = False
    dtype = {"float32": torch.float32, "float16": torch.float16}[options.dtype]
    device = torch.device("cuda")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    if options.worker == "transformers":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**dict({k: v for k, v in SHAPE.items() if k != "model_type"},
                                    num_hidden_layers=options.layers))
        model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()

        def run_model(ids, past):
            out = model(ids, past_key_values=past, use_cache=True)
            return out.logits[0, -1], out.past_key_values
    else:
        forward = _torch_eager_llama(torch, dtype, device, options.layers)

        def run_model(ids, position):
            return forward(ids, position)[0], position + ids.shape[1]
    torch.cuda.synchronize()
    result = {"load_s": time.perf_counter() - t0, "device_name": torch.cuda.get_device_name()}

    @torch.inference_mode()
    def run(n_gen):
        start = time.perf_counter()
        logits, state = run_model(torch.tensor([options.ids], device=device),
                                  None if options.worker == "transformers" else 0)
        token = int(logits.argmax())  # the host reads every token, as a generation loop does
        stamps = [time.perf_counter()]
        for _ in range(n_gen):
            logits, state = run_model(torch.tensor([[token]], device=device), state)
            token = int(logits.argmax())
            stamps.append(time.perf_counter())
            if stamps[-1] - stamps[0] > options.decode_budget:
                break
        return start, stamps

    result.update(_timed(run, options))
    result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    _emit(result)


WORKERS = {"mlxarm": worker_mlxarm, "transformers": worker_torch, "torch": worker_torch}


# --- the driver ---------------------------------------------------------------------------------------

def _spawn(worker: str, options, env: dict, first_token_only=False, dtype="float32") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--model", options.model,
           "--gen-tokens", str(options.gen_tokens), "--decode-budget", str(options.decode_budget),
           "--layers", str(options.layers), "--dtype", dtype, "--ids", json.dumps(options.ids)]
    if first_token_only:
        cmd.append("--first-token-only")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env),
                              timeout=options.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within --timeout {options.timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def _torch_peer() -> tuple:
    """(worker name, label prefix) of the CUDA peer, or (None, why not)."""
    probe = ("import torch, sys\n"
             "if not torch.cuda.is_available(): sys.exit('torch ' + torch.__version__ + ' sees no CUDA device')\n"
             "try:\n    import transformers\nexcept ImportError:\n    sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if proc.returncode == 0:
        return "transformers", "HF transformers CUDA"
    if proc.returncode == 3:
        return "torch", "PyTorch CUDA, eager llama"
    why = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return None, "torch is not importable" if "No module named 'torch'" in why[0] else why[0]


def plot(results: list, path: str) -> bool:
    rows = [r for r in results if r.get("decode_tps")]
    if not rows:
        return False
    names = [r["system"] for r in rows]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the GPU machine has no matplotlib: bare bars, the numbers are in the JSON
        from gpu import write_png

        write_png(path, ["prefill_tps", "decode_tps"], names,
                  {(key, r["system"]): r[key] for r in rows for key in ("prefill_tps", "decode_tps")})
        return True
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.5))
    for ax, key, title in ((axes[0], "prefill_tps", "prefill tokens/s"), (axes[1], "decode_tps",
                                                                           "decode tokens/s")):
        ax.barh(names, [r[key] for r in rows], color=["C0" if n.startswith("mlxarm") else "C7" for n in names])
        ax.set_title(title)
        ax.set_xscale("log")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="vulkan,opencl", help="mlxarm executors to run, comma-separated")
    parser.add_argument("--peer", choices=["auto", "none"], default="auto",
                        help="auto: PyTorch on CUDA (transformers when importable) in float32 and float16")
    parser.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--decode-budget", type=float, default=20.0,
                        help="seconds of decoding after which a run stops early (its rate counts the steps done)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed to each process")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--first-token-only", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)

    if options.worker:
        options.ids = json.loads(options.ids)
        WORKERS[options.worker](options)
        return 0

    os.environ["MLXARM_DEVICE"] = "numpy"  # the driver only writes the folder; workers pick their executor
    from mlxarm.lm import load_tokenizer

    results = []

    def record(system, result):
        result["system"] = system
        results.append(result)
        if "error" in result:
            print(f"{system:36s} failed: {result['error']}", flush=True)
            return
        cold = f", cold {result['ttft_cold_s']:.2f} s" if "ttft_cold_s" in result else ""
        print(f"{system:36s} prefill {result['prefill_tps']:9.1f} tok/s  decode {result['decode_tps'] or 0:8.2f} "
              f"tok/s ({result['decoded']} steps, median {result['decode_step_ms_median'] or 0:.2f} ms)  "
              f"first token {result['ttft_s']:.3f} s{cold}", flush=True)

    with tempfile.TemporaryDirectory() as work:
        options.model = os.path.join(work, "model")
        t0 = time.perf_counter()
        config = build_folder(options.model, options.layers)
        size_mb = os.path.getsize(os.path.join(options.model, "model.safetensors")) / 2**20
        options.ids = load_tokenizer(options.model).encode(TEXT)[:options.prompt_tokens]
        if len(options.ids) < options.prompt_tokens:
            parser.error(f"the benchmark text has only {len(options.ids)} tokens")
        print(f"random SmolLM2-shaped llama, {options.layers} layers, {size_mb:.0f} MiB quantized (written in "
              f"{time.perf_counter() - t0:.1f} s); prompt {len(options.ids)} tokens, up to {options.gen_tokens} "
              f"decoded (budget {options.decode_budget:g} s)", flush=True)

        for device in [d for d in options.devices.split(",") if d]:
            with tempfile.TemporaryDirectory(dir=work) as cold_cache:
                env = {"MLXARM_DEVICE": device, "XDG_CACHE_HOME": cold_cache}
                cold = _spawn("mlxarm", options, env, first_token_only=True)
                warm = _spawn("mlxarm", options, env) if "error" not in cold else cold
            if "error" not in warm:
                warm["ttft_cold_s"] = cold["ttft_s"]
            record(f"mlxarm {device} (4-bit)", warm)

        if options.peer == "auto":
            worker, label = _torch_peer()
            if worker is None:
                print(f"peer skipped: {label}", flush=True)
            for dtype, short in (("float32", "f32"), ("float16", "f16")) if worker else ():
                record(f"{label} {short}", _spawn(worker, options, {}, dtype=dtype))

    peers = [r for r in results if not r["system"].startswith("mlxarm") and r.get("decode_tps")]
    if peers:
        print("\nratios, ours / peer (prefill, decode, first token speed):")
    for ours in (r for r in results if r["system"].startswith("mlxarm") and r.get("decode_tps")):
        for peer in peers:
            print(f"  {ours['system']:24s} vs {peer['system']:32s} {ours['prefill_tps'] / peer['prefill_tps']:7.4f}x "
                  f"{ours['decode_tps'] / peer['decode_tps']:7.4f}x {peer['ttft_s'] / ours['ttft_s']:7.4f}x")
    os.makedirs(options.out, exist_ok=True)
    out = {"model": config, "model_mb": round(size_mb, 1),
           "prompt_tokens": len(options.ids), "gen_tokens": options.gen_tokens,
           "decode_budget_s": options.decode_budget, "results": results}
    with open(os.path.join(options.out, "lm_gpu.json"), "w") as f:
        json.dump(out, f, indent=2)
    drawn = plot(results, os.path.join(options.out, "lm_gpu.png"))
    print(f"wrote {os.path.join(options.out, 'lm_gpu.json')}" + (" and lm_gpu.png" if drawn else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
