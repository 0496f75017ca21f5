"""The board cost models order the boards as the published figures do."""

from __future__ import annotations

from edgecollab.worker.emulation import BOARD_PROFILES

HEAVY_MACS = 27_000_000  # about a CIFAR-style ResNet-20 on 28x28 inputs
LIGHT_MACS = 8_000  # a linear classifier


def ips(board: str, batch: int, macs: int, quantized: bool = False) -> float:
    return batch / BOARD_PROFILES[board].seconds(batch, macs, quantized)


def test_heavy_models_run_fastest_on_the_jetson_and_slowest_on_the_odroid() -> None:
    assert ips("jetson-nano", 32, HEAVY_MACS) > ips("rpi4", 32, HEAVY_MACS) > ips("odroid-xu4", 32, HEAVY_MACS)


def test_the_gpu_gains_more_from_batching_than_the_cpus() -> None:
    def gain(board: str) -> float:
        return ips(board, 32, HEAVY_MACS) / ips(board, 1, HEAVY_MACS)

    assert gain("jetson-nano") > 5 * gain("rpi4")
    assert gain("rpi4") < 1.5 and gain("odroid-xu4") < 1.5


def test_per_call_overhead_dominates_tiny_models_on_the_gpu() -> None:
    # A linear model at batch 1 is faster on a CPU board than through CUDA launch overheads.
    assert ips("rpi4", 1, LIGHT_MACS) > ips("jetson-nano", 1, LIGHT_MACS)


def test_int8_speeds_up_the_arm_cpus_but_not_the_maxwell_gpu() -> None:
    for board in ("rpi4", "odroid-xu4"):
        assert ips(board, 32, HEAVY_MACS, quantized=True) > 1.3 * ips(board, 32, HEAVY_MACS)
    assert ips("jetson-nano", 32, HEAVY_MACS, quantized=True) <= ips("jetson-nano", 32, HEAVY_MACS)
