import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_spec = importlib.util.spec_from_file_location(
    "make_detection_scenes_conftest", os.path.join(ROOT, "data", "make_detection_scenes.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

# A small scene set for end-to-end runs: 64-96 px images, up to 4 objects of 12-40 px.
E2E_ARGS = ["--train", "48", "--val", "12", "--test", "8", "--seed", "3", "--min_size", "64",
            "--max_size", "96", "--max_objects", "4", "--min_object_size", "12",
            "--max_object_size", "40"]


@pytest.fixture(scope="session")
def e2e_scenes(tmp_path_factory):
    """A generated COCO-format scene folder (needs Fashion-MNIST: `make data`)."""
    assert os.path.exists(os.path.join(gen.FASHION_MNIST_DIR, gen.FASHION_MNIST_FILES["train"][0])), (
        "Fashion-MNIST is needed: run `make data` (installs the Debian package dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("e2e_scenes") / "scenes"
    gen.generate(gen.parse_args(["--out", str(out)] + E2E_ARGS), log=lambda m: None)
    return str(out)
