"""The report's conclusions (study/verdicts.py) on hand-made leaderboards: methods whose 95% CIs overlap are "not
separated at this scale" and never ranked; separated ones are named with their numbers; one seed ranks nothing;
costs, the softcap's capped logit, refused arms and Muon vs AdamW. A randomized check reads the sentences back
and tests every claimed order against the intervals."""
import random
import re

from qknorm.study.leaderboard import LeaderboardRow
from qknorm.study.verdicts import conclusions


def _row(variant, loss=None, ci=None, *, opt="adamw", **kw):
    return LeaderboardRow(variant=variant, optimizer=opt, best_val_loss=loss, best_val_loss_ci95=ci, **kw)


def _text(rows, variants=None, optimizers=("adamw",)):
    variants = variants or list(dict.fromkeys(r.variant for r in rows))
    return " ".join(s for _h, sentences in conclusions(rows, variants, optimizers) for s in sentences)


def test_overlapping_intervals_are_not_separated_and_not_ranked():
    rows = [_row("baseline", 2.10, (2.00, 2.20)), _row("qknorm", 2.05, (1.95, 2.15)),
            _row("softcap", 2.12, (2.02, 2.22))]
    text = _text(rows)
    assert ("Lowest best-LR validation loss with AdamW: baseline, qknorm, softcap are not separated at this "
            "scale") in text
    assert "not separated from the baseline at this scale: qknorm, softcap" in text
    assert "has the lowest" not in text and "CIs apart" not in text and "lower" not in text.replace("Lowest", "")


def test_separated_intervals_are_named_with_their_numbers():
    rows = [_row("baseline", 2.10, (2.00, 2.20)), _row("qknorm", 1.90, (1.85, 1.95)),
            _row("postln", 2.60, (2.40, 2.80)), _row("softcap", 2.12, (2.02, 2.22))]
    text = _text(rows)
    assert ("qknorm has the lowest best-LR validation loss with AdamW, 1.900 [1.850, 1.950], its 95% CI apart from "
            "every other method's.") in text
    assert ("Above qknorm's 1.900 [1.850, 1.950] with CIs apart: baseline 2.100 [2.000, 2.200], postln 2.600 "
            "[2.400, 2.800]") in text
    assert ("Best validation loss against the baseline's 2.100 [2.000, 2.200]: lower (CIs apart): qknorm 1.900 "
            "[1.850, 1.950]; higher (CIs apart): postln 2.600 [2.400, 2.800]; not separated from the baseline at "
            "this scale: softcap.") in text


def test_separated_from_the_lowest_is_not_called_separated_from_its_ties():
    """C's CI is apart from the lowest (A) but overlaps B, which ties with A: C is above A, not above A and B."""
    rows = [_row("a", 1.0, (0.9, 1.1)), _row("b", 1.3, (1.0, 1.6)), _row("c", 1.5, (1.2, 1.8))]
    text = _text(rows)
    assert "Lowest best-LR validation loss with AdamW: a, b are not separated at this scale" in text
    assert "Above a's 1.000 [0.900, 1.100] with CIs apart: c 1.500 [1.200, 1.800]." in text
    assert "above them" not in text


def test_one_seed_ranks_nothing():
    text = _text([_row("baseline", 2.10), _row("qknorm", 1.50)])
    assert "without confidence intervals (fewer than 2 seeds), so no method is ranked" in text
    assert "no interval to compare (fewer than 2 seeds): qknorm" in text
    assert "has the lowest" not in text and "CIs apart" not in text


