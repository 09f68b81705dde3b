"""Operating a daemon: the CLI, bad messages, the lock and the runtime folder, stopping."""

from __future__ import annotations

import glob
import os
import signal
import stat
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import pytest
import zmq

from tests.support import N_VIDEOS, Daemons, cli, status, wait_until
from vidring.loader import Client, ClipDataset, VidringError, paths, protocol
from vidring.loader.ring import segment_name

if TYPE_CHECKING:
    from pathlib import Path

    from vidring.loader.status import StatusRecord


def _control_socket(name: str) -> tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{paths.control_socket_path(name)}")
    return ctx, sock


def _answer(sock: zmq.Socket[bytes]) -> protocol.Message:
    assert sock.poll(5000), "no reply"
    return protocol.decode(sock.recv(), protocol.ANSWERS)


def test_bad_messages_get_errors_and_the_daemon_keeps_serving(main_pipeline: str) -> None:
    ctx, sock = _control_socket(main_pipeline)
    try:
        for junk in (b"not json", b'{"v": 2, "type": "get_batch", "epoch": "x", "index": 0}',
                     b'{"v": 2, "type": "task_done", "task_id": 1}', b"[" * 5000,
                     b'{"v": 2, "type": "ping", "id": 3, "x": ' + b"[" * 5000 + b"}"):
            sock.send(junk)
            reply = _answer(sock)
            assert isinstance(reply, protocol.ErrorReply), junk[:40]
            assert reply.code == protocol.E_BAD_MESSAGE
        sock.send(protocol.encode(protocol.GetBatch(id=1, epoch=0, index=10**6)))
        reply = _answer(sock)
        assert isinstance(reply, protocol.ErrorReply)
        assert reply.code == protocol.E_BAD_REQUEST
        sock.send(b'{"v": 2, "type": "scale", "id": 42, "workers": -1}')
        reply = _answer(sock)
        assert isinstance(reply, protocol.ErrorReply)
        assert reply.id == 42  # the error reaches its request
    finally:
        sock.close()
        ctx.term()
    assert status(main_pipeline).name == main_pipeline


def test_a_deeply_nested_message_gets_an_error_reply(main_pipeline: str) -> None:
    ctx, sock = _control_socket(main_pipeline)
    try:
        sock.send(b'{"v": 2, "type": "release", "id": 9, "lease_ids": ' + b"[" * 5000 + b"}")
        reply = _answer(sock)
        # Not parsed, so its id is not known: id 0 errors go to whatever request waits.
        assert isinstance(reply, protocol.ErrorReply)
        assert reply.id == 0
        assert "nested deeper" in reply.message
    finally:
        sock.close()
        ctx.term()
    assert status(main_pipeline).name == main_pipeline


def test_cli_status_ls_and_stop(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=1, slots=2)
    plain = cli("status", name)
    assert plain.returncode == 0
    assert "queue" in plain.stdout
    assert "workers" in plain.stdout
    listed = cli("ls")
    assert name in listed.stdout
    bad = cli("scale", name, "5000")  # refused before it is sent, not a silent wait
    assert bad.returncode != 0
    assert "<= 1024" in bad.stderr
    assert "workers" in bad.stderr
    workers = daemons.workers(name)
    assert len(workers) == 1
    folder = paths.runtime_dir(name)
    stopped = cli("stop", name)
    assert stopped.returncode == 0
    daemons.stop(name)  # waits, and asserts: exit 0, no worker alive, no segment left
    assert not folder.exists()
    assert all(not w.is_running() for w in workers)
    missing = cli("status", name)
    assert missing.returncode == 1
    assert "no vidring daemon" in missing.stderr


def test_pipeline_names_cannot_collide_through_the_lock(daemons: Daemons, manifest: Path) -> None:
    base = f"lk{os.getpid()}"
    others = (f"{base}.lock", f"lock-{base}")
    for name in (base, *others):
        daemons.start(manifest, name=name, workers=1, slots=2)
    daemons.stop(base)  # must not take anything of the others with it
    for name in others:
        assert os.path.exists(f"/dev/shm/{segment_name(name)}")
        with ClipDataset(name) as ds:
            assert ds[0][0].shape[0] == 4


