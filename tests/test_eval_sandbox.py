"""The sandbox: each hostile program must be stopped without harming the host, quickly.

Every test here fails if the layer it checks is missing: a broken timeout hangs past the asserted
time, a missing memory limit lets the allocation succeed, a missing process limit lets the probe
fork more children than allowed, missing file protection deletes the file."""
from __future__ import annotations

import os
import time

import pytest

from quicksilver.eval.boundary import SandboxUnavailable, boundary_problem, processes_in
from quicksilver.eval.sandbox import SandboxLimits, run_python


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_pass_fail_and_output():
    ok = run_python("print('hello'); assert 1 + 1 == 2")
    assert ok.passed and ok.stdout == "hello\n" and ok.returncode == 0
    bad = run_python("assert 1 + 1 == 3, 'arithmetic'")
    assert bad.status == "failed" and "AssertionError: arithmetic" in bad.reason()


def test_environment_is_stripped_and_cwd_is_a_fresh_temp_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("QS_TEST_SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.chdir(tmp_path)
    result = run_python("import os, json; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), "
                        "'files': os.listdir('.')}))")
    assert result.passed, result.stderr
    import json

    seen = json.loads(result.stdout)
    assert "hunter2" not in result.stdout and "sk-secret" not in result.stdout
    assert "QS_TEST_SECRET_TOKEN" not in seen["env"] and "OPENAI_API_KEY" not in seen["env"]
    assert seen["cwd"] != str(tmp_path) and "qs-sandbox-" in seen["cwd"]
    assert seen["files"] == ["program.py"]
    assert not os.path.exists(seen["cwd"])  # removed after the run


def test_infinite_loop_is_killed_at_the_wall_clock_timeout():
    start = time.perf_counter()
    result = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=1.0, cpu_s=30))
    assert result.status == "timed out"
    assert time.perf_counter() - start < 3.0


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    start = time.perf_counter()
    result = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=20.0, cpu_s=1))
    assert result.status == "failed"  # killed by SIGXCPU/SIGKILL, not by the 20 s timeout
    assert time.perf_counter() - start < 5.0


def test_huge_allocation_fails_with_memory_error():
    # 8 GiB of untouched zero pages (bytes() uses calloc): without an address-space limit this
    # succeeds at once and costs the host nothing (the pages are never touched), so the test fails.
    result = run_python("x = bytes(8 * 2**30)\nprint('allocated')\n", SandboxLimits(memory_mb=512))
    assert result.status == "failed"
    assert "MemoryError" in result.stderr and "allocated" not in result.stdout


FORK_BOMB = """
import os, sys, time
print(os.getpid(), flush=True)
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
print(children, flush=True)
if children >= 12:                       # the limit is not working: do not set off the bomb
    sys.exit(3)
while True:                              # the bomb: every process forks for ever
    try:
        os.fork()
    except OSError:
        pass
"""


def test_fork_bomb_is_contained_and_every_process_is_gone():
    # The Python guard off, so the process limit itself is tested; the probe refuses to set off the
    # bomb when more than the allowed processes could be made, so a broken limit cannot harm the host.
    start = time.perf_counter()
    result = run_python(FORK_BOMB, SandboxLimits(timeout_s=1.5, nproc=8, guard=False))
    elapsed = time.perf_counter() - start
    lines = result.stdout.split()
    assert len(lines) == 2, result.stderr
    children = int(lines[1])
    assert children < 8, f"{children} children: the process limit did not hold"
    assert result.status == "timed out" and elapsed < 4.0
    if result.namespace is not None:  # bubblewrap: its PID namespace is empty (tests/test_sandbox_hostile.py)
        assert processes_in(result.namespace) == []


def test_fork_is_refused_by_the_guard():
    result = run_python("import os\nos.fork()\n")
    assert result.status == "failed" and "PermissionError" in result.stderr


@pytest.mark.parametrize("guard", [True, False])
def test_cannot_delete_or_overwrite_files_outside_the_temp_dir(tmp_path, guard):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    program = (f"import os, pathlib, shutil\n"
               f"p = pathlib.Path({str(precious)!r})\n"
               f"for attempt in (lambda: p.unlink(), lambda: open(p, 'w').write('gone'),\n"
               f"                lambda: shutil.rmtree(p.parent), lambda: os.rename(p, 'stolen')):\n"
               f"    try:\n        attempt()\n    except Exception as e:\n        print(type(e).__name__)\n"
               f"open('mine.txt', 'w').write('ok')\nos.remove('mine.txt')\nprint('own files ok')\n")
    result = run_python(program, SandboxLimits(guard=guard))
    assert precious.read_text() == "keep me"
    # the guard refuses each call; without it the host folder is not even visible in the sandbox
    refusals = [line for line in result.stdout.splitlines() if line in ("PermissionError", "FileNotFoundError")]
    assert len(refusals) == 4, result.stdout + result.stderr
    if not guard:
        assert "own files ok" in result.stdout  # the temp dir itself stays writable


def test_output_is_capped():
    result = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
                        SandboxLimits(timeout_s=5.0, file_mb=1))
    assert result.status == "failed"  # SIGXFSZ at the file-size limit
    assert len(result.stdout) <= 70_000


def test_refuses_without_a_boundary_unless_opted_out(monkeypatch):
    from quicksilver.eval import sandbox

    monkeypatch.setattr(sandbox, "boundary_problem", lambda: "bubblewrap is not installed")
    monkeypatch.delenv("QUICKSILVER_SANDBOX", raising=False)
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        run_python("print('ran')")
    monkeypatch.setenv("QUICKSILVER_SANDBOX", "no-boundary")
    r = run_python("print('ran')")
    assert r.passed and "bubblewrap" not in r.isolation
    monkeypatch.delenv("QUICKSILVER_SANDBOX")
    assert run_python("print('ran')", SandboxLimits(require_boundary=False)).passed


def test_missing_bwrap_is_named_in_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no bwrap, no setpriv
    boundary_problem.cache_clear()
    try:
        problem = boundary_problem()
    finally:
        monkeypatch.undo()
        boundary_problem.cache_clear()
    assert problem is not None and ("bubblewrap" in problem or "setpriv" in problem)
    assert "\n" not in problem