def test_costs_softcap_entropy_collapse_and_refused_arms():
    rows = [_row("baseline", 2.1, (2.0, 2.2), step_time_ratio=1.0, top_lr=0.03, max_attn_logit_top_lr=2e4,
                 attn_entropy_min_layer_top_lr=0.02),
            _row("sigma_reparam", 2.1, (2.0, 2.2), step_time_ratio=1.2, step_time_ratio_ci95=(1.1, 1.3),
                 step_time_basis="cpu", top_lr=0.03, max_attn_logit_top_lr=30.0),
            _row("z_loss", 2.1, (2.0, 2.2), step_time_ratio=1.01, step_time_ratio_ci95=(0.95, 1.07),
                 step_time_basis="cpu", top_lr=0.03, max_attn_logit_top_lr=1.5e4),
            _row("softcap", 2.1, (2.0, 2.2), top_lr=0.03, max_attn_logit_top_lr=1e4, attn_softcap=50.0),
            LeaderboardRow(variant="qk_clip", optimizer="adamw", status="refused", note="refused: qk_clip=50 ...")]
    text = _text(rows)
    assert ("Cost with AdamW (process CPU time per step against the baseline's): more expensive (CI above 1): "
            "sigma_reparam 1.20 [1.10, 1.30]x; not separated from the baseline's cost: z_loss.") in text
    assert "at or below 100: sigma_reparam 30; grew past 100: baseline 2e+04, z_loss 1.5e+04, softcap 1e+04" in text
    assert "softcap's logit is before its cap: its softmax saw at most 50 " in text
    assert "near one-hot attention, Zhai et al.'s entropy collapse) in: baseline 0.020" in text
    assert "Refused combinations (not trained): qk_clip: refused: qk_clip=50 ..." in text
    assert "qk_clip" not in text.split("Refused")[0]  # a refused arm is in no comparison


def test_muon_against_adamw_per_variant():
    rows = [_row("baseline", 2.1, (2.0, 2.2)), _row("qknorm", 1.9, (1.85, 1.95)),
            _row("baseline", 2.15, (2.05, 2.25), opt="muon"), _row("qknorm", 1.75, (1.70, 1.80), opt="muon")]
    sections = conclusions(rows, ["baseline", "qknorm"], ["adamw", "muon"])
    assert [h for h, _ in sections] == ["AdamW", "Muon", "AdamW and Muon, same variant"]
    assert sections[2][1] == ["Muon against AdamW, same variant, best validation loss: lower (CIs apart): qknorm; "
                              "not separated at this scale: baseline."]


def _listed(text, label):
    """The variant names listed after `label` up to the next ';' or '.' (numbers stripped)."""
    m = re.search(re.escape(label) + r": (.*?)(?:;|\.$)", text)
    return [] if m is None else [re.match(r"\s*(\w+)", part)[1] for part in re.split(r", (?=[a-z])", m[1])]


def test_every_claimed_order_holds_on_random_leaderboards():
    """Random intervals; the 'against the baseline' sentence is read back: a variant listed as lower has its whole
    interval below the baseline's, higher above, and 'not separated' overlaps it."""
    rng = random.Random(0)
    names = ["qknorm", "qk_l2", "softcap", "z_loss", "postln"]
    for _ in range(200):
        rows, ci = [], {}
        for v in ["baseline"] + names:
            m, h = rng.uniform(1.8, 2.4), rng.uniform(0.01, 0.3)
            ci[v] = (m - h, m + h)
            rows.append(_row(v, m, ci[v]))
        text = _text(rows)
        sentence = re.search(r"Best validation loss against.*?\.(?= [A-Z]|$)", text)[0]
        base = ci["baseline"]
        for v in _listed(sentence, "lower (CIs apart)"):
            assert ci[v][1] < base[0], (v, sentence)
        for v in _listed(sentence, "higher (CIs apart)"):
            assert ci[v][0] > base[1], (v, sentence)
        for v in _listed(sentence, "not separated from the baseline at this scale"):
            assert ci[v][0] <= base[1] and ci[v][1] >= base[0], (v, sentence)
        listed = (_listed(sentence, "lower (CIs apart)") + _listed(sentence, "higher (CIs apart)")
                  + _listed(sentence, "not separated from the baseline at this scale"))
        assert sorted(listed) == sorted(names), sentence  # every method is placed exactly once
