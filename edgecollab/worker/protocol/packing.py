"""Packed runs: consecutive stream messages of one bundle travel as one message, in columns.

A client's cameras each send a frame per tick, and one micro-batch answers frames of many
streams. Sent one message per stream, their headers and frames cost more than the frames
themselves. So in a bundle, a run of ``Frames`` that share a dtype and frame shape goes as one
``PackedFrames``, and a run of ``FrameResults`` from one micro-batch (same variant, node and
outputs) as one ``PackedFrameResults``. The receiving codec unpacks them into the messages they
were: nothing above the codec sees a packed message.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .messages import FrameResults, Frames, Message, PackedFrameResults, PackedFrames

MAX_PACKED = 1024  # streams in one packed message


def pack(messages: Sequence[Message]) -> list[Message]:
    """``messages`` with each run of two or more packable messages of one kind replaced by its packed form."""
    out: list[Message] = []
    run: list[Any] = []
    run_key: Hashable = None
    for message in messages:
        key = _pack_key(message)
        if run and key is not None and key == run_key and len(run) < MAX_PACKED:
            run.append(message)
            continue
        out.extend(_packed(run))
        run, run_key = ([message], key) if key is not None else ([], None)
        if key is None:
            out.append(message)
    out.extend(_packed(run))
    return out


def unpack(message: Message) -> list[Message]:
    """The messages a packed message carries, as views of its arrays; ``ValueError`` says what does not add up."""
    if isinstance(message, PackedFrames):
        offsets = _offsets(message.stream_ids, message.counts, len(message.first_seqs), message.inputs, "inputs")
        return [
            Frames(sid, first, message.inputs[start:end])
            for sid, first, (start, end) in zip(message.stream_ids, message.first_seqs, offsets)
        ]
    if isinstance(message, PackedFrameResults):
        rows = message.seqs
        offsets = _offsets(message.stream_ids, message.counts, len(message.stream_ids), rows, "seqs")
        columns = {"predictions": message.predictions, **{f"outputs[{k!r}]": t for k, t in message.outputs.items()}}
        for name, column in columns.items():
            if column.ndim == 0 or len(column) != len(rows):
                raise ValueError(f"{message.kind}: {name} must have a row per sequence number ({len(rows)})")
        out: list[Message] = []
        for sid, (start, end) in zip(message.stream_ids, offsets):
            outputs = {name: tensor[start:end] for name, tensor in message.outputs.items()}
            answers = (rows[start:end], message.predictions[start:end], message.variant, message.node)
            out.append(FrameResults(sid, *answers, message.dropped, message.reason, outputs))
        return out
    return [message]


def _pack_key(message: Message) -> Hashable | None:
    """What messages must share to ride in one packed message; None for one that is never packed."""
    if isinstance(message, Frames):
        inputs = message.inputs
        if inputs.ndim == 0 or len(inputs) == 0:
            return None
        return ("frames", inputs.dtype.str, inputs.shape[1:])
    if isinstance(message, FrameResults):
        rows = len(message.seqs)
        columns = [message.seqs, message.predictions, *message.outputs.values()]
        if rows == 0 or any(c.ndim == 0 or len(c) != rows for c in columns):
            return None
        shapes = tuple((c.dtype.str, c.shape[1:]) for c in columns)
        return (
            "results",
            message.variant,
            message.node,
            message.dropped,
            message.reason,
            tuple(message.outputs),
            shapes,
        )
    return None


def _packed(run: list[Any]) -> list[Message]:
    if len(run) < 2:
        return list(run)
    ids = [m.stream_id for m in run]
    if isinstance(run[0], Frames):
        counts = [len(m.inputs) for m in run]
        return [PackedFrames(ids, [m.first_seq for m in run], counts, np.concatenate([m.inputs for m in run]))]
    first: FrameResults = run[0]
    columns = (np.concatenate([m.seqs for m in run]), np.concatenate([m.predictions for m in run]))
    outputs = {name: np.concatenate([m.outputs[name] for m in run]) for name in first.outputs}
    counts = [len(m.seqs) for m in run]
    return [PackedFrameResults(ids, counts, *columns, first.variant, first.node, first.dropped, first.reason, outputs)]


def _offsets(
    stream_ids: list[str], counts: list[int], entries: int, rows: np.ndarray, rows_name: str
) -> list[tuple[int, int]]:
    streams = len(stream_ids)
    if not 1 <= streams <= MAX_PACKED or entries != streams or len(counts) != streams:
        raise ValueError(
            f"a packed message lists 1..{MAX_PACKED} streams with one entry each in every list; got "
            f"{streams} stream id(s), {len(counts)} count(s) and {entries} entries"
        )
    if any(count < 1 for count in counts):
        raise ValueError("a packed message's counts must each be at least 1")
    if rows.ndim == 0 or sum(counts) != len(rows):
        raise ValueError(f"a packed message's counts add up to {sum(counts)}; its {rows_name} has {len(rows)} rows")
    ends = list(itertools.accumulate(counts))
    return list(zip([0, *ends[:-1]], ends))
