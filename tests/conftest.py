"""Fixtures: small real videos encoded by PyAV, and real daemons that are always cleaned up."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.support import GOP, N_VIDEOS, Daemons, video_frames
from vidring.daemon.demo import write_video

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_VIDEOS videos of 20..35 frames plus one shorter than a clip; labels = video index."""
    folder = tmp_path_factory.mktemp("videos")
    with open(folder / "manifest.csv", "w") as fh:
        fh.write("path,label\n")
        for i in range(N_VIDEOS):
            n_frames = 3 if i == 5 else 20 + i  # video 5 is shorter than a clip
            write_video(folder / f"v{i:02d}.mp4", video_frames(i, n_frames), gop=GOP)
            fh.write(f"v{i:02d}.mp4,{i}\n")
    return folder


@pytest.fixture(scope="session")
def manifest(video_dir: Path) -> Path:
    return video_dir / "manifest.csv"


@pytest.fixture(scope="session")
def probe_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("probe-cache")


def _daemons(probe_cache: Path) -> Iterator[Daemons]:
    d = Daemons(probe_cache)
    try:
        yield d
    finally:
        d.close()


# Per test, and one set shared by the whole session (main_pipeline).
daemons = pytest.fixture(_daemons, name="daemons")
shared_daemons = pytest.fixture(_daemons, scope="session", name="shared_daemons")


@pytest.fixture(scope="session")
def main_pipeline(shared_daemons: Daemons, manifest: Path) -> str:
    """One session-wide daemon over the 16 test videos: batches of 4 x 6 x 24x32 uint8."""
    return shared_daemons.start(manifest, name=f"main-{os.getpid()}", workers=2, slots=4)
