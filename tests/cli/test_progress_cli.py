"""Commands that are long on large models tell their stages on stderr (one line each when stderr is not a
terminal), and --no-progress quiets them; small models print what they always printed (qknorm/progress.py)."""
import pytest
import torch

import qknorm
import qknorm.progress as progress
from helpers.cli import run_cli

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "m"
    qknorm.save_model(qknorm.TransformerLM(qknorm.get_config("llama", "debug")), path)
    return path


CASES = {
    "inspect": (lambda d, t: [str(d), "--ids", "1,2,3"], ["reading the model", "forward pass (3 tokens)"]),
    "generate": (lambda d, t: [str(d), "--prompt", "ab", "--max-new-tokens", "2"], ["reading the model"]),
    "convert": (lambda d, t: ["--to-hf", str(d), "--out", str(t / "hf")], ["reading the model", "writing"]),
}


@pytest.mark.parametrize("command", sorted(CASES))
@pytest.mark.parametrize("large", [True, False])
def test_stages_on_stderr_for_large_models_and_never_with_no_progress(command, large, model_dir, tmp_path, capsys,
                                                                      monkeypatch):
    if large:  # this small model counts as large
        monkeypatch.setattr(progress, "LARGE_MODEL_BYTES", 0)
    args, stages = CASES[command]
    code, out, err = run_cli(command, args(model_dir, tmp_path / "a"), capsys)
    assert code == 0, err
    lines = [line for line in err if " (CPU " in line]
    if large:
        assert [line.split(": ")[1] for line in lines] == stages, err
        assert all(line.startswith(f"qknorm {command}: ") for line in lines)
    else:
        assert lines == [], err
    code, out2, err = run_cli(command, args(model_dir, tmp_path / "b") + ["--no-progress"], capsys)
    assert code == 0 and not [line for line in err if " (CPU " in line], err
