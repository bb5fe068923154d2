"""Hostile programs against the evaluation sandbox (bubblewrap boundary), each with its exact outcome.

The programs run once, in parallel, in a module fixture (each is its own sandbox, so they cannot
interfere); every test then asserts one case.  The Python guard and Landlock are off in these runs, so the
boundary itself is what is tested, not the stubs.  After every run no process of its PID namespace
may be alive.  The last test repeats a set of cases as an unprivileged user when the suite runs as
root (as CI does)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from quicksilver.eval import boundary
from quicksilver.eval.boundary import SandboxUnavailable, boundary_problem, processes_in
from quicksilver.eval.sandbox import SandboxLimits, run_python

pytestmark = pytest.mark.skipif(boundary_problem() is not None, reason=f"no sandbox boundary: {boundary_problem()}")

SECRET = "qs-hostile-secret-" + uuid.uuid4().hex
NPROC = 8

FORK_PROBE = f"""
import os, sys, time
children = 0
for _ in range(40):                      # probe: how many processes may we have?
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children += 1
print("children", children, flush=True)
if children >= {NPROC}:                  # the limit is not working: do not set off the bomb
    sys.exit(3)
while True:                              # the bomb
    try:
        os.fork()
    except OSError:
        pass
"""


def _try(label: str, code: str) -> str:
    """A program line that runs ``code`` and prints ``label: ok`` or ``label: <ExceptionName>``."""
    return (f"try:\n    {code}\n    print({label!r} + ': ok', flush=True)\n"
            f"except BaseException as e:\n    print({label!r} + ': ' + type(e).__name__, flush=True)\n")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Host resources the programs try to reach: listening sockets, a file, a secret in the environment."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "secret.txt").write_text(SECRET)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    unix_path = str(folder / "host.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen(8)
    unix.setblocking(False)
    abstract_name = "\0qs-hostile-" + uuid.uuid4().hex
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(abstract_name)
    abstract.listen(8)
    abstract.setblocking(False)
    leak = f"/tmp/qs-hostile-leak-{uuid.uuid4().hex}"
    os.environ["QS_HOSTILE_SECRET"] = SECRET
    try:
        yield {"folder": folder, "tcp": tcp, "udp": udp, "unix": unix, "unix_path": unix_path,
               "abstract": abstract, "abstract_name": abstract_name, "leak": leak}
    finally:
        os.environ.pop("QS_HOSTILE_SECRET", None)
        for s in (tcp, udp, unix, abstract):
            s.close()
        if os.path.exists(leak):
            os.remove(leak)


def _programs(host) -> dict[str, tuple[str, SandboxLimits]]:
    free = SandboxLimits(guard=False, landlock=False, timeout_s=5.0, nproc=NPROC)
    tcp_port, udp_port = host["tcp"].getsockname()[1], host["udp"].getsockname()[1]
    me = os.getpid()
    secret_file = str(host["folder"] / "secret.txt")
    return {
        "fork_bomb": (FORK_PROBE, SandboxLimits(guard=False, landlock=False, timeout_s=1.5, nproc=NPROC)),
        "setresuid_fork_bomb": ("import os\n" + _try("setresuid", "os.setresuid(0, 0, 0)") + _try("setuid", "os.setuid(0)")
                                + "import os\nprint('uid', os.getuid(), os.geteuid(), flush=True)\n" + FORK_PROBE,
                                SandboxLimits(guard=False, landlock=False, timeout_s=1.5, nproc=NPROC)),
        "outlive": (textwrap.dedent("""
            import os, time
            pid = os.fork()
            if pid == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                os._exit(0)
            os.waitpid(pid, 0)
            print("daemon started", flush=True)
            """), free),
        "shadow": ("import os\n" + _try("shadow", "print(open('/etc/shadow').read())"), free),
        "root_dir": ("import os, json\n" + _try("root", "print('ROOT', json.dumps(os.listdir('/root')))")
                     + _try("home", "print('HOME', json.dumps(os.listdir('/home')))")
                     + _try("bashrc", "print(open('/root/.bashrc').read())"), free),
        "environ": ("import os, glob\n"
                    f"print('ENV', dict(os.environ), flush=True)\n"
                    + _try("caller_environ", f"print(open('/proc/{me}/environ', 'rb').read())")
                    + _try("ppid_environ", "print(open(f'/proc/{os.getppid()}/environ', 'rb').read())")
                    + "for path in glob.glob('/proc/*/environ'):\n"
                      "    try:\n        print(path, open(path, 'rb').read())\n"
                      "    except OSError as e:\n        print(path, type(e).__name__)\n"
                    + _try("host_file", f"print(open({secret_file!r}).read())"), free),
        "tcp": ("import socket\n"
                + _try("tcp_host", f"socket.create_connection(('127.0.0.1', {tcp_port}), timeout=2)")
                + _try("tcp_outside", "socket.create_connection(('1.1.1.1', 53), timeout=2)"), free),
        "udp": ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                + _try("udp_host", f"s.sendto(b'hello', ('127.0.0.1', {udp_port}))")
                + _try("udp_outside", "s.sendto(b'hello', ('1.1.1.1', 53))"), free),
        "unix": ("import socket\n"
                 + _try("unix_path", f"socket.socket(socket.AF_UNIX).connect({host['unix_path']!r})")
                 + _try("unix_abstract", f"socket.socket(socket.AF_UNIX).connect({host['abstract_name']!r})"), free),
        "raw": ("import socket\n"
                + _try("raw_icmp", "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)")
                + _try("packet", "socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)"), free),
        "writes": ("import os\n"
                   + _try("usr", "open('/usr/qs-hostile', 'w').write('x')")
                   + _try("etc", "open('/etc/qs-hostile', 'w').write('x')")
                   + _try("slash", "open('/qs-hostile', 'w').write('x')")
                   + _try("host_folder", f"open({secret_file!r}, 'w').write('x')")
                   + _try("tmp_leak", f"open({host['leak']!r}, 'w').write('x')")
                   + _try("own", "open('mine.txt', 'w').write('x')"), free),
        "mknod": ("import os, stat\n"
                  + _try("block", "os.mknod('sda', stat.S_IFBLK | 0o600, os.makedev(8, 0))")
                  + _try("char", "os.mknod('mem', stat.S_IFCHR | 0o600, os.makedev(1, 1))")
                  + _try("dev_sda", "open('/dev/sda', 'rb').read(1)"), free),
        "loop": ("while True:\n    pass\n", SandboxLimits(guard=False, landlock=False, timeout_s=1.0, cpu_s=30)),
        "alloc_8g": ("x = bytearray(8 * 2**30)\nprint('allocated')\n", SandboxLimits(guard=False, landlock=False, memory_mb=512)),
    }


@pytest.fixture(scope="module")
def runs(host):
    programs = _programs(host)
    with ThreadPoolExecutor(max_workers=len(programs)) as pool:
        futures = {name: pool.submit(run_python, source, limits) for name, (source, limits) in programs.items()}
        return {name: f.result() for name, f in futures.items()}


def _lines(result) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


def _nothing_left(result) -> None:
    assert result.namespace is not None, "the run had no PID namespace"
    assert processes_in(result.namespace) == [], "a process of the run is still alive"


def _children(result) -> int:
    return int(next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("children")))


def test_fork_bomb_stops_at_the_process_limit(runs):
    r = runs["fork_bomb"]
    assert _children(r) < NPROC and r.status == "timed out"
    _nothing_left(r)


def test_fork_bomb_after_setresuid_root(runs):
    r = runs["setresuid_fork_bomb"]
    seen = _lines(r)
    assert seen["setresuid"] in ("PermissionError", "OSError") and seen["setuid"] in ("PermissionError", "OSError")
    assert not r.stdout.split("uid ", 1)[1].startswith("0 ")  # not root, really or effectively
    assert _children(r) < NPROC and r.status == "timed out"
    _nothing_left(r)


def test_a_daemon_does_not_outlive_the_run(runs):
    r = runs["outlive"]
    assert r.passed and "daemon started" in r.stdout
    _nothing_left(r)


def test_etc_shadow_is_not_there(runs):
    r = runs["shadow"]
    assert _lines(r)["shadow"] == "FileNotFoundError" and "root:" not in r.stdout
    _nothing_left(r)


def test_root_and_home_are_empty(runs):
    r = runs["root_dir"]
    # /root exists only when the interpreter lives below it; then it holds only that path
    needed = {p.split("/")[2] for p in boundary._interpreter()[1] if p.startswith("/root/")}
    listed = set(json.loads(r.stdout.split("ROOT ", 1)[1].splitlines()[0])) if "ROOT " in r.stdout else set()
    assert listed <= needed, listed
    assert _lines(r)["bashrc"] == "FileNotFoundError"
    assert "HOME " not in r.stdout or r.stdout.split("HOME ", 1)[1].startswith("[]")
    _nothing_left(r)


def test_no_environ_of_the_caller_or_host_files(runs):
    r = runs["environ"]
    assert SECRET not in r.stdout and SECRET not in r.stderr
    seen = _lines(r)
    assert seen["caller_environ"] in ("FileNotFoundError", "PermissionError")
    assert seen["host_file"] == "FileNotFoundError"
    _nothing_left(r)


def test_tcp_reaches_nothing(runs, host):
    seen = _lines(runs["tcp"])
    assert seen["tcp_host"] == "ConnectionRefusedError"  # its own empty loopback, not the host's
    assert seen["tcp_outside"] in ("OSError", "TimeoutError")  # network unreachable
    with pytest.raises(BlockingIOError):
        host["tcp"].accept()
    _nothing_left(runs["tcp"])


def test_udp_reaches_nothing(runs, host):
    seen = _lines(runs["udp"])
    assert seen["udp_outside"] == "OSError"  # network unreachable
    with pytest.raises(BlockingIOError):
        host["udp"].recv(16)  # whatever went to 127.0.0.1 stayed in the sandbox's own loopback
    _nothing_left(runs["udp"])


def test_unix_sockets_of_the_host_are_out_of_reach(runs, host):
    seen = _lines(runs["unix"])
    assert seen["unix_path"] == "FileNotFoundError" and seen["unix_abstract"] == "ConnectionRefusedError"
    for listener in (host["unix"], host["abstract"]):
        with pytest.raises(BlockingIOError):
            listener.accept()
    _nothing_left(runs["unix"])


def test_raw_and_packet_sockets_are_refused(runs):
    seen = _lines(runs["raw"])
    assert seen["raw_icmp"] == "PermissionError" and seen["packet"] == "PermissionError"
    _nothing_left(runs["raw"])


def test_writes_outside_the_temp_dir_fail_or_stay_private(runs, host):
    seen = _lines(runs["writes"])
    assert seen["usr"] in ("OSError", "PermissionError")  # read-only file system
    assert seen["etc"] in ("OSError", "PermissionError") and seen["slash"] in ("OSError", "PermissionError")
    assert seen["host_folder"] == "FileNotFoundError"
    assert seen["own"] == "ok"
    assert not os.path.exists(host["leak"])  # /tmp of the sandbox is its own tmpfs
    assert (host["folder"] / "secret.txt").read_text() == SECRET
    for path in ("/usr/qs-hostile", "/etc/qs-hostile", "/qs-hostile"):
        assert not os.path.exists(path)
    _nothing_left(runs["writes"])


def test_mknod_is_refused(runs):
    seen = _lines(runs["mknod"])
    assert seen["block"] == "PermissionError" and seen["char"] == "PermissionError"
    assert seen["dev_sda"] == "FileNotFoundError"  # /dev holds only null, zero, random, tty and the like
    _nothing_left(runs["mknod"])


def test_infinite_loop_times_out(runs):
    r = runs["loop"]
    assert r.status == "timed out" and r.seconds < 3.0
    _nothing_left(r)


def test_8_gb_allocation_is_refused(runs):
    r = runs["alloc_8g"]
    assert r.status == "failed" and "MemoryError" in r.stderr and "allocated" not in r.stdout
    _nothing_left(r)


UNPRIVILEGED = """
import json, sys, types
sys.modules["quicksilver"] = types.ModuleType("quicksilver")
sys.modules["quicksilver"].__path__ = [sys.argv[1]]
from quicksilver.eval.boundary import processes_in
from quicksilver.eval.sandbox import SandboxLimits, run_python
free = SandboxLimits(guard=False, landlock=False, timeout_s=2.0, nproc=8)
out = {}
for name, source in json.loads(sys.argv[2]).items():
    r = run_python(source, free)
    out[name] = {"stdout": r.stdout, "status": r.status, "left": processes_in(r.namespace) if r.namespace else None,
                 "isolation": r.isolation}
