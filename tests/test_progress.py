"""Progress on stderr (qknorm/progress.py): a live line with done/total, elapsed and an ETA on a terminal, one line
per stage when stderr is not a terminal, nothing with --no-progress; stage times recorded in every case."""
import io
import re
import time

import pytest

from qknorm.progress import Progress, fmt_seconds, peak_rss_mb


class _Tty(io.StringIO):
    def isatty(self):
        return True


def _run(prog):
    with prog.stage("reading"):
        pass
    with prog.stage("fitting", total=4, unit="layers") as st:
        for _ in range(4):
            time.sleep(0.01)
            st.advance()
    prog.note("a result")


def test_not_a_terminal_one_line_per_stage():
    out = io.StringIO()
    prog = Progress("qknorm x", stream=out)
    _run(prog)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue() and "\x1b" not in out.getvalue(), lines
    assert re.fullmatch(r"qknorm x: reading: \d+\.\d s \(CPU \d+\.\d s\)", lines[0]), lines
    assert lines[1].startswith("qknorm x: fitting: ") and lines[2] == "qknorm x: a result"
    assert [s.name for s in prog.stages] == ["reading", "fitting"]
    assert prog.stages[1].seconds >= 0.04 and prog.stages[1].cpu_seconds >= 0


def test_a_terminal_gets_a_live_line_with_an_eta():
    out = _Tty()
    prog = Progress("qknorm x", stream=out, interval=0.0)
    _run(prog)
    text = out.getvalue()
    assert "fitting, 2/4 layers, elapsed " in text and ", ETA " in text  # redrawn in place: \r ... erase-to-end
    assert text.count("\r") >= 6 and "\x1b[K" in text
    final = [re.sub(r".*\r", "", line).replace("\x1b[K", "") for line in text.split("\n") if line]
    assert final[0].startswith("qknorm x: reading: ") and final[1].startswith("qknorm x: fitting: ")
    assert final[2] == "qknorm x: a result" and len(final) == 3, final


@pytest.mark.parametrize("stream", [io.StringIO, _Tty])
def test_disabled_shows_only_notes_and_still_records(stream):
    out = stream()
    prog = Progress("qknorm x", enabled=False, stream=out)
    _run(prog)
    assert out.getvalue() == "qknorm x: a result\n"
    assert [s.name for s in prog.stages] == ["reading", "fitting"]


def test_a_failing_stage_is_recorded_and_named():
    out = io.StringIO()
    prog = Progress("qknorm x", stream=out)
    with pytest.raises(MemoryError):
        with prog.stage("capturing"):
            assert prog.current.name == "capturing"
            raise MemoryError
    assert prog.stages[0].name == "capturing" and prog.failed == "capturing" and out.getvalue() == ""


def test_formats():
    assert fmt_seconds(12.34) == "12.3 s" and fmt_seconds(75) == "1:15" and fmt_seconds(3725) == "1:02:05"
    assert 1 < peak_rss_mb() < 1 << 20


def test_for_model_shows_stages_only_for_large_weights(tmp_path):
    from qknorm.progress import LARGE_MODEL_BYTES, for_model

    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "model.safetensors").write_bytes(b"x" * 1000)
    big = tmp_path / "run" / "checkpoints" / "step_1"
    big.mkdir(parents=True)
    with open(big / "model.safetensors", "wb") as f:  # sparse: the size without the disk
        f.truncate(LARGE_MODEL_BYTES)
    assert not for_model("q", tmp_path / "small").enabled
    assert for_model("q", tmp_path / "run").enabled and not for_model("q", tmp_path / "run", enabled=False).enabled
    assert not for_model("q", tmp_path / "nowhere").enabled
