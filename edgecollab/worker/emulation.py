"""Board emulation: how long a batch would take on a Jetson Nano, a Raspberry Pi 4 or an Odroid XU4.

A worker with ``emulate = "<profile>"`` runs the real model on real inputs, then holds
the reply until the emulated board would have finished. The cost model per call is

    seconds = overhead + batch × MACs ÷ rate(batch),   rate(b) = peak × b ÷ (b + half_batch)

``half_batch`` is the batch at which a board reaches half its peak MAC rate: near zero
for CPUs, large for a GPU that needs big batches to fill its cores. int8 variants run
``int8_speedup`` times faster. The figures and their sources are in docs/emulation.md.
Nothing outside the worker knows a board is emulated: profiling measures it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoardProfile:
    name: str
    overhead_s: float  # fixed cost per inference call (framework, kernel launches, copies)
    peak_macs_per_s: float  # effective fp32 multiply-accumulates per second at large batch
    half_batch: float  # batch size at which half the peak rate is reached
    int8_speedup: float  # how much faster an int8-quantized variant runs

    def seconds(self, batch: int, macs_per_input: int, quantized: bool) -> float:
        rate = self.peak_macs_per_s * batch / (batch + self.half_batch)
        if quantized:
            rate *= self.int8_speedup
        return self.overhead_s + batch * macs_per_input / rate


# See docs/emulation.md for the measurements these are derived from.
BOARD_PROFILES: dict[str, BoardProfile] = {
    "jetson-nano": BoardProfile(
        "jetson-nano", overhead_s=2.0e-3, peak_macs_per_s=60e9, half_batch=16, int8_speedup=1.0
    ),
    "rpi4": BoardProfile("rpi4", overhead_s=0.3e-3, peak_macs_per_s=6.0e9, half_batch=0.2, int8_speedup=1.8),
    "odroid-xu4": BoardProfile(
        "odroid-xu4", overhead_s=0.5e-3, peak_macs_per_s=3.0e9, half_batch=0.2, int8_speedup=1.4
    ),
}