print(json.dumps(out))
"""


def test_as_an_unprivileged_user(tmp_path):
    """The same boundary when the caller is not root: run by uid 65534 through setpriv."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to become an unprivileged user")
    python = "/usr/bin/python3"
    src = str(Path(__file__).resolve().parents[1] / "src" / "quicksilver")
    if not os.path.exists(python):
        pytest.skip("no /usr/bin/python3 for the unprivileged user")
    check = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
                            f"import os; os.listdir({src!r} + '/eval')"], capture_output=True)
    if check.returncode != 0:
        pytest.skip("the source tree is not readable by an unprivileged user here")
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    programs = {
        "fork": _try("setresuid", "os.setresuid(0, 0, 0)").replace("try:", "import os\ntry:", 1) + FORK_PROBE,
        "reads": "import os, json\n" + _try("shadow", "open('/etc/shadow').read()")
                 + _try("host_file", f"open({str(secret_file)!r}).read()") + "print('ENV', dict(os.environ))\n",
        "net": "import socket\n" + _try("tcp_outside", "socket.create_connection(('1.1.1.1', 53), timeout=2)")
               + _try("raw", "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)"),
    }
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "QS_HOSTILE_SECRET": SECRET}
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", UNPRIVILEGED,
                           src, json.dumps(programs)], capture_output=True, text=True, env=env, timeout=60, cwd="/")
    if proc.returncode != 0 and "bubblewrap cannot build" in proc.stderr:
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "bubblewrap" in out["reads"]["isolation"]
    fork_lines = _lines(types_result(out["fork"]["stdout"]))
    assert fork_lines["setresuid"] in ("PermissionError", "OSError")
    assert _children(types_result(out["fork"]["stdout"])) < 8 and out["fork"]["status"] == "timed out"
    reads = _lines(types_result(out["reads"]["stdout"]))
    assert reads["shadow"] == "FileNotFoundError" and reads["host_file"] == "FileNotFoundError"
    assert SECRET not in out["reads"]["stdout"]
    net = _lines(types_result(out["net"]["stdout"]))
    assert net["tcp_outside"] in ("OSError", "TimeoutError") and net["raw"] == "PermissionError"
    assert all(run["left"] == [] for run in out.values())


def types_result(stdout: str):
    class R:  # the shape _lines and _children read
        pass
    r = R()
    r.stdout = stdout
    return r
