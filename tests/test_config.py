"""cluster.toml: the shipped one is the paper's testbed; errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecollab.config import load_config, parse_fault, with_faults
from edgecollab.errors import ConfigError

from .conftest import REPO


def test_shipped_config_is_the_papers_testbed() -> None:
    config = load_config(REPO / "cluster.toml")
    assert [(n.name, n.emulate) for n in config.nodes] == [
        ("odroid-xu4-a", "odroid-xu4"),
        ("odroid-xu4-b", "odroid-xu4"),
        ("rpi4", "rpi4"),
        ("jetson-nano", "jetson-nano"),
    ]
    assert config.node("jetson-nano").providers[0] == "CUDAExecutionProvider"
    assert config.coordinator.workers.startswith("tcp://127.0.0.1:")
    assert config.models.served == ("fashion-mnist", "fashion-detect")  # two applications share the boards


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[models]\nmanifest = "zoo/zoo.toml"\n[[nodes]]\nname = "a"\n'))
    assert config.manifest_path == (tmp_path / "zoo" / "zoo.toml").resolve()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[nodes]]\nname = "a"\nemulate = "pi5"\n',
            r"nodes\[0\] \(a\)\.emulate: unknown board profile 'pi5'; expected one of",
        ),
        (
            '[[nodes]]\nname = "a"\nthreads = 0\n',
            r"nodes\[0\] \(a\)\.threads: Input should be greater than or equal to 1",
        ),
        ('[[nodes]]\nname = "a"\n[[nodes]]\nname = "a"\n', r"node names must be unique; repeated: a"),
        (
            '[coordinator]\nworkers = "5555"\n[[nodes]]\nname = "a"\n',
            r"coordinator\.workers: expected a ZeroMQ endpoint",
        ),
        ('[[nodes]]\nname = "a"\ncolour = "red"\n', r"nodes\[0\] \(a\)\.colour: Extra inputs are not permitted"),
        ("[coordinator]\n", r"nodes: Field required"),
        ("nodes = 3\n", r"nodes: Input should be a valid tuple"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid config .*cluster\.toml:\n(.|\n)*" + message):
        load_config(write(tmp_path, text))


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_config(write(tmp_path, "[[nodes]\n"))


def test_unknown_node_is_named(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[[nodes]]\nname = "a"\n'))
    with pytest.raises(ConfigError, match=r"no node named 'b' in the config; nodes: a"):
        config.node("b")


def test_faults_from_the_command_line_become_validated_events(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[[nodes]]\nname = "a"\nemulate = "rpi4"\n[[nodes]]\nname = "b"\n'))
    node = with_faults(config.node("a"), ["slow=0.33@5", "hang@9.5"])
    assert [(e.at_s, e.speed, e.action) for e in node.events] == [(5.0, 0.33, None), (9.5, None, "hang")]
    assert with_faults(config.node("a"), []) is config.node("a")
    with pytest.raises(ConfigError, match=r"fault 'slow=fast@5' is not one of slow=FACTOR@SECONDS, hang@SECONDS"):
        parse_fault("slow=fast@5")
    with pytest.raises(ConfigError, match=r"fault 'explode@1' is not one of"):
        parse_fault("explode@1")
    with pytest.raises(ConfigError, match=r"node b: events can only be scheduled on an emulated node"):
        with_faults(config.node("b"), ["vanish@1"])


NODE = '[[nodes]]\nname = "a"\n'


def test_the_one_task_form_still_loads_as_the_only_task(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[models]\ntask = "fashion-mnist-224"\n' + NODE)
    models = load_config(tmp_path / "c.toml").models
    assert models.tasks == ("fashion-mnist-224",) and models.task == "fashion-mnist-224"


def test_several_tasks_default_to_the_first_or_the_named_one(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[models]\ntasks = ["fashion-mnist", "fashion-detect"]\n' + NODE)
    assert load_config(tmp_path / "c.toml").models.served == ("fashion-mnist", "fashion-detect")
    (tmp_path / "c.toml").write_text(
        '[models]\ntasks = ["fashion-mnist", "fashion-detect"]\ntask = "fashion-detect"\n' + NODE
    )
    assert load_config(tmp_path / "c.toml").models.served == ("fashion-detect", "fashion-mnist")
    (tmp_path / "c.toml").write_text('[models]\ntasks = ["fashion-mnist"]\ntask = "fashion-detect"\n' + NODE)
    with pytest.raises(ConfigError, match=r"task \(the default\) is 'fashion-detect', which is not one of tasks"):
        load_config(tmp_path / "c.toml")
