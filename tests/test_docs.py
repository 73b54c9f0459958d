"""The docs stay true to the code: the coverage table matches the registry, and the architecture
document only names files that exist."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def _generator(*args):
    # A fresh interpreter: the table must reflect the registry as importing mlxarm builds it, not
    # whatever else this test session has imported or registered.
    return subprocess.run([sys.executable, os.path.join(DOCS, "gen_coverage.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_coverage_table_is_up_to_date():
    res = _generator("--check", "--saved-names")
    assert res.returncode == 0, (res.stdout + res.stderr
                                 + "\nregenerate with: python docs/gen_coverage.py")


def test_coverage_table_summary():
    with open(os.path.join(DOCS, "coverage.md")) as f:
        text = f.read()
    with open(os.path.join(DOCS, "mlx_public_names.json")) as f:
        saved = json.load(f)
    total = sum(len(v) for v in saved["modules"].values())
    m = re.search(r"\*\*(\d+) of (\d+) MLX public names covered\.\*\*", text)
    assert m and int(m.group(2)) == total
    rows = re.findall(r"^\| `[^`]+` \| (yes|\*\*no\*\*) \|", text, flags=re.M)
    assert len(rows) == total
    assert rows.count("yes") == int(m.group(1))


@pytest.mark.mlx
def test_saved_names_match_real_mlx():
    mx = pytest.importorskip("mlx.core")
    if mx.__name__ != "mlx.core":
        pytest.skip("mlx is aliased to mlxarm")
    with open(os.path.join(DOCS, "mlx_public_names.json")) as f:
        saved = json.load(f)
    if saved["mlx_version"] != mx.__version__:
        pytest.skip(f"names saved from MLX {saved['mlx_version']}, installed {mx.__version__}")
    for mod, names in saved["modules"].items():
        m = mx if mod == "core" else getattr(mx, mod)
        assert names == sorted(n for n in dir(m) if not n.startswith("_")), mod


def test_architecture_paths_exist():
    with open(os.path.join(DOCS, "architecture.md")) as f:
        text = f.read()
    paths = set(re.findall(r"((?:mlxarm|docs|tests|benchmarks|codegen|kernels)/[\w./]*\w)", text))
    assert paths
    missing = [p for p in sorted(paths) if not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, missing
