"""`qknorm study` as a user runs it, in a subprocess: output to a closed pipe (`| head -1`) never hangs and never
prints a traceback; Ctrl-C prints one line, leaves no worker behind and exits 130."""
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from helpers.load import scaled, wait_until

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = ["study", "--profile", "smoke", "--variants", "baseline,qknorm", "--device", "cpu"]


def _env(**extra):
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}


def _tagged(tag):
    """PIDs of live processes whose environment holds `tag` (the study and any worker it started)."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and tag.encode() in (p / "environ").read_bytes():
                stat = (p / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(p.name))
        except OSError:
            continue
    return pids


def _as_a_terminal_starts_a_job():
    """In the child before exec: SIGINT at its default and not blocked, as a shell starts a foreground job,
    whatever this test process (a pytest-xdist worker that ran other tests) has set for itself."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def _signal_state(pid):
    """The SigBlk/SigIgn/SigCgt/SigPnd lines of /proc/PID/status (SIGINT is bit 2: mask 0x2)."""
    try:
        return [line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith(("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"))]
    except OSError:
        return []


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


def test_closed_pipes_neither_hang_nor_lose_the_study(tmp_path):
    """`qknorm study ... 2>&1 | head -1` with the table's stdout gone from the start and the progress log's reader
    gone after the first line, while two workers train: the study still finishes within its normal time, with
    exit status 0 (a traceback, or Python failing to flush at exit, would not be 0), and writes its files."""
    out = tmp_path / "s"
    p = subprocess.Popen([sys.executable, "-m", "qknorm", *TINY, "--lrs", "1e-3,1e-1", "--steps", "3",
                          "--workers", "2", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    p.stdout.close()
    first = p.stderr.readline()
    p.stderr.close()  # what `head -1` does
    try:
        rc = p.wait(timeout=scaled(240))
    finally:
        p.kill()
    assert rc == 0 and (out / "summary.json").is_file() and (out / "report.html").is_file()
    assert first.startswith(b"qknorm study (smoke profile, custom variants, steps): 4 runs")


def test_ctrl_c_prints_one_line_keeps_no_worker_and_exits_130(tmp_path):
    """SIGINT to the whole foreground process group, as a terminal sends it, while two workers train."""
    out, tag = tmp_path / "s", uuid.uuid4().hex
    inherited = _signal_state("self")  # what this test process would pass on to the study
    p = subprocess.Popen([sys.executable, "-m", "qknorm", *TINY, "--lrs", "1e-3,1e-1", "--steps", "100000",
                          "--workers", "2", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=_env(QKNORM_TEST_TAG=tag, PYTHONFAULTHANDLER="1"), start_new_session=True,
                         preexec_fn=_as_a_terminal_starts_a_job)
    try:  # events, not guessed sleeps: a loaded machine starts the workers late (helpers/load.py)
        wait_until(lambda: (out / "workers.log").exists(), "the study's worker log", 120, proc=p, poll=0.1)
        wait_until(lambda: len(_tagged(tag)) >= 3, "the study and its two workers running", 120, proc=p, poll=0.1)
        os.killpg(p.pid, signal.SIGINT)
        try:  # measured 4-6 s from SIGINT to exit at load average 20 on 2 cores
            stdout, stderr = p.communicate(timeout=scaled(60))
        except subprocess.TimeoutExpired:  # say who is still there, and where the study waits
            alive = {pid: _cmdline(pid) for pid in _tagged(tag)}
            study = _signal_state(p.pid)
            if p.poll() is None:
                os.kill(p.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER: the stack of every thread, then it dies
            try:
                err = p.communicate(timeout=scaled(10))[1]
            except subprocess.TimeoutExpired:
                p.kill()
                err = p.communicate()[1]
            for pid in _tagged(tag):
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"no exit within {scaled(60):.0f} s of Ctrl-C; tagged processes {alive}; signals "
                                 f"of the study {study}, of this test process {inherited}\n{err.decode()[-6000:]}")
    finally:
        p.kill()
    lines = stderr.decode().splitlines()
    assert p.returncode == 130, stderr.decode()
    # what the study printed before it started training (its plan; the machine and the estimate), then this one line
    assert lines[-1] == "qknorm study: interrupted" and lines[0].startswith("qknorm study ("), lines
    assert all(line.startswith(("this machine: ", "note: ", "  ")) for line in lines[1:-1]), lines  # "  ": per variant
    assert "Traceback" not in stderr.decode() and stdout == b""
    assert b"KeyboardInterrupt" not in (out / "workers.log").read_bytes()
    wait_until(lambda: _tagged(tag) == [], "the workers to exit after the study (a worker outlived it?)", 10, poll=0.1)


def test_backend_ray_without_ray_and_ray_address_without_it_are_one_line_before_any_work(tmp_path, monkeypatch,
                                                                                          capsys):
    """Ray is an optional extra: without it (the import fails), `--backend ray` names the extra; `--ray-address`
    needs `--backend ray`; a malformed address says which forms there are. Exit 2, one line, nothing written."""
    from qknorm.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    out = tmp_path / "s"
    cases = [(["--backend", "ray"], "qknorm study: error: --backend=ray needs Ray, an optional extra: pip install "
                                    "'qknorm[ray]' ("),
             (["--ray-address", "head:6379"], "qknorm study: error: --ray-address=head:6379 is for --backend=ray "
                                              "(add --backend ray)"),
             (["--backend", "ray", "--ray-address", "http://head"], "qknorm study: error: --ray-address='http://head':"
                                                                    " give the cluster's address as HOST:PORT")]
    for flags, start in cases:
        assert main(["study", "--quick", "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(start) and err.count("\n") == 1, err
        assert not out.exists()
