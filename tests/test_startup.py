"""Start-up: the scripts' `--help`, argument checks and `evaluate.py --scoremap_dir` import no torch, accelerate or
`datasets` (about 1 s of pyarrow and pandas); the package registers the dual model with the Auto classes on first use.
Checked on sys.modules, not on timings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_data import _save_maps, _write_layout

from hf_dualsig import cam, eval_arguments

REPO = Path(__file__).resolve().parents[1]

# Imports modules, or runs a script as `python script args` would; then, even after an error, prints the heavy
# modules left in sys.modules.
RUN = """
import runpy, sys
kind, *args = sys.argv[1:]
try:
    if kind == "import":
        for name in args:
            __import__(name)
    else:
        sys.argv = args
        try:
            runpy.run_path(args[0], run_name="__main__")
        except SystemExit as exit:
            if exit.code not in (0, None):
                raise
finally:
    print("HEAVY=" + ",".join(m for m in ("torch", "accelerate", "datasets") if m in sys.modules))
"""


def _run(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The finished process and the heavy modules it had imported."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", RUN, *args]
    result = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True)
    line = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert line.startswith("HEAVY="), result.stdout[-2000:] + result.stderr[-3000:]
    return result, [m for m in line.removeprefix("HEAVY=").split(",") if m]


def _heavy_modules(*args: str) -> list[str]:
    result, heavy = _run(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return heavy


def test_light_modules_import_no_torch_accelerate_or_datasets():
    modules = ["hf_dualsig", "hf_dualsig.eval_arguments", "hf_dualsig.scoremaps", "hf_dualsig.data.splits"]
    assert _heavy_modules("import", *modules) == []


@pytest.mark.parametrize(
    "script", ["evaluate", "explain", "push_to_hub", "convert_wsol_checkpoint", "convert_efficientnet_lite0"]
)
def test_script_help_imports_no_torch_accelerate_or_datasets(script):
    assert _heavy_modules("run", f"scripts/{script}.py", "--help") == []


def test_explain_rejects_bad_arguments_before_heavy_imports(tmp_path):
    result, heavy = _run("run", "scripts/explain.py", "--methods", "cam,smoothgrad", "--output_dir", str(tmp_path))
    assert result.returncode != 0 and "--methods 'cam,smoothgrad': unknown ['smoothgrad']" in result.stderr
    assert heavy == []


def test_scoremap_mode_imports_nothing_heavy_and_scores(tmp_path):
    meta, ids, _ = _write_layout(tmp_path, with_masks=True)
    _save_maps(tmp_path / "scoremaps", ids, [np.full((64, 64), 0.5, np.float32) for _ in ids])
    options = ["--scoremap_dir", str(tmp_path / "scoremaps"), "--metadata_dir", str(meta), "--eval_size", "64"]
    heavy = _heavy_modules("run", "scripts/evaluate.py", *options, "--mask_root", str(tmp_path))
    assert heavy == []
    results = json.loads((tmp_path / "scoremaps" / "eval" / "results.json").read_text())
    assert results["num_images"] == 3 and 0 < results["scoremaps"]["pxap"] < 100


def test_argument_checks_use_the_cam_registry_names():
    assert eval_arguments.CAM_METHOD_NAMES == tuple(cam.CAM_METHODS)
    assert eval_arguments.HEADS == cam.HEADS


REGISTRATION = """
import sys
import hf_dualsig
assert "torch" not in sys.modules
{first_use}
import transformers as T
from transformers.pipelines import PIPELINE_REGISTRY
from hf_dualsig.configuration_dualsig import DualSigmoidConfig
assert "dualsig-cam" in PIPELINE_REGISTRY.get_supported_tasks()
assert T.CONFIG_MAPPING[DualSigmoidConfig.model_type] is DualSigmoidConfig
for auto in (T.AutoModel, T.AutoModelForImageClassification):
    assert auto._model_mapping[DualSigmoidConfig].__name__ == "DualSigmoidForImageClassification"
"""


@pytest.mark.parametrize("first_use", ["from hf_dualsig import explain", "hf_dualsig.register_auto_classes()"])
def test_first_use_registers_the_auto_classes_and_the_pipeline(first_use):
    result = subprocess.run(
        [sys.executable, "-c", REGISTRATION.format(first_use=first_use)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
