"""The manifest loader and session opener refuse broken manifests and models with clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from edgecollab.errors import ManifestError, ModelError
from edgecollab.zoo import TaskSpec, load_labelled_set, load_manifest, open_session, read_idx, sha256_of, write_idx
from edgecollab.zoo.graph import graph_cost

from .conftest import SHIPPED_MANIFEST
from .onnx_factory import write_linear_model

TASK = """
[[task]]
name = "digits"
input_dtype = "uint8"
input_shape = [1, 28, 28]
classes = 10
test_images = "images.gz"
test_labels = "labels.gz"
"""


def variant_table(name: str, file: str, sha256: str, task: str = "digits", extra: str = "") -> str:
    return f"""
[[variant]]
name = "{name}"
task = "{task}"
file = "{file}"
sha256 = "{sha256}"
accuracy = 0.5
macs = 7840
params = 7840
quantized = false
{extra}
"""


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    write_linear_model(tmp_path / "good.onnx")
    return tmp_path


def write_manifest(folder: Path, text: str) -> Path:
    path = folder / "zoo.toml"
    path.write_text(text)
    return path


def test_valid_manifest_loads_and_resolves_files(model_dir: Path) -> None:
    sha = sha256_of(model_dir / "good.onnx")
    manifest = load_manifest(write_manifest(model_dir, TASK + variant_table("lin", "good.onnx", sha)))
    assert list(manifest.variants) == ["lin"]
    assert manifest.resolve(manifest.variant("lin").file) == (model_dir / "good.onnx").resolve()


def test_missing_manifest_is_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"model manifest not found: .*nowhere\.toml"):
        load_manifest(tmp_path / "nowhere.toml")


def test_invalid_toml_is_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="is not valid TOML"):
        load_manifest(write_manifest(tmp_path, "[[variant]\nname = "))


def test_missing_field_names_the_variant_and_field(model_dir: Path) -> None:
    text = TASK + variant_table("lin", "good.onnx", "0" * 64).replace("macs = 7840\n", "")
    with pytest.raises(ManifestError, match=r"variant 'lin': macs: Field required"):
        load_manifest(write_manifest(model_dir, text))


def test_out_of_range_accuracy_is_refused(model_dir: Path) -> None:
    text = TASK + variant_table("lin", "good.onnx", "0" * 64).replace("accuracy = 0.5", "accuracy = 93.1")
    with pytest.raises(ManifestError, match=r"variant 'lin': accuracy: Input should be less than or equal to 1"):
        load_manifest(write_manifest(model_dir, text))


def test_unknown_task_is_named(model_dir: Path) -> None:
    sha = sha256_of(model_dir / "good.onnx")
    text = TASK + variant_table("lin", "good.onnx", sha, task="imagenet")
    with pytest.raises(ManifestError, match=r"variant 'lin' names unknown task 'imagenet'; tasks in .*: digits"):
        load_manifest(write_manifest(model_dir, text))


def test_missing_model_file_is_named(model_dir: Path) -> None:
    text = TASK + variant_table("lin", "absent.onnx", "0" * 64)
    with pytest.raises(ManifestError, match=r"variant 'lin': model file not found: .*absent\.onnx"):
        load_manifest(write_manifest(model_dir, text))


def test_sha256_mismatch_names_both_digests(model_dir: Path) -> None:
    text = TASK + variant_table("lin", "good.onnx", "ab" * 32)
    with pytest.raises(ManifestError, match=r"sha256 mismatch .*manifest says (ab){32}, file has [0-9a-f]{64}"):
        load_manifest(write_manifest(model_dir, text))


def test_duplicate_names_and_unknown_base_are_refused(model_dir: Path) -> None:
    sha = sha256_of(model_dir / "good.onnx")
    twice = TASK + variant_table("lin", "good.onnx", sha) + variant_table("lin", "good.onnx", sha)
    with pytest.raises(ManifestError, match=r"duplicate variant name\(s\): digits/lin"):
        load_manifest(write_manifest(model_dir, twice))
    orphan = TASK + variant_table("lin-int8", "good.onnx", sha, extra='base = "lin"')
    with pytest.raises(ManifestError, match=r"variant 'lin-int8': base 'lin' is not a variant"):
        load_manifest(write_manifest(model_dir, orphan))


def test_unknown_variant_lists_the_known_ones(model_dir: Path) -> None:
    sha = sha256_of(model_dir / "good.onnx")
    manifest = load_manifest(write_manifest(model_dir, TASK + variant_table("lin", "good.onnx", sha)))
    with pytest.raises(ManifestError, match=r"unknown model variant 'resnet-99'; .* has: lin"):
        manifest.variant("resnet-99")


@pytest.mark.parametrize(
    ("input_type", "input_shape", "described"),
    [
        (TensorProto.FLOAT, ("N", 1, 28, 28), r"is float32 of shape \('N', 1, 28, 28\)"),
        (TensorProto.UINT8, ("N", 3, 28, 28), r"is uint8 of shape \('N', 3, 28, 28\)"),
        (TensorProto.UINT8, (4, 1, 28, 28), r"is uint8 of shape \(4, 1, 28, 28\)"),
    ],
)
def test_session_refuses_a_model_whose_input_is_not_the_tasks(
    tmp_path: Path, input_type: int, input_shape: tuple[int | str, ...], described: str
) -> None:
    path = write_linear_model(tmp_path / "odd.onnx", input_type=input_type, input_shape=input_shape)
    task = TaskSpec(name="fashion-mnist", input_shape=(1, 28, 28), classes=10, test_images="-", test_labels="-")
    with pytest.raises(ModelError, match=described + r".*expects one uint8 input of shape \(N, 1, 28, 28\)"):
        open_session(path, task)


def test_graph_cost_counts_matmul_macs(model_dir: Path) -> None:
    cost = graph_cost(model_dir / "good.onnx")
    assert (cost.macs, cost.params) == (784 * 10, 784 * 10)


def test_shipped_test_set_is_in_the_repo(tmp_path: Path) -> None:
    # The runtime must work from the repo alone: copy the manifest's data folder and load it.
    data = SHIPPED_MANIFEST.parent / "data" / "fashion-mnist"
    assert (data / "LICENSE").read_text().count("MIT License") == 1
    shutil.copytree(data, tmp_path / "copy")
    test_set = load_labelled_set(
        tmp_path / "copy" / "t10k-images-idx3-ubyte.gz", tmp_path / "copy" / "t10k-labels-idx1-ubyte.gz", (1, 28, 28)
    )
    assert test_set.inputs.shape == (10_000, 1, 28, 28) and test_set.inputs.dtype.name == "uint8"
    assert sorted(set(test_set.labels.tolist())) == list(range(10))


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_files_round_trip(tmp_path: Path, suffix: str, dtype: str) -> None:
    array = (np.arange(2 * 3 * 4 * 5) - 7).astype(dtype).reshape(2, 3, 4, 5)
    write_idx(tmp_path / f"a.idx{suffix}", array)
    back = read_idx(tmp_path / f"a.idx{suffix}")
    assert back.shape == array.shape and np.array_equal(back, array)


def test_idx_reader_refuses_truncated_files(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.idx", np.zeros((4, 4), np.uint8))
    (tmp_path / "a.idx").write_bytes((tmp_path / "a.idx").read_bytes()[:-3])
    with pytest.raises(ModelError, match="header promises 16 bytes of data, file holds 13"):
        read_idx(tmp_path / "a.idx")


def test_test_images_can_be_enlarged_to_the_tasks_input(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 2, dtype=np.uint8).reshape(2, 1, 3, 2)
    write_idx(tmp_path / "x.idx", images.reshape(2, 3, 2))
    write_idx(tmp_path / "y.idx", np.array([0, 1], np.uint8))
    enlarged = load_labelled_set(tmp_path / "x.idx", tmp_path / "y.idx", (1, 12, 8), upscale=4)
    assert enlarged.inputs.shape == (2, 1, 12, 8)
    # Every stored pixel becomes a 4×4 block; taking each block's first pixel gives the image back.
    assert np.array_equal(enlarged.inputs[:, :, ::4, ::4], images)
    assert np.array_equal(enlarged.inputs[:, :, 3::4, 3::4], images)
    with pytest.raises(
        ModelError, match=r"input shape \(1, 12, 9\) cannot be 4 times a stored image in height and width"
    ):
        load_labelled_set(tmp_path / "x.idx", tmp_path / "y.idx", (1, 12, 9), upscale=4)
    with pytest.raises(ModelError, match=r"do not fit input shape \(1, 4, 2\)"):
        load_labelled_set(tmp_path / "x.idx", tmp_path / "y.idx", (1, 16, 8), upscale=4)


def test_variant_names_are_scoped_by_task(model_dir: Path) -> None:
    sha = sha256_of(model_dir / "good.onnx")
    other = TASK.replace('name = "digits"', 'name = "letters"')
    text = TASK + other + variant_table("lin", "good.onnx", sha) + variant_table("lin", "good.onnx", sha, "letters")
    text += variant_table("only", "good.onnx", sha, "letters")
    manifest = load_manifest(write_manifest(model_dir, text))
    # A name two tasks use is known by task/name; a name only one uses, by itself.
    assert sorted(manifest.variants) == ["digits/lin", "letters/lin", "only"]
    assert manifest.variant("lin", task="letters").task == "letters"
    assert manifest.variant("digits/lin").task == "digits"
    with pytest.raises(ManifestError, match=r"used by tasks digits, letters .* as digits/lin or letters/lin"):
        manifest.variant("lin")
    with pytest.raises(ManifestError, match="duplicate variant name"):
        load_manifest(write_manifest(model_dir, text + variant_table("lin", "good.onnx", sha, "letters")))
