"""The built wheel works on its own: installed into a fresh virtualenv, with no source checkout importable, it stages
a checkpoint (weights, code, card from the packaged template, gallery)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STAGE = """
import sys
from pathlib import Path

import numpy as np
import transformers as T
from PIL import Image

import hf_dualsig
from hf_dualsig import DualSigmoidForImageClassification
from hf_dualsig.hub import stage
from hf_dualsig.zoo import tiny_classifier

venv, out = Path(sys.argv[1]).resolve(), sys.argv[2]
assert Path(hf_dualsig.__file__).resolve().is_relative_to(venv), f"imported from {hf_dualsig.__file__}, not {venv}"
dual = DualSigmoidForImageClassification.from_classifier(tiny_classifier("resnet", num_labels=3))
images = [Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)) for i in range(2)]
processor = T.ViTImageProcessorPil(size={"height": 32, "width": 32})
stage(dual, processor, out, "someone/tiny", gallery_images=images, gallery_titles=["a", "b"])
print(hf_dualsig.__file__)
"""


def run(command, **kwargs):
    result = subprocess.run(command, check=False, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_wheel_stages_a_checkpoint_from_a_fresh_virtualenv(tmp_path):
    # build from a copy of what the wheel packs, so the working tree gets no build/ or egg-info
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "hf_dualsig", source / "hf_dualsig", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)])
    (wheel,) = dist.glob("hf_dualsig-*.whl")
    assert "hf_dualsig/templates/dualsig_card.md" in zipfile.ZipFile(wheel).namelist()

    # torch and transformers come from the system site; hf_dualsig only from the wheel
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index", "-q", str(wheel)])

    workdir = tmp_path / "elsewhere"  # no checkout on the path or in the working directory
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    result = run([python, "-c", STAGE, str(venv), "staged"], cwd=workdir, env=env)
    assert Path(result.stdout.strip().splitlines()[-1]).resolve().is_relative_to(venv.resolve())
    staged = workdir / "staged"
    for name in (
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "modeling_dualsig.py",
        "configuration_dualsig.py",
        "backbones.py",
        "cam.py",
        "losses.py",
        "pipeline_dualsig.py",
        "maps/gallery.png",
    ):
        assert (staged / name).is_file(), name
    card = (staged / "README.md").read_text()
    assert "# tiny" in card and "![" in card and "maps/gallery.png" in card
