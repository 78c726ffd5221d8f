"""The repository's kernels/ folder is the package fp8pass.kernels; with the repository root on
sys.path (`python -m pytest`, pytest-xdist's workers, a notebook started there) it must not shadow
the PyPI package `kernels` (Hugging Face's, which transformers >= 5 imports at its own import: CI
went red on that with transformers 5.25), nor register the ops a second time."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _python_in_root(code: str, extra_path: str = "") -> str:
    """Run code with the repository root first on sys.path (`python -c` from the root)."""
    env = dict(os.environ, PYTHONPATH=extra_path)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_top_level_kernels_import_gets_the_installed_package(tmp_path):
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("WHERE = 'installed'\nfrom .layer import LAYER\n")
    (fake / "layer.py").write_text("LAYER = 'its own submodule'\n")
    out = _python_in_root(
        "import sys, kernels; assert sys.path[0] in ('', %r), sys.path[:2]; "
        "import fp8pass, torch; "
        "print(kernels.WHERE, kernels.LAYER, fp8pass.kernels.TILE, hasattr(torch.ops.fp8pass, 'quantize_1x128'))"
        % str(ROOT), str(tmp_path / "site"))
    assert out == "installed its own submodule 128 True"


def _kernels_package_installed() -> bool:
    from importlib.machinery import PathFinder

    return PathFinder.find_spec("kernels", [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT]) is not None


@pytest.mark.skipif(_kernels_package_installed(), reason="the PyPI package kernels is installed here (transformers "
                    ">= 5 brings it): the test above covers that case")
def test_top_level_kernels_import_without_the_package_is_empty_and_registers_nothing():
    out = _python_in_root("import kernels, fp8pass, torch\n"
                          "print(hasattr(kernels, 'ops'), fp8pass.kernels.TILE, hasattr(torch.ops.fp8pass, 'quantize_1x128'))")
    assert out == "False 128 True"
