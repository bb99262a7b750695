"""A QK-norm retrofit from start to end: read the source, check everything, insert, calibrate, heal, measure,
write.

    report = retrofit("runs/llama", "runs/llama-qk", RetrofitConfig(scope="head", heal_steps=200))

1. `prepare` (nothing written): the source (any model `qknorm.open_model` reads) must have no QK-norm; the
   data (default: the embedded corpus; text is encoded with the source's tokenizer.json) must fit its
   vocabulary and hold a held-out window; the output directory must be absent or empty; where the result
   will be written is decided here: as a transformers directory when a family has the new numerics (llama +
   per-head QK-norm is Qwen3), else in qknorm's format.
2. QK-norm is inserted with gains 1 (insert.py): the naive model.
3. The gains are fitted per layer to the original's attention distributions on `calib_tokens` training
   tokens (calibrate.py). The naive and the fitted model are measured on the held-out windows in one pass
   (`kl_naive`, and `kl_calibrated`); fitted gains that do worse end to end than gains 1 are not kept
   (`calibration_kept`: "naive", and the calibrated model is the naive one).
4. Optionally healed (heal.py): `kl_healed`. The better of the calibrated and the healed model is kept (`kept`):
   by the held-out measure the healing objective minimises (distill: the KL; lm: the loss), on the same windows;
   healing can make it worse (a model calibration already matches, a large LR), and then the model written is
   the calibrated one, unless `keep_healed`.
5. Written: the kept model (in the source's dtype), its tokenizer, retrofit_report.json/.html and the healing
   curve (report.py).
Every KL and loss is measured on the same held-out windows of the validation split (measure.py).

What each stage costs, in forward passes of the model (what dominates at real size): the original once over
the held-out windows (its hidden states kept: the reference every later KL streams from, through the LM head
alone) and once over the calibration windows (q and k of every layer captured in that same pass); the
retrofitted model once per measurement (held-out: naive and calibrated in one pass, which runs the original's LM
head once for both; each point of the healing curve). The retrofitted models share the original's weights until
healing, so memory holds one copy of the model until then. Each stage is shown on `progress` and timed (wall and
CPU) in the report's `stages`, with the peak resident memory. The naive-or-fitted and the calibrated-or-healed
choices are made on the held-out windows the report gives: a choice between two models on 16k tokens, whose
KLs differ by orders of magnitude where calibration works (0.0135 vs 0.0000165 on the 135M llama of
bench/results/retrofit_135m_2026-12-07.md); the separate check on calibration tokens this replaced cost two
more passes (~19 CPU-s there).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, List, Optional, Union

import torch

from ..errors import CheckpointError, ConfigError, DataError
from ..interop.hf import to_hf
from ..interop.hf_config import infer_family, unrepresentable
from ..model import TransformerLM
from ..io.model_dir import save_model
from ..io.tokenizer_files import copy_tokenizer_files
from ..pretrained import Pretrained, open_model
from ..data.batcher import Batcher
from ..data.sources import is_token_file
from ..data.tokens import TokenData, load_tokens
from ..progress import Progress, peak_rss_mb
from ..train.config import check_device_available
from ..train.preflight import check_vocab
from .calibrate import QKCapture, calibrate
from .config import RetrofitConfig
from .heal import heal
from .insert import check_retrofittable, insert_qk_norm, set_gains
from .measure import Reference
from .report import RetrofitReport, write_report

__all__ = ["Prepared", "prepare", "retrofit"]

Log = Optional[Callable[[str], None]]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything the retrofit needs, checked; nothing written yet."""

    src: Pretrained
    data: TokenData
    export: str  # "hf/<model_type>" or "qknorm"
    calib_ids: torch.Tensor  # (n, seq_len) windows of the training split
    eval_batches: list  # [(x, y)] fixed held-out windows of the validation split


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"out_dir {out} is not empty; choose a new or empty directory (nothing is overwritten)")


