import os
import socket
import sys

import pytest
import transformers as T

from hf_dualsig.data.synthetic import CLASSES, SyntheticWSOLConfig, load_synthetic_wsol
from hf_dualsig.zoo import tiny_classifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMALL_SYNTHETIC = SyntheticWSOLConfig(num_train=48, num_val=16, num_test=16, image_size=32, num_classes=4)


def two_process_launch() -> list[str]:
    """`accelerate launch` of 2 DDP processes (gloo on CPU) on a free port, not the default 29500 that another run
    may hold."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    return [sys.executable, *launch, "--main_process_port", str(port)]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A small synthetic WSOL set (4 classes, 32x32), cached once per session."""
    return load_synthetic_wsol(SMALL_SYNTHETIC, cache_dir=str(tmp_path_factory.mktemp("synthetic")))


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory):
    """A saved tiny ResNet whose labels are the synthetic set's, with a plain resize+normalise processor."""
    path = tmp_path_factory.mktemp("tiny_resnet")
    model = tiny_classifier("resnet", num_labels=SMALL_SYNTHETIC.num_classes)
    names = [c[0] for c in CLASSES[: SMALL_SYNTHETIC.num_classes]]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    model.save_pretrained(path)
    T.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path
