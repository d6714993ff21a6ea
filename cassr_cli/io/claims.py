"""Claims on outputs: concurrent cassr processes on one DEST never compute the same image twice.

Before it computes an output, a process creates the claim file ``.{name}.cassr-claim`` next to the output
(where the write's temporary file appears) with ``O_CREAT | O_EXCL``, so exactly one process holds it.
The claim records the owner's host, process id, a random token and its lease; the owner renews the lease
(the claim file's modification time) while it works and removes the claim once the output is written or
has failed. A process that finds a claim treats the output as in progress elsewhere, unless the claim is
stale:

* its lease ran out (the owner stopped renewing it: a dead node, a frozen or killed process), or
* its owner ran on this machine (same host name, boot and PID namespace) and that process is gone, or
* it was made by an earlier attempt of the same run (a Ray task retried after its worker died).

A stale claim is taken over by renaming it aside (only one of several takers can rename a given file),
checking that the renamed file is the very claim judged stale (otherwise it is put back), and claiming
anew with ``O_EXCL``. A new owner removes the output's leftover temporary files.

Shared file systems: ``O_EXCL`` creation and ``rename`` are atomic on local file systems and on NFS v3 and
later, which is all this relies on. A lease is judged by comparing the claim file's modification time (set
by the file server on NFS) with this machine's clock, so clocks must agree to well within the lease (NTP).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from cassr_cli.io.atomic import temporary_names
from cassr_cli.io.discover import CLAIM_SUFFIX, PARTIAL_SUFFIX

DEFAULT_LEASE_SECONDS = 120.0
"""How long a claim stays valid without renewal. Owners renew every quarter of it."""

IN_PROGRESS_ELSEWHERE = "in progress elsewhere"
"""The ``error`` of a ``skipped`` result whose output another process is computing."""

_HELPER_NAME = re.compile(rf"\.(?P<name>.+)\.(?:stale-)?[0-9a-f]{{8}}{re.escape(PARTIAL_SUFFIX)}")


@dataclass(frozen=True)
class ClaimOwner:
    """Who holds a claim (the claim file's content, one JSON line).

    Attributes:
        host: the owner's host name.
        pid: the owner's process id.
        instance: the host's boot and PID-namespace identity ("" where unknown): the process id is only
            checked for life when this matches, so containers sharing a host name are never confused.
        token: random, unique per claim.
        run: the run the claim belongs to (None: the process's own batch).
        lease: seconds the claim stays valid without renewal.
        attempt: 1, or one more than the claim of the same run it took over (a retried task): a run
            gives up on an image after a few attempts instead of retrying a poison image forever.
    """

    host: str
    pid: int
    instance: str
    token: str
    run: str | None
    lease: float
    attempt: int = 1

    def encode(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> ClaimOwner | None:
        """The owner in ``data``, or None when it is empty or unreadable (a claim still being written)."""
        try:
            fields = json.loads(data.decode())
            return cls(
                host=str(fields["host"]),
                pid=int(fields["pid"]),
                instance=str(fields["instance"]),
                token=str(fields["token"]),
                run=None if fields["run"] is None else str(fields["run"]),
                lease=float(fields["lease"]),
                attempt=int(fields.get("attempt", 1)),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None


@dataclass(frozen=True)
class Claim:
    """A claim this process holds on ``output`` (the file ``path``)."""

    output: Path
    path: Path
    owner: ClaimOwner


@dataclass(frozen=True)
class _OnDisk:
    """A claim file as read: its content, owner (None if unreadable), mtime and identity."""

    data: bytes
    owner: ClaimOwner | None
    mtime: float
    file_id: tuple[int, int]

    def is_same(self, other: _OnDisk) -> bool:
        """The same file with the same content (inode numbers alone can be reused)."""
        return self.file_id == other.file_id and self.data == other.data


def claim_path(output: Path) -> Path:
    """The claim file of ``output``: ``.{name}.cassr-claim`` in the output's folder."""
    return output.with_name(f".{output.name}{CLAIM_SUFFIX}")


def release_claim(output: Path, token: str) -> None:
    """Remove the claim on ``output`` if it still carries ``token`` (any process of the owner's run may
    release it, e.g. the Ray task that wrote the output after another computed it)."""
    path = claim_path(output)
    on_disk = _read(path)
    if on_disk is not None and on_disk.owner is not None and on_disk.owner.token == token:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class Claims:
    """The claims of one process: acquire, renew (a keeper thread), release.

    Use as a context manager: the keeper renews every held claim each ``lease / 4`` seconds, and leaving
    the block releases whatever is still held (also on Ctrl-C).

    Args:
        lease: seconds a claim stays valid without renewal.
        run: an id shared by every process of one run whose scheduler never runs one image twice at the
            same time (a Ray job): a claim of the same run that this object does not hold is an earlier,
            failed attempt and is taken over at once.
    """

    def __init__(self, *, lease: float = DEFAULT_LEASE_SECONDS, run: str | None = None) -> None:
        if lease <= 0:
            raise ValueError("lease must be positive")
        self.lease = lease
        self.run = run
        self._host = socket.gethostname()
        self._instance = host_instance()
        self._held: dict[Path, Claim] = {}
        self._handed_off: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    # --- context: the keeper ----------------------------------------------------------------------------
    def __enter__(self) -> Claims:
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, name="cassr-claims", daemon=True)
        self._keeper.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join()
            self._keeper = None
        self.release_all()

    def _keep(self) -> None:
        while not self._stop.wait(self.lease / 4):
            self.renew()

    # --- claiming ---------------------------------------------------------------------------------------
    def acquire(self, output: Path) -> Claim | None:
        """Claim ``output``; None when a live owner holds it. Takes over a stale claim and removes the
        output's leftover temporary files. OSErrors other than "exists" propagate (an unwritable DEST)."""
        path = claim_path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(8):  # each turn either ends or saw a claim change hands
            claim = self._create(output, path)
            if claim is not None:
                return claim
            on_disk = _read(path)
            if on_disk is None:  # released meanwhile: try again
                continue
            if not self.is_stale(on_disk):
                return None
            claim = self._take_over(output, path, on_disk)
            if claim is not None:
                return claim
        return None

    def is_free(self, output: Path) -> bool:
        """True when ``output`` has no claim or only a stale one (a cheap look, claiming nothing)."""
        on_disk = _read(claim_path(output))
        return on_disk is None or self.is_stale(on_disk)

    def holds(self, claim: Claim) -> bool:
        """True while the claim file still carries this claim's token (it was not taken over)."""
        on_disk = _read(claim.path)
        return on_disk is not None and on_disk.owner is not None and on_disk.owner.token == claim.owner.token

    def release(self, claim: Claim) -> None:
        """Remove the claim (unless another process took it over meanwhile)."""
        with self._lock:
            self._held.pop(claim.output, None)
            self._handed_off.discard(claim.output)
        release_claim(claim.output, claim.owner.token)

    def hand_off(self, claim: Claim) -> None:
        """Another process of this run will release ``claim`` (with :func:`release_claim`); keep renewing
        it until then."""
        with self._lock:
            self._handed_off.add(claim.output)

    def release_all(self) -> None:
        with self._lock:
            claims = [c for c in self._held.values() if c.output not in self._handed_off]
        for claim in claims:
            self.release(claim)

    def renew(self) -> None:
        """Extend the lease of every held claim; forget claims that are gone or were taken over."""
        with self._lock:
            claims = list(self._held.values())
        for claim in claims:
            if self.holds(claim):
                with contextlib.suppress(OSError):
                    os.utime(claim.path)
            else:
                with self._lock:
                    self._held.pop(claim.output, None)
                    self._handed_off.discard(claim.output)

    # --- judging ----------------------------------------------------------------------------------------
    def is_stale(self, on_disk: _OnDisk) -> bool:
        owner = on_disk.owner
        age = time.time() - on_disk.mtime
        if owner is None:  # empty or garbled: being written, or its writer died right after creating it
            return age > self.lease
        if age > owner.lease:
            return True
        if self.run is not None and owner.run == self.run:
            with self._lock:
                return not any(c.owner.token == owner.token for c in self._held.values())
        if owner.host == self._host and owner.instance == self._instance and owner.pid != os.getpid():
            return not _process_exists(owner.pid)
        return False

    # --- internals --------------------------------------------------------------------------------------
    def _create(self, output: Path, path: Path, *, attempt: int = 1) -> Claim | None:
        owner = ClaimOwner(
            host=self._host,
            pid=os.getpid(),
            instance=self._instance,
            token=secrets.token_hex(16),
            run=self.run,
            lease=self.lease,
            attempt=attempt,
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            return None
        try:
            os.write(fd, owner.encode())
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)
        claim = Claim(output=output, path=path, owner=owner)
        with self._lock:
            self._held[output] = claim
        remove_temporaries(output)
        return claim

    def _take_over(self, output: Path, path: Path, judged: _OnDisk) -> Claim | None:
        """Move the stale claim aside, make sure it is the one judged stale, then claim with ``O_EXCL``."""
        aside = path.with_name(f".{output.name}.stale-{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:  # another taker was faster
            return None
        moved = _read(aside)
        if moved is None or not moved.is_same(judged):
            # A fresh claim replaced the stale one after it was judged: give it back to its owner.
            with contextlib.suppress(OSError):
                os.link(aside, path)
            with contextlib.suppress(OSError):
                os.unlink(aside)
            return None
        with contextlib.suppress(OSError):
            os.unlink(aside)
        earlier = judged.owner
        retry = earlier is not None and self.run is not None and earlier.run == self.run
        return self._create(output, path, attempt=earlier.attempt + 1 if retry and earlier else 1)


def remove_temporaries(output: Path) -> int:
    """Delete the temporary files an interrupted write of ``output`` left behind (only the holder of
    the output's claim may call this). Returns how many were removed."""
    pattern = temporary_names(output.name)
    removed = 0
    try:
        entries = list(os.scandir(output.parent))
    except OSError:
        return 0
    for entry in entries:
        if pattern.fullmatch(entry.name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def sweep(folders: Iterable[Path], claims: Claims) -> int:
    """Clean what killed processes left in ``folders``: stale claims (taken over and released, which
    also removes their temporaries) and temporary files older than the lease whose output nobody claims.
    Returns the number of files removed."""
    removed = 0
    for folder in folders:
        try:
            names = {entry.name: entry for entry in os.scandir(folder)}
        except OSError:
            continue
        for name in list(names):
            if name.startswith(".") and name.endswith(CLAIM_SUFFIX):
                output = folder / name[1 : -len(CLAIM_SUFFIX)]
                on_disk = _read(folder / name)
                if on_disk is not None and claims.is_stale(on_disk):
                    claim = claims._take_over(output, folder / name, on_disk)
                    if claim is not None:
                        claims.release(claim)
                        removed += 1
        for name, entry in names.items():
            match = _HELPER_NAME.fullmatch(name)
            if match is None or (folder / f".{match['name']}{CLAIM_SUFFIX}").exists():
                continue
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > claims.lease:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def host_instance() -> str:
    """This machine's boot id and PID namespace (Linux), so a process id is only ever checked on the
    machine and in the namespace it belongs to. "" where the platform does not tell."""
    parts = []
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError, AttributeError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "/".join(parts)


def _read(path: Path) -> _OnDisk | None:
    """The claim file at ``path``, or None if there is none. Attributes come from the open file, which
    NFS revalidates on open (close-to-open consistency)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return _OnDisk(
        data=data,
        owner=ClaimOwner.decode(data),
        mtime=st.st_mtime,
        file_id=(st.st_dev, st.st_ino),
    )


def _process_exists(pid: int) -> bool:
    if os.name != "posix":  # no safe existence probe (os.kill would terminate): rely on the lease
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True