def _export_format(src: Pretrained, scope: str) -> str:
    config = src.model.config.replace(qk_norm=scope)
    try:
        fam = infer_family(config)
    except ConfigError:
        return "qknorm"
    return "qknorm" if unrepresentable(config, fam) else f"hf/{fam.model_type}"


def prepare(source: Union[str, Path], out: Union[str, Path], cfg: RetrofitConfig,
            data: Optional[str] = None) -> Prepared:
    """Step 1 of the module docstring: every check, before anything is computed or written."""
    out = Path(out)
    _check_out(out)
    check_device_available(cfg.device)
    src = open_model(source)
    check_retrofittable(src.model, cfg.scope)
    config = src.model.config
    if cfg.seq_len > config.max_seq_len:
        raise ConfigError(f"seq_len={cfg.seq_len} is longer than the model's max_seq_len={config.max_seq_len}")
    text = data is None or not is_token_file(Path(data))
    tokens = load_tokens(data, tokenizer=str(src.tokenizer) if text and src.tokenizer is not None else None)
    check_vocab(config, tokens, fixed_by=f"the model of from_dir {src.path}")
    if len(tokens.val) < cfg.seq_len + 1:
        raise DataError(f"the validation split of {tokens.source} has {len(tokens.val)} tokens, fewer than one "
                        f"window of seq_len + 1 = {cfg.seq_len + 1}: the held-out KL needs more data")
    n_calib = math.ceil(cfg.calib_tokens / cfg.seq_len)
    calib = Batcher(tokens.train, batch_size=n_calib, seq_len=cfg.seq_len, seed=cfg.seed + 1,
                    name="training split").batch(0)[0]
    n_eval = math.ceil(cfg.eval_tokens / (cfg.batch_size * cfg.seq_len))
    evals = Batcher(tokens.val, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed,
                    name="validation split").val_batches(n_eval)
    return Prepared(src=src, data=tokens, export=_export_format(src, cfg.scope), calib_ids=calib,
                    eval_batches=evals)


