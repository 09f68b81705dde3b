"""The loaders vidring is compared against; nothing is measured here.

- NaiveOpenCVSequence: the Keras PyDataset people write first (cv2.VideoCapture per clip).
- PyAVStraightforwardReader: a single-process PyAV reader as a typical user writes it.

Both decode exactly the clips they are given, as lists of (path, start_frame) per batch,
so every loader in benchmarks/throughput.py decodes the same clips. Used by throughput.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import av
import cv2
import keras
import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ClipRef = tuple[str, int]  # (video path, index of the clip's first frame)


class NaiveOpenCVSequence(keras.utils.PyDataset):
    """Batch i = the clips in `clip_batches[i]`, decoded with cv2.VideoCapture.

    Like the loaders it stands for, it silently drops a clip whose video fails to open or
    ends before the clip does, so a batch can come out short.
    """

    def __init__(self, clip_batches: Sequence[Sequence[ClipRef]], labels: Mapping[str, int],
                 clip_length: int, width: int, height: int, workers: int = 1,
                 use_multiprocessing: bool = False, max_queue_size: int = 10):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        self.clip_batches = clip_batches
        self.labels = labels
        self.clip_length = clip_length
        self.width, self.height = width, height

    def __len__(self) -> int:
        return len(self.clip_batches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        clips, labels = [], []
        for path, start_frame in self.clip_batches[index]:
            clip = self._read_clip(path, start_frame)
            if clip is not None:
                clips.append(clip)
                labels.append(self.labels.get(path, 0))
        x = np.stack(clips) if clips else np.empty(
            (0, self.clip_length, self.height, self.width, 3), np.uint8)
        return x, np.asarray(labels, dtype=np.int32)

    def _read_clip(self, path: str, start_frame: int) -> np.ndarray | None:
        capture = cv2.VideoCapture(path)
        try:
            if not capture.isOpened():
                return None
            capture.set(cv2.CAP_PROP_POS_FRAMES, start_frame)
            frames = []
            for _ in range(self.clip_length):
                ok, frame_bgr = capture.read()
                if not ok:
                    return None
                frame_bgr = cv2.resize(frame_bgr, (self.width, self.height))
                frames.append(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
            return np.stack(frames)
        finally:
            capture.release()


class PyAVStraightforwardReader:
    """Reads one clip at a time with PyAV defaults: open, seek back to the keyframe, decode
    forward, convert and resize the kept frames one by one."""

    def __init__(self, clip_length: int, width: int, height: int):
        self.clip_length = clip_length
        self.width, self.height = width, height

    def read_clip(self, path: str, start_frame: int) -> np.ndarray:
        with av.open(path) as container:
            stream = container.streams.video[0]
            frame_duration_pts = 1 / (stream.average_rate * stream.time_base)
            stream_start_pts = stream.start_time or 0
            start_pts = stream_start_pts + round(start_frame * frame_duration_pts)
            container.seek(start_pts, stream=stream, backward=True)
            frames = []
            for frame in container.decode(stream):
                frame_index = round((frame.pts - stream_start_pts) / frame_duration_pts)
                if frame_index < start_frame:
                    continue
                frames.append(frame.to_ndarray(width=self.width, height=self.height,
                                               format="rgb24"))
                if len(frames) == self.clip_length:
                    return np.stack(frames)
        raise ValueError(f"{path}: fewer than {self.clip_length} frames from {start_frame}")

    def read_batch(self, clips: Sequence[ClipRef],
                   labels: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([self.read_clip(path, start_frame) for path, start_frame in clips])
        y = np.asarray([labels.get(path, 0) for path, _ in clips], dtype=np.int32)
        return x, y
