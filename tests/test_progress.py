"""pipeline.progress: live bars in a terminal, a few whole lines in a log, env overrides."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest

from pipeline import progress
from pipeline.progress import progress_bar
from tests.helpers import REPO_ROOT


class FakeClock:
    """Stands in for tqdm's clock, so that "many updates over minutes" runs in milliseconds."""

    def __init__(self):
        self.now = time.time()  # tqdm stamped the bar's start with the real clock

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    for name in ("TQDM_DISABLE", "TQDM_MININTERVAL", "TQDM_MAXINTERVAL", "TQDM_MINITERS"):
        monkeypatch.delenv(name, raising=False)


def physical_lines(text: str) -> list[str]:
    """What a log viewer shows: tqdm's ``\\r`` redraws count as lines too."""
    return [line for line in text.replace("\r", "\n").split("\n") if line.strip()]


def run_updates(stream, seconds: float, updates: int, **kwargs) -> str:
    """``updates`` updates of one bar spread evenly over ``seconds`` of (fake) time."""
    clock = FakeClock()
    bar = progress_bar(total=updates, file=stream, desc="work", **kwargs)
    bar._time = clock  # tqdm reads time through this attribute in update() and refresh
    step = seconds / updates
    for _ in range(updates):
        clock.now += step
        bar.update()
    bar.close()
    return stream.getvalue()


def test_off_a_terminal_at_most_one_line_per_30_seconds_and_the_final_state():
    # 10 minutes of work with 20,000 updates: a line every 30 s at most, plus first and last.
    out = run_updates(io.StringIO(), seconds=600, updates=20_000)
    lines = physical_lines(out)
    assert len(lines) <= 600 / progress.QUIET_INTERVAL + 2
    assert len(lines) >= 10  # still a heartbeat, not silence
    assert "\r" not in out and "\x1b" not in out  # whole lines, no redraws or cursor moves
    assert out.endswith("\n")
    assert "20000/20000" in lines[-1] and "100%" in lines[-1]
    assert lines[0].startswith("work:") and "0/20000" in lines[0]


def test_fast_loop_off_a_terminal_prints_start_and_final_state_only():
    out = run_updates(io.StringIO(), seconds=5, updates=5_000)
    lines = physical_lines(out)
    assert len(lines) == 2
    assert "5000/5000" in lines[-1]


def test_leave_false_still_logs_the_final_state_off_a_terminal():
    out = run_updates(io.StringIO(), seconds=5, updates=100, leave=False)
    assert "100/100" in physical_lines(out)[-1]


def test_a_terminal_gets_a_live_bar():
    out = run_updates(Terminal(), seconds=5, updates=5_000)
    assert "\r" in out  # redrawn in place
    assert len(physical_lines(out)) > 30  # refreshed about every 0.1 s of the 5 s


def test_env_var_forces_live_or_off(monkeypatch):
    monkeypatch.setenv(progress.ENV_VAR, "1")
    live = run_updates(io.StringIO(), seconds=5, updates=5_000)
    assert "\r" in live and len(physical_lines(live)) > 30
    monkeypatch.setenv(progress.ENV_VAR, "0")
    assert run_updates(Terminal(), seconds=5, updates=5_000) == ""
    assert progress.progress_mode(Terminal()) == "off"


def test_caller_disable_and_iterable_pass_through(monkeypatch):
    monkeypatch.setenv(progress.ENV_VAR, "1")
    stream = io.StringIO()
    assert list(progress_bar(range(5), file=stream, disable=True)) == [0, 1, 2, 3, 4]
    assert stream.getvalue() == ""
    monkeypatch.delenv(progress.ENV_VAR)
    stream = io.StringIO()
    assert sum(progress_bar(range(100), file=stream, desc="sum")) == 4950
    assert "100/100" in physical_lines(stream.getvalue())[-1]


def test_line_stream_drops_redraws_padding_and_repeats():
    sink = io.StringIO()
    stream = progress.LineStream(sink)
    stream.write("\rbar 1   ")
    stream.write("\rbar 1")
    stream.write("\n\x1b[A\rbar 2\r")
    stream.write("\n")
    assert sink.getvalue() == "bar 1\nbar 2\n"


def test_default_stream_is_stderr_of_a_real_process():
    # A child process whose stderr is a pipe (not a terminal), as under `dvc repro > log`.
    code = ("from pipeline.progress import progress_bar\n"
            "for _ in progress_bar(range(200_000), desc='loop'): pass\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT)})
    assert "\r" not in result.stderr
    lines = physical_lines(result.stderr)
    assert len(lines) == 2 and "200000/200000" in lines[-1]
