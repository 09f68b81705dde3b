"""Operating a pipeline: its effective config, config precedence, relative scaling and
`--workers auto`, against real daemons."""

from __future__ import annotations

import os
import re
import tomllib
import urllib.request
from typing import TYPE_CHECKING

import pytest

from tests.support import Daemons, cli, status, wait_until
from vidring.daemon.config import build, default_max_workers, default_workers
from vidring.loader import ClipDataset

if TYPE_CHECKING:
    from pathlib import Path


def _config(name: str) -> dict[str, object]:
    done = cli("config", name)
    assert done.returncode == 0, done.stderr
    return tomllib.loads(done.stdout)


def test_config_precedence_is_flag_then_file_then_default(daemons: Daemons, manifest: Path,
                                                          tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text('batch_size = 2\nseed = 7\nresize = "short_side"\nshort_side = 40\n'
                    'dtype = "float32"\nmean = [0.5, 0.5, 0.5]\n')
    # Daemons.start passes --batch-size 4 and --seed 0 as flags: they win over the file.
    name = daemons.start(manifest, workers=1, slots=2, seed=3, dtype="float32",
                         extra=["--config", str(conf), "--flip"])
    got = _config(name)
    assert got["batch_size"] == 4  # flag over file
    assert got["seed"] == 3  # flag over file
    assert (got["resize"], got["short_side"], got["mean"]) == ("short_side", 40, [0.5] * 3)
    assert got["flip"] is True  # flag
    assert got["retry_delay_s"] == 2.0  # default
    assert got["size"] == "24x32"
    # What `config` prints starts the same pipeline again.
    again = tmp_path / "again.toml"
    again.write_text(cli("config", name).stdout.replace(f'name = "{name}"', ""))
    other = f"again-{os.getpid()}"
    daemons.start(manifest, name=other, workers=1, slots=2, seed=3, dtype="float32",
                  extra=["--config", str(again)])
    assert {k: v for k, v in _config(other).items() if k != "name"} == {
        k: v for k, v in got.items() if k != "name"}


def test_bad_settings_are_usage_errors_that_name_their_source(manifest: Path,
                                                              tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text("batch_size = 0\n")
    base = ["serve", "--name", f"never-{os.getpid()}", "--manifest", str(manifest),
            "--clip-length", "4", "--size", "8x8"]
    from_file = cli(*base, "--config", str(conf))
    assert from_file.returncode == 2
    assert f"config {conf}: batch_size: must be a positive integer" in from_file.stderr
    conf.write_text('batch_size = 2\ntask_timeout_s = "10"\n')  # a number written as text
    typed = cli(*base, "--config", str(conf))
    assert typed.returncode == 2
    assert f"config {conf}: task_timeout_s: expected a number, got '10'" in typed.stderr
    conf.write_text("batch_size = 3\n")
    from_flag = cli(*base, "--config", str(conf), "--batch-size", "0")
    assert from_flag.returncode == 2
    assert "vidring serve: batch_size: must be a positive integer, got 0" in from_flag.stderr
    bare = cli("serve", "--clip-length", "4")
    assert bare.returncode == 2
    assert "required: --manifest, --name, --batch-size, --size" in bare.stderr
    bad_manifest = tmp_path / "m.csv"
    bad_manifest.write_text("path,label,colour\na.mp4,1,red\n")
    checked = cli("check", str(bad_manifest))
    assert checked.returncode == 1  # the data is wrong, not the command line
    assert "unknown column 'colour'" in checked.stderr


def test_relative_scaling_and_auto_workers(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=1, slots=2)
    assert "workers 1 -> 3" in cli("scale", name, "+2").stdout
    assert "workers 3 -> 2" in cli("scale", name, "-1").stdout
    assert "workers 2 -> 0" in cli("scale", name, "-5").stdout  # not below zero
    assert cli("scale", name, "2").returncode == 0
    wait_until(lambda: status(name).workers.idle == 2, 30, "two idle workers")
    bad = cli("scale", name, "lots")
    assert bad.returncode == 2
    assert "expected N, +K or -K" in bad.stderr
    auto = daemons.start(manifest, slots=2, extra=["--workers", "auto"])
    assert status(auto).workers.target == max(1, default_workers() - 1)


def test_a_scale_past_max_workers_is_capped_and_says_so(
        daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=1, slots=2, extra=["--max-workers", "3"])
    capped = cli("scale", name, "1000")
    assert capped.returncode == 0
    assert "workers 1 -> 3 (the most its --max-workers allows)" in capped.stdout
    wait_until(lambda: status(name).workers.idle == 3, 30, "three idle workers")
    assert status(name).workers.alive == 3
    assert "workers 3 -> 2\n" in cli("scale", name, "2").stdout  # no note when not capped


def test_prometheus_metrics_from_a_real_daemon(daemons: Daemons, manifest: Path,
                                               tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    name = daemons.start(manifest, workers=2, slots=2, extra=["--metrics-port", "0",
                                                              "--log-level", "info"], log=log)
    # Port 0: the kernel picks one, and the log names the one it picked.
    logged = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log.read_text())
    assert logged, log.read_text()
    port = int(logged.group(1))
    assert port != 0
    with ClipDataset(name) as ds:
        for i in range(len(ds)):
            ds[i]

    def scrape() -> dict[str, float]:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        values = {}
        for line in body.decode().splitlines():
            if line.startswith("vidring_") and f'pipeline="{name}"' in line:
                key, value = line.rsplit(" ", 1)
                values[key.split("{")[0] + key.split("}")[-1]] = float(value)
        return values

    metrics = wait_until(lambda: (m := scrape()).get("vidring_clips_total", 0) >= 16 and m, 10,
                         "16 clips counted")
    assert metrics["vidring_trainer_wait_seconds_count"] >= 4
    assert metrics["vidring_decode_seconds_count"] >= 16
    assert metrics["vidring_workers"] == 2
    assert metrics["vidring_slots"] == 2
    assert metrics["vidring_errors_total"] == 0
    assert "vidring_queue_depth" in metrics
    assert "vidring_spills_total" in metrics
    assert "vidring_worker_restarts_total" in metrics


def test_max_workers_is_never_below_what_was_asked_for(manifest: Path) -> None:
    base = {"manifest": str(manifest), "name": "x", "batch_size": 2, "clip_length": 4,
            "size": "8x8"}
    assert build(base | {"workers": 1}).max_workers == default_max_workers()
    many = default_max_workers() + 3
    assert build(base | {"workers": many}).max_workers == many
    assert build(base | {"workers": 1, "autoscale": f"1:{many}"}).max_workers == many
    with pytest.raises(ValueError, match="max_workers: 2 is below workers 3"):
        build(base | {"workers": 3, "max_workers": 2})
    with pytest.raises(ValueError, match="max_workers: 2 is below the autoscale maximum 4"):
        build(base | {"workers": 1, "max_workers": 2, "autoscale": "1:4"})