def test_sigterm_stops_like_vidring_stop(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=2, slots=2)
    folder = paths.runtime_dir(name)
    with ClipDataset(name) as ds:
        assert ds[0][0].shape[0] == 4
        wait_until(lambda: status(name).workers.idle == 2, 30, "both workers ready")
        workers = daemons.workers(name)
        assert len(workers) == 2
        os.kill(daemons.pid(name), signal.SIGTERM)
        assert daemons.running[name].wait(timeout=20) == 0
    daemons.stop(name)  # asserts: exit 0, no worker alive, no segment left
    assert all(not w.is_running() for w in workers)
    assert not folder.exists()
    assert not paths.lock_path(name).exists()


def test_a_second_daemon_of_a_name_is_refused_and_the_first_serves_on(
        daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=1, slots=2)
    second = cli("serve", "--name", name, "--manifest", str(manifest), "--batch-size", "4",
                 "--clip-length", "4", "--size", "8x8", "--workers", "1", timeout_s=60)
    assert second.returncode == 1
    assert "already served" in second.stderr
    with ClipDataset(name) as ds:
        assert ds[0][0].shape[0] == 4
    assert status(name).pid == daemons.pid(name)


def test_the_runtime_folder_and_sockets_are_owner_only(main_pipeline: str) -> None:
    folder = paths.runtime_dir(main_pipeline)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    for sock in (paths.CONTROL_SOCKET, paths.WORK_SOCKET):
        assert stat.S_IMODE((folder / sock).stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(os.stat(f"/dev/shm/{segment_name(main_pipeline)}").st_mode) == 0o600


def test_leases_of_a_client_the_daemon_cannot_see_expire_loudly(daemons: Daemons,
                                                                manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=2, workers=1, slots=2,
                         extra=["--lease-timeout-s", "1"])
    ctx, sock = _control_socket(name)
    try:
        # A trainer in another pid namespace (a container): its pid means nothing here.
        sock.send(protocol.encode(protocol.Hello(id=1, client_pid=os.getpid(), pid_ns=1)))
        assert isinstance(_answer(sock), protocol.Reply)
        sock.send(protocol.encode(protocol.GetBatch(id=2, epoch=0, index=0)))
        lease = _answer(sock)
        assert isinstance(lease, protocol.Reply)
        wait_until(lambda: status(name).slots.leased == 0, 10, "the silent client's lease")
        sock.send(protocol.encode(protocol.Ping(id=3)))
        notice = _answer(sock)
        assert isinstance(notice, protocol.ErrorReply)
        assert notice.code == protocol.E_LEASE_EXPIRED
        assert "epoch 0 batch 0" in notice.message
        assert "overwritten" in notice.message
        sock.send(protocol.encode(protocol.Ping(id=4)))
        assert isinstance(_answer(sock), protocol.Reply)  # said once, then served again
    finally:
        sock.close()
        ctx.term()


def _start_probing(daemons: Daemons, video_dir: Path, tmp_path: Path) -> tuple[str, Path]:
    """A daemon whose probe blocks on a FIFO until the test writes a video into it."""
    slow = tmp_path / "slow.mp4"
    os.mkfifo(slow)
    rows = [f"{video_dir / f'v{i:02d}.mp4'},{i}" for i in range(N_VIDEOS)] + [f"{slow},99"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    name = f"starting-{os.getpid()}"
    daemons.running[name] = subprocess.Popen(
        [sys.executable, "-m", "vidring.daemon.cli", "serve", "--name", name, "--manifest",
         str(tmp_path / "m.csv"), "--batch-size", "4", "--clip-length", "4", "--size", "8x8",
         "--workers", "1", "--probe-cache", str(daemons.probe_cache), "--log-level", "warning"],
        stdin=subprocess.DEVNULL)
    return name, slow


def test_a_starting_daemon_answers_status_and_a_trainer_waits_for_it(
        daemons: Daemons, video_dir: Path, tmp_path: Path) -> None:
    name, slow = _start_probing(daemons, video_dir, tmp_path)
    st = wait_until(lambda: _status_or_none(name), 30, "an answer while probing")
    assert st.phase == "probing"
    assert st.videos == N_VIDEOS + 1
    shown = cli("status", name)
    assert shown.returncode == 0
    assert "probing" in shown.stdout
    results: list[object] = []

    def train() -> None:
        try:
            with ClipDataset(name, timeout_s=60) as ds:
                results.append(ds[0][0].shape)
        except Exception as exc:  # reported below
            results.append(exc)

    trainer = threading.Thread(target=train)
    trainer.start()
    wait_until(lambda: status(name).clients == 1 or results, 30, "the trainer to wait")
    assert not results  # still waiting, not failed
    with open(slow, "wb") as fifo:  # now the probe can read it
        fifo.write((video_dir / "v00.mp4").read_bytes())
    trainer.join(timeout=60)
    assert results == [(4, 4, 8, 8, 3)]
    slow.unlink()
    slow.write_bytes((video_dir / "v00.mp4").read_bytes())  # a file from now on
    assert status(name).phase == "serving"


def _status_or_none(name: str) -> StatusRecord | None:
    try:
        with Client(name, timeout_s=1, heartbeat=False) as client:
            return client.status()
    except VidringError:
        return None


def test_a_stop_during_a_parallel_cold_probe_ends_its_processes(
        daemons: Daemons, video_dir: Path, tmp_path: Path) -> None:
    rows = []
    for i in range(40):  # a cold start of many videos probes in --workers processes
        copy = tmp_path / f"c{i:02d}.mp4"
        copy.write_bytes((video_dir / f"v{i % N_VIDEOS:02d}.mp4").read_bytes())
        rows.append(f"{copy},{i}")
    slow = tmp_path / "slow.mp4"
    os.mkfifo(slow)  # blocks one probe process forever
    (tmp_path / "m.csv").write_text("\n".join([*rows, f"{slow},99"]) + "\n")
    name = f"coldstop-{os.getpid()}"
    semaphores = set(glob.glob("/dev/shm/sem.mp-*"))
    daemons.running[name] = subprocess.Popen(
        [sys.executable, "-m", "vidring.daemon.cli", "serve", "--name", name, "--manifest",
         str(tmp_path / "m.csv"), "--batch-size", "4", "--clip-length", "4", "--size", "8x8",
         "--workers", "2", "--probe-cache", str(tmp_path / "cold-cache"),
         "--log-level", "warning"], stdin=subprocess.DEVNULL)
    # Probed in chunks of 16: all but the chunk holding the FIFO come back.
    wait_until(lambda: (st := _status_or_none(name)) and st.probed >= 32, 60,
               "the chunks without the FIFO probed")
    assert len(daemons.workers(name)) >= 1  # the probe pool's processes
    os.kill(daemons.pid(name), signal.SIGTERM)
    assert daemons.running[name].wait(timeout=20) == 0
    daemons.stop(name)  # asserts: no child process left, no segment
    assert set(glob.glob("/dev/shm/sem.mp-*")) <= semaphores  # the pool's locks went too


@pytest.mark.parametrize("how", ["vidring stop", "SIGTERM", "SIGINT", "SIGHUP"])
def test_a_daemon_stopped_while_probing_exits_cleanly(how: str, daemons: Daemons,
                                                      video_dir: Path, tmp_path: Path) -> None:
    name, _ = _start_probing(daemons, video_dir, tmp_path)
    wait_until(lambda: _status_or_none(name), 30, "an answer while probing")
    if how.startswith("SIG"):
        os.kill(daemons.pid(name), getattr(signal, how))
    else:
        assert cli("stop", name).returncode == 0
    assert daemons.running[name].wait(timeout=20) == 0
    daemons.stop(name)  # asserts: exit 0, no worker, no segment
    assert not paths.lock_path(name).exists()
    assert not paths.runtime_dir(name).exists()