def _stack(batches: list) -> tuple:
    """The held-out windows as (N, T) inputs and targets (the batching is the memory budget's: measure.py)."""
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def retrofit(source: Union[str, Path], out: Union[str, Path], cfg: RetrofitConfig = RetrofitConfig(), *,
             data: Optional[str] = None, log: Log = None, progress: Optional[Progress] = None) -> RetrofitReport:
    """Retrofit QK-norm into the model at `source` and write the result to `out` (module docstring). `progress`
    shows the stages (and records their times for the report); `log` gets the result lines."""
    t_start = time.perf_counter()
    prog = progress if progress is not None else Progress("qknorm retrofit", enabled=False)
    say = log or (lambda msg: None)
    with prog.stage("reading the model and data"):
        p = prepare(source, out, cfg, data)
    dev = torch.device(cfg.device)
    dtype = p.src.model.embed.weight.dtype
    original = p.src.model.float().to(dev).eval().requires_grad_(False)
    naive = insert_qk_norm(original, cfg.scope, share=True).eval()  # the original's weights, not a copy
    model = insert_qk_norm(original, cfg.scope, share=True).eval()  # ... the same weights, the fitted gains
    ex, ey = (t.to(dev) for t in _stack(p.eval_batches))
    with prog.stage("held-out reference: the original", ex.shape[0], "windows") as st:
        ref = Reference.build(original, ex, ey, tick=st.advance)
    calib = p.calib_ids.to(dev)
    with prog.stage("calibration: q and k of every layer", calib.shape[0], "windows") as st:
        with QKCapture(original, *calib.shape, dev) as captured:
            Reference.build(original, calib, tick=st.advance, hook=captured)
    with prog.stage("calibration: fitting the gains", len(model.layers), "layers") as st:
        fits = calibrate(model, captured, steps=cfg.calib_steps, lr=cfg.calib_lr, tick=st.advance, log=say)
    del captured  # the q and k of every layer: the largest thing calibration holds
    set_gains(model, [(f.q_scale, f.k_scale) for f in fits])
    with prog.stage("held-out KL: gains 1 and fitted gains", ex.shape[0], "windows") as st:
        (kl_naive, val_naive), (kl_cal, val_cal) = ref.measure_all([naive, model], st.advance)
    say(f"original: held-out loss {ref.loss:.4f}; QK-norm with gains 1: KL {kl_naive:.4f}, loss {val_naive:.4f}")
    gains_kept = "fitted"
    if not kl_cal <= kl_naive:  # the fitted gains did worse end to end: gains 1 are the calibrated model
        model, kl_cal, val_cal, gains_kept = naive, kl_naive, val_naive, "naive"
    del naive
    say(f"calibrated ({gains_kept} gains kept): KL {kl_cal:.4f}, loss {val_cal:.4f}")
    healed, kept, because = None, "calibrated", "no healing"
    if cfg.heal_steps:
        with prog.stage("healing", cfg.heal_steps, "steps") as st:  # a copy trained: the original's untouched
            healed_model, healed = heal(model, original, p.data.train, cfg.heal_config(), objective=cfg.objective,
                                        evaluate=ref.measure, eval_at=cfg.eval_steps, first=(kl_cal, val_cal),
                                        log=say, tick=st.advance)
        kept, because = _choose(cfg, (kl_cal, val_cal), healed.evals[-1])
        say(f"kept the {kept} model: {because}")
        if kept == "healed":
            model = healed_model
    last = healed.evals[-1] if healed is not None else None
    with prog.stage("writing"):
        report = RetrofitReport(
            source=p.src.record(), scope=cfg.scope, export=p.export, data=p.data.source, settings=cfg.to_dict(),
            eval_tokens=int(ey.numel()), kl_naive=kl_naive, kl_calibrated=kl_cal,
            kl_healed=last.kl if last else None, val_loss_original=ref.loss, val_loss_naive=val_naive,
            val_loss_retrofitted=val_cal, val_loss_healed=last.val_loss if last else None, calibration_kept=gains_kept,
            layers=fits, heal=healed, kept=kept,
            kept_because=because,
            seconds={"calibrate": sum(prog.seconds(n) for n in _CALIB_STAGES), "heal": healed.seconds if healed else
                     0.0, "total": time.perf_counter() - t_start},
            stages=list(prog.stages), peak_rss_mb=peak_rss_mb())
        _write(Path(out), model.to("cpu", dtype), p, report)
    return report


def _choose(cfg: RetrofitConfig, calibrated: tuple, last) -> tuple:
    """("healed" | "calibrated", why): the model to write, by the healing objective's held-out measure (distill:
    the KL to the original, what it minimises; lm: the loss), on the same windows; a tie keeps the calibrated one.
    `keep_healed` writes the healed model whatever it measured."""
    kl_cal, val_cal = calibrated
    by, cal, new = ("KL", kl_cal, last.kl) if cfg.objective == "distill" else ("loss", val_cal, last.val_loss)
    numbers = f"held-out {by} calibrated {cal:.6g}, healed {new:.6g}"
    if cfg.keep_healed:
        return "healed", f"keep_healed asked for it ({numbers})"
    if new < cal:
        return "healed", f"it measured better ({numbers})"
    return "calibrated", f"healing did not improve it ({numbers}); keep_healed (--keep-healed) writes the healed one"


_CALIB_STAGES = ("calibration: q and k of every layer", "calibration: fitting the gains")


def _write(out: Path, model: TransformerLM, p: Prepared, report: RetrofitReport) -> List[Path]:
    _check_out(out)  # still absent or empty
    try:
        if p.export.startswith("hf/"):
            to_hf(model, out)
        else:
            save_model(model, out)
        if p.src.tokenizer is not None:  # the tokenizer travels with the model (with its chat template, if any)
            copy_tokenizer_files(p.src.tokenizer, out)
        return write_report(out, report)
    except OSError as e:
        raise CheckpointError(f"out_dir {out}: cannot write ({e.strerror or e})") from None
