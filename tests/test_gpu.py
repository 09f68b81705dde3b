"""--decode cuda: NVDEC through FFmpeg's hwaccel, where a GPU can decode; the CPU, with one
clear log line, where none can (as in CI)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.support import SIZE, Daemons, epoch_bytes, reference_decode
from vidring.daemon import config as cfg
from vidring.daemon.decode import ClipDecoder, cuda_unavailable
from vidring.daemon.probe import probe
from vidring.daemon.startup import decoder_to_use
from vidring.loader import ClipDataset

if TYPE_CHECKING:
    from pathlib import Path

WHY_NOT = cuda_unavailable()
needs_gpu = pytest.mark.skipif(bool(WHY_NOT), reason=f"--decode cuda cannot run here: {WHY_NOT}")


def test_the_decoder_in_use_is_said(caplog: pytest.LogCaptureFixture, manifest: Path) -> None:
    config = cfg.build({"manifest": str(manifest), "name": "gpu-check", "batch_size": 2,
                        "clip_length": 2, "size": "8x8", "workers": 1, "decode": "cuda"})
    with caplog.at_level(logging.WARNING, logger="vidring.daemon"):
        used = decoder_to_use(config)
    if WHY_NOT:
        assert used == "cpu"
        assert f"--decode cuda: {WHY_NOT}; decoding on the CPU" in caplog.text
    else:
        assert used == "cuda"
        assert not caplog.text


@needs_gpu
def test_nvdec_frames_equal_the_cpu_reference(video_dir: Path) -> None:
    decoder = ClipDecoder(*SIZE, decode="cuda")
    for name in ("v03.mp4", "v12.mp4"):
        path = video_dir / name
        info = probe(path)
        ref = reference_decode(path, *SIZE)
        for start in (0, 7, info.frames - 6):
            frames = list(range(start, start + 6))
            out = np.zeros((6, *SIZE, 3), np.uint8)
            decoder.decode_into(str(path), *info.seek_target(start),
                                [int(info.frame_pts[f]) for f in frames], out,
                                reopen=info.reopen)  # as the workers open it
            np.testing.assert_array_equal(out, ref[frames], err_msg=f"{name} from {start}")
    decoder.close()


@needs_gpu
def test_a_cuda_pipeline_serves_the_cpu_pipelines_bytes(daemons: Daemons,
                                                        manifest: Path) -> None:
    gpu = daemons.start(manifest, workers=2, slots=2, extra=["--decode", "cuda"])
    cpu = daemons.start(manifest, workers=2, slots=2)
    with ClipDataset(gpu) as a, ClipDataset(cpu) as b:
        assert epoch_bytes(a) == epoch_bytes(b)
