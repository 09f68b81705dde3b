"""The public surface: what `vidring.loader` exports, and the command's version."""

from __future__ import annotations

import importlib.metadata

import vidring.loader
from tests.support import cli


def test_every_export_exists() -> None:
    assert set(vidring.loader.__all__) == {
        "Batch", "ClipDataset", "Client", "DaemonError", "DaemonUnavailable", "LeaseExpired",
        "Ring", "RingError", "RingExhausted", "RingLayout", "Sample", "SlotState", "StatusRecord",
        "UntrustedPipeline", "VidringError", "provenance_dtype",
    }
    for name in vidring.loader.__all__:
        assert getattr(vidring.loader, name) is not None, name
    errors = [vidring.loader.DaemonError, vidring.loader.DaemonUnavailable,
              vidring.loader.RingExhausted]
    assert all(issubclass(e, vidring.loader.VidringError) for e in errors)


def test_version_is_the_installed_one() -> None:
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"vidring {importlib.metadata.version('vidring')}"
