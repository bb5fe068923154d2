"""The sandbox's outer boundary: bubblewrap (``bwrap``, Debian package ``bubblewrap``).

Each program runs inside fresh (user,) PID, network, IPC, UTS, cgroup and mount namespaces that
bubblewrap sets up, with all capabilities dropped and ``no_new_privs`` set:

* the file system it sees is built from nothing: ``/usr`` (and the ``/bin``, ``/lib`` links), the
  Python interpreter's own prefix and a few files of ``/etc`` the dynamic loader needs, all
  read-only; a private ``/tmp`` (tmpfs), a minimal ``/dev`` and a ``/proc`` of its own PID namespace;
  the run's temporary directory is the one writable host path.  ``/etc/shadow``, ``/root``,
  ``/home``, the caller's working tree and every other host file are simply not there;
* it runs without any capability and, for an unprivileged caller, as user 65534 of a user namespace
  (``setuid(0)`` fails: uid 0 is not mapped); when the caller is root it runs as a real user id no
  account uses, unique to the run (uid 0 is exempt from ``RLIMIT_NPROC`` even inside a user
  namespace, so mapping to root would not do), so ``setuid(0)`` fails and the process limit holds;
* its network namespace has only its own loopback: no route anywhere, no host port, no abstract
  Unix socket of the host, no raw sockets (no capability);
* its PID namespace dies with it: when the program's first process ends, or bubblewrap is killed
  (``--die-with-parent``), the kernel kills every process left in the namespace, so nothing outlives
  a run; ``/proc`` shows only the sandbox's own processes (no parent ``environ`` to read).

When bubblewrap is missing or the kernel refuses the namespaces, :func:`boundary_problem` says why in
one sentence and the sandbox refuses to run unless the caller opts out (``QUICKSILVER_SANDBOX=
no-boundary`` or ``SandboxLimits(require_boundary=False)``).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

OPT_OUT_ENV = "QUICKSILVER_SANDBOX"
OPT_OUT_VALUE = "no-boundary"
SANDBOX_UID = 65534  # "nobody" inside the user namespace
PROBE_UID = 1_699_999_999  # an unused real user id for the probe run as root

# /etc files the dynamic loader and Python may read; nothing with secrets.
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime")


class SandboxUnavailable(RuntimeError):
    """No isolation boundary can be had here, and the caller did not opt out."""


def opted_out() -> bool:
    return os.environ.get(OPT_OUT_ENV, "") == OPT_OUT_VALUE


def _interpreter() -> tuple[str, list[str]]:
    """The real interpreter file (not a venv link) and the host folders it needs, besides /usr."""
    exe = os.path.realpath(sys.executable)
    prefixes = {os.path.realpath(sys.base_prefix), os.path.dirname(os.path.dirname(exe))}
    extra = sorted(p for p in prefixes if p != "/" and not (p + "/").startswith("/usr/"))
    return exe, extra


def bwrap_argv(work: str, info_fd: int | None = None, uid: int | None = None) -> list[str]:
    """The command line that runs a program inside the boundary; the program's command follows it.

    ``uid`` None (an unprivileged caller): a user namespace where the program is user 65534 with no
    capabilities.  ``uid`` given (the caller is root): the kernel exempts uid 0 from ``RLIMIT_NPROC``
    also when it is mapped into a user namespace, so instead the program takes that real, unused user
    id through ``setpriv`` (util-linux) inside the other namespaces, with every capability cleared
    (permitted, effective, inheritable, ambient and bounding sets) and ``no_new_privs``."""
    argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if uid is None:
        argv += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):  # merged /usr: keep the same links
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--perms", "0755", "--dir", "/etc"]  # bubblewrap makes missing parents 0700 by default
    for path in _ETC_FILES:
        argv += ["--ro-bind-try", path, path]
    for prefix in _interpreter()[1]:
        parts = prefix.strip("/").split("/")
        for i in range(1, len(parts)):  # e.g. /root/.pyenv/versions: searchable, empty but for the prefix
            argv += ["--perms", "0755", "--dir", "/" + "/".join(parts[:i])]
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
             "--bind", work, work, "--chdir", work, "--remount-ro", "/"]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    argv.append("--")
    if uid is not None:
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                 "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return argv


def interpreter() -> str:
    return _interpreter()[0]


@functools.lru_cache(maxsize=1)
def boundary_problem() -> str | None:
    """None when bubblewrap can build the sandbox here, else one sentence saying why not."""
    if sys.platform != "linux":
        return "the sandbox boundary (bubblewrap) needs Linux"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return (f"setpriv (util-linux) is missing, and the sandbox needs it to leave root; install util-linux, or set "
                f"{OPT_OUT_ENV}={OPT_OUT_VALUE} to run without a boundary")
    if shutil.which("bwrap") is None:
        return ("bubblewrap is not installed: run `make sandbox` (or `apt-get install bubblewrap`); "
                f"to run untrusted code without a boundary anyway set {OPT_OUT_ENV}={OPT_OUT_VALUE}")
    import tempfile

    work = tempfile.mkdtemp(prefix="qs-sandbox-probe-")
    try:
        uid = PROBE_UID if os.geteuid() == 0 else None
        probe = subprocess.run(bwrap_argv(work, uid=uid) + [interpreter(), "-I", "-S", "-c", "pass"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap could not start ({e}); set {OPT_OUT_ENV}={OPT_OUT_VALUE} to run without a boundary"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if probe.returncode != 0:
        why = probe.stderr.decode("utf-8", "replace").strip().splitlines()
        why_text = why[-1] if why else f"exit code {probe.returncode}"
        return (f"bubblewrap cannot build the sandbox here ({why_text}; user namespaces may be disabled, "
                f"e.g. kernel.unprivileged_userns_clone=0 or an AppArmor/seccomp policy of the container); "
                f"set {OPT_OUT_ENV}={OPT_OUT_VALUE} to run without a boundary")
    return None


def require_boundary() -> None:
    """Raise :class:`SandboxUnavailable` with the reason, unless a boundary exists or the user opted out."""
    problem = boundary_problem()
    if problem is not None and not opted_out():
        raise SandboxUnavailable(problem)


def namespace_of(pid: int) -> str | None:
    """The PID namespace of a host process (``pid:[inode]``), or None when it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in(namespace: str) -> list[int]:
    """Host PIDs of the processes still alive in a PID namespace (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != namespace:
                continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except (OSError, IndexError):
            continue
        found.append(int(entry))
    return found


__all__ = ["SandboxUnavailable", "OPT_OUT_ENV", "OPT_OUT_VALUE", "boundary_problem", "require_boundary",
           "bwrap_argv", "interpreter", "opted_out", "namespace_of", "processes_in"]
