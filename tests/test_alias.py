"""The mlx alias (mlxarm.alias) and the command line (python -m mlxarm)."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

from mlxarm import alias

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = textwrap.dedent("""
    import sys
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map

    a = mx.array([[1.0, 2.0], [3.0, 4.0]])
    b = mx.exp(a - a) + a * 2
    mx.eval(b)
    params = tree_map(lambda x: x + 1, {"w": b, "n": [mx.array(1)]})
    print("values", b.tolist(), b.dtype, b.shape)
    print("paths", [k for k, _ in tree_flatten(params)])
    print("argv", sys.argv[1:], __name__)
    print("module", mx.__name__)
""")


def _real_mlx_importable():
    try:
        spec = importlib.util.find_spec("mlx")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.loader.__class__.__module__ != alias.__name__


needs_real_mlx = pytest.mark.skipif(not _real_mlx_importable(), reason="real MLX not installed")


def _clean_env(**extra):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": ROOT}
    env.update(extra)
    return env


def _run_cli(args, **env):
    return subprocess.run([sys.executable, "-m", "mlxarm", *args], capture_output=True, text=True,
                          env=_clean_env(**env), cwd=ROOT, timeout=60)


@pytest.fixture
def program(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    return str(path)


def _check_program_output(stdout):
    lines = stdout.splitlines()
    assert lines[0] == "values [[3.0, 5.0], [7.0, 9.0]] mlx.core.float32 (2, 2)"
    assert lines[1] == "paths ['w', 'n.0']"
    assert lines[2] == "argv ['first', '--flag', 'x'] __main__"
    assert lines[3] == "module mlxarm.core"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_run_unmodified_program(program, how):
    if how == "flag":
        res = _run_cli(["run", "--override", program, "first", "--flag", "x"])
    else:
        res = _run_cli(["run", program, "first", "--flag", "x"], MLXARM_OVERRIDE_MLX="1")
    assert res.returncode == 0, res.stderr
    _check_program_output(res.stdout)


@needs_real_mlx
def test_program_output_matches_real_mlx(program):
    ours = _run_cli(["run", "--override", program, "first", "--flag", "x"])
    real = subprocess.run([sys.executable, program, "first", "--flag", "x"], capture_output=True,
                          text=True, env=_clean_env(), timeout=60)
    assert ours.returncode == 0 and real.returncode == 0, ours.stderr + real.stderr
    assert ours.stdout.splitlines()[:3] == real.stdout.splitlines()[:3]


@needs_real_mlx
def test_run_refuses_when_real_mlx_importable(program):
    res = _run_cli(["run", program])
    assert res.returncode != 0
    assert "A real MLX is importable" in res.stderr
    assert "MLXARM_OVERRIDE_MLX" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_module_like_python_m(tmp_path):
    """``run -m package`` runs the package's __main__ with the alias in place, as ``python -m`` would."""
    pkg = tmp_path / "mlxprog"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(PROGRAM)
    env = _clean_env()
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{tmp_path}"
    res = subprocess.run([sys.executable, "-m", "mlxarm", "run", "--override", "-m", "mlxprog", "first", "--flag",
                          "x"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "values [[3.0, 5.0], [7.0, 9.0]] mlx.core.float32 (2, 2)"
    assert lines[2] == "argv ['first', '--flag', 'x'] __main__"
    assert lines[3] == "module mlxarm.core"


def test_run_script_exit_code_and_missing_script(tmp_path):
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(3)\n")
    assert _run_cli(["run", "--override", str(script)]).returncode == 3
    res = _run_cli(["run", "--override", str(tmp_path / "missing.py")])
    assert res.returncode == 2 and "no such script" in res.stderr


def test_help_and_info():
    res = _run_cli(["--help"])
    assert res.returncode == 0 and "run" in res.stdout and "info" in res.stdout
    res = _run_cli(["info"])
    assert res.returncode == 0, res.stderr
    assert "mlxarm" in res.stdout and "device:" in res.stdout and "executor:" in res.stdout


@needs_real_mlx
def test_install_refuses_in_process():
    os.environ.pop(alias.OVERRIDE_ENV, None)
    with pytest.raises(RuntimeError, match="A real MLX is importable"):
        alias.install()
    assert not any(type(f).__module__ == alias.__name__ for f in sys.meta_path)


def test_install_override_and_uninstall_restore():
    before = {n: m for n, m in sys.modules.items() if n == "mlx" or n.startswith("mlx.")}
    import mlxarm.core
    import mlxarm.core.random
    import mlxarm.utils

    alias.install(override=True)
    try:
        alias.install(override=True)  # idempotent
        import mlx
        import mlx.core as mx
        import mlx.core.random
        import mlx.utils
        from mlx.core import linalg

        assert mx is mlxarm.core and mx.__name__ == "mlxarm.core"
        assert mlx.core.random is mlxarm.core.random
        assert mlx.utils is mlxarm.utils
        assert linalg is mlxarm.core.linalg
        assert mlx.__path__ == []
        with pytest.raises(ModuleNotFoundError):
            import mlx.backend  # noqa: F401  (not an MLX package)
    finally:
        alias.uninstall()
    after = {n: m for n, m in sys.modules.items() if n == "mlx" or n.startswith("mlx.")}
    assert after == before
    assert not any(type(f).__module__ == alias.__name__ for f in sys.meta_path)


def test_nn_and_optimizers_when_present():
    present = [p for p in ("nn", "optimizers") if importlib.util.find_spec(f"mlxarm.{p}")]
    if not present:
        pytest.skip("mlxarm.nn / mlxarm.optimizers not available")
    alias.install(override=True)
    try:
        for p in present:
            aliased = importlib.import_module(f"mlx.{p}")
            assert aliased is importlib.import_module(f"mlxarm.{p}")
    finally:
        alias.uninstall()


def test_nested_packages_follow_their_parent():
    """mlx.nn.layers.linear is mlxarm.nn.layers.linear: submodules map one to one."""
    alias.install(override=True)
    try:
        import mlx.nn as nn
        from mlx.nn.layers.linear import Linear

        assert nn is sys.modules["mlxarm.nn"]
        assert Linear is sys.modules["mlxarm.nn.layers.linear"].Linear is nn.Linear
        assert sys.modules["mlx.nn.layers"] is sys.modules["mlxarm.nn.layers"]
    finally:
        alias.uninstall()
