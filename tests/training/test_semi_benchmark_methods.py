"""benchmarks/semi_supervised.py: the methods of the teacher-share benchmark mean what their names say."""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest

from diffusion_nnunet.configs.training_config import SemiSupervisedConfig, TrainingConfig, merge_config_values
from diffusion_nnunet.training.semi_presets import PRESETS

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "semi_supervised.py"
sys.path.insert(0, str(_PATH.parent))  # the script imports semi_report from beside itself
_spec = importlib.util.spec_from_file_location("semi_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
import semi_report as report  # noqa: E402  (from benchmarks/, on the path above)


def _config(semi: dict) -> SemiSupervisedConfig:
    config = TrainingConfig.from_dict(merge_config_values(TrainingConfig(semi=SemiSupervisedConfig()).to_dict(),
                                                          {"semi": semi}))
    config.validate()
    return config.semi


def test_authors_methods_carry_the_preset_and_their_r():
    for r in (3, 5):
        semi = bench.semi_values(f"semi_authors_r{r}")
        assert semi == {**PRESETS["authors"], "rounds": r}
        assert bench.parse_method(f"semi_authors_r{r}")["trainer"] == "semi_cotrain"
    cps = bench.semi_values("cps_authors")
    assert "rounds" not in cps and cps["ce_weight"] == 0.0 and cps["seg_random_t"] is True
    assert bench.semi_values("semi_r1_cp") == {"copy_paste": bench.COPY_PASTE_BOX, "rounds": 1}
    assert bench.semi_values("cps") == {"copy_paste": 0.0}
    assert bench.semi_values("semi_authors_r3_cp")["copy_paste"] == bench.COPY_PASTE_BOX


@pytest.mark.parametrize("factor", list(bench.ABLATIONS))
def test_each_ablation_switches_exactly_its_factor_back_to_our_default(factor):
    preset = _config(bench.semi_values("semi_authors_r3"))
    ablated = _config(bench.semi_values(f"semi_authors_r3_no_{factor}"))
    defaults = SemiSupervisedConfig()
    changed = {k for k in vars(preset) if getattr(preset, k) != getattr(ablated, k)}
    assert changed == set(bench.ABLATIONS[factor])
    for key in changed:
        assert getattr(ablated, key) == getattr(defaults, key) != getattr(preset, key)


def test_unknown_methods_and_slices():
    for bad in ("semi_authors_r3_no_everything", "semi_authors_rx", "cps_friends", "semi_authors_r3_no_warmup_no_warmup"):
        assert bench.parse_method(bad) is None
    assert bench.parse_method("baseline")["trainer"] == "baseline"
    assert bench._generator_and_classes("synthetic-us2d:lesion") == ("synthetic-us2d", ["lesion"])
    assert bench._generator_and_classes("mni-tissue2d") == ("mni-tissue2d", None)
    ids = {bench._dataset_id(name, f) for name in bench.DATASET_IDS for f in (0.1, 0.2)}
    assert len(ids) == 2 * len(bench.DATASET_IDS)  # every slice and fraction its own dataset


def test_report_shows_cost_against_the_baseline():
    entry = lambda s: {"test": {"dice": 0.8, "hd95": 1.0, "nsd": 0.9}, "validation_dice": 0.8, "train_seconds": 10,
                       "median_seconds_per_iteration": s}
    results = {"x": {"dataset": "synthetic-us2d:lesion", "labelled_fraction": 0.1, "labelled_cases": 6,
                     "unlabelled_cases": 54, "epochs": 1, "iterations": 2,
                     "methods": {"baseline": entry(0.1), "semi_authors_r3": entry(0.85)}}}
    text = report.render_markdown(results)
    assert "| x baseline |" in text and "| 0.850 | 8.5 |" in text and "| 0.100 | 1.0 |" in text


def _run(dataset: str, seed: int, dice: dict) -> dict:
    return {"dataset": dataset, "labelled_fraction": 0.1, "seed": seed, "epochs": 30, "iterations": 50,
            "semi_options": {}, "labelled_cases": 6, "unlabelled_cases": 54,
            "methods": {m: {"test": {"dice": d, "hd95": 1.0, "nsd": 0.9}, "validation_dice": d, "train_seconds": 1,
                            "median_seconds_per_iteration": 0.1} for m, d in dice.items()}}


def _key(dataset: str, seed: int) -> str:
    return f"{dataset}@0.1" + (f" seed {seed}" if seed else "")


def test_merge_joins_pieces_and_refuses_two_different_results():
    a = {_key("s", 0): _run("s", 0, {"baseline": 0.5})}
    b = {_key("s", 0): _run("s", 0, {"cps": 0.6}), _key("t", 1): _run("t", 1, {"baseline": 0.4})}
    merged = report.merge_results(a, b)
    assert set(merged[_key("s", 0)]["methods"]) == {"baseline", "cps"} and _key("t", 1) in merged
    assert set(a[_key("s", 0)]["methods"]) == {"baseline"}  # inputs untouched
    assert report.merge_results(merged, b) == merged  # the same piece twice: nothing changes
    with pytest.raises(ValueError, match="cps: two different results"):
        report.merge_results(merged, {_key("s", 0): _run("s", 0, {"cps": 0.7})})
    other_budget = _run("s", 0, {"semi_r1_cp": 0.7})
    other_budget["epochs"] = 10
    with pytest.raises(ValueError, match="epochs"):
        report.merge_results(merged, {_key("s", 0): other_budget})
    no_options = _run("s", 0, {"cps_cp": 0.7})
    no_options["semi_options"] = None  # an older piece: no --semi options written as null, the same run
    assert "cps_cp" in report.merge_results(merged, {_key("s", 0): no_options})[_key("s", 0)]["methods"]
    other_options = _run("s", 0, {"cps_cp": 0.7})
    other_options["semi_options"] = {"rec_start_step": 3}
    with pytest.raises(ValueError, match="semi_options"):
        report.merge_results(merged, {_key("s", 0): other_options})


def _grid(teacher: dict, slices=("a", "b", "c", "d"), draws=(0, 1, 2)) -> dict:
    """cps_cp 0.80 and cps 0.78 everywhere; the teacher configuration's Dice per slice."""
    return {_key(s, d): _run(s, d, {"cps_cp": 0.80, "cps": 0.78, "semi_authors_r3": teacher[s],
                                    "semi_authors_r3_no_warmup": 0.99})
            for s in slices for d in draws}


def test_target_met_missed_and_undecided():
    met = _grid({"a": 0.815, "b": 0.82, "c": 0.79, "d": 0.785})  # 2 wins of >= 1 point, above cps on all 4
    assert report.target_verdict(report.target_rows(met), "semi_authors_r3") == "met"
    one_win = _grid({"a": 0.815, "b": 0.805, "c": 0.79, "d": 0.785})  # +0.5 points on b is no win
    assert report.target_verdict(report.target_rows(one_win), "semi_authors_r3") == "missed"
    below_cps = _grid({"a": 0.9, "b": 0.9, "c": 0.9, "d": 0.77})
    assert report.target_verdict(report.target_rows(below_cps), "semi_authors_r3") == "missed"
    partial = _grid({"a": 0.9, "b": 0.79}, slices=("a", "b"), draws=(0,))
    assert report.target_verdict(report.target_rows(partial), "semi_authors_r3").startswith("undecided (0 of 4")
    del partial[_key("a", 0)]["methods"]["cps"]  # a reference not run yet: the other margin still shows
    row = next(r for r in report.target_rows(partial) if r["slice"] == "a, 10%")
    assert row["vs_cps"] is None and row["vs_cps_cp"] == pytest.approx(0.1) and row["draws"] == 0
    # ablations are not candidate configurations: one of nine variants winning would be a search
    assert {r["method"] for r in report.target_rows(met)} == {"semi_authors_r3"}
    text = report.render_markdown(met)
    assert "| semi_authors_r3 | a, 10% | 3 | +0.0150 | +0.0350 |" in text and "semi_authors_r3: target met" in text


def test_summaries_refuse_to_average_draws_of_two_settings():
    results = {_key("s", 0): _run("s", 0, {"cps": 0.6}), _key("s", 1): _run("s", 1, {"cps": 0.8})}
    assert report.summarise_draws(results) == {("s", 0.1): {"cps": [0.6, 0.8]}}
    for field, value in (("epochs", 10), ("semi_options", {"rec_start_step": 3})):
        mixed = copy.deepcopy(results)
        mixed[_key("s", 1)][field] = value  # draw 1 ran another experiment: no mean of the two
        with pytest.raises(ValueError, match="budget or --semi options differ"):
            report.summarise_draws(mixed)
        with pytest.raises(ValueError, match="budget or --semi options differ"):
            report.target_rows(mixed)
    twice = dict(results, **{"s again": _run("s", 1, {"cps": 0.7})})
    with pytest.raises(ValueError, match="draw 1 of s appears twice"):
        report.summarise_draws(twice)


def test_remaining_runs_lists_what_each_slice_and_draw_lacks():
    grid = {"s": ("baseline", "cps", "cps_cp"), "t": ("baseline",)}
    other_budget = _run("t", 0, {"baseline": 0.5})
    other_budget["epochs"] = 10  # a run of another budget does not count
    other_options = _run("s", 0, {"cps_cp": 0.7})
    other_options["semi_options"] = {"rec_start_step": 3}  # nor one with extra --semi options
    results = {_key("s", 0): _run("s", 0, {"cps": 0.6, "baseline": 0.5}), "t old": other_budget,
               "s options": other_options,
               _key("s", 1): _run("s", 1, {"baseline": 0.5, "cps": 0.6, "cps_cp": 0.7})}
    left = report.remaining_runs(results, grid, seeds=(0, 1), fraction=0.1, epochs=30, iterations=50)
    assert left == [("s", 0, ["cps_cp"]), ("t", 0, ["baseline"]), ("t", 1, ["baseline"])]
    assert report.remaining_runs(results, {"s": ("cps",)}, seeds=(0, 1), fraction=0.1, epochs=30,
                                 iterations=50) == []


def test_remaining_commands_cover_issue_20s_grid():
    commands = bench.remaining_commands({})
    assert len(commands) == len(bench.ISSUE20_GRID) * len(bench.ISSUE20_BUDGET["seeds"])
    wm = next(c for c in commands if "mni-tissue2d:wm --seed 2" in c)  # R = 5 and the ablation: this slice
    assert "semi_authors_r5" in wm and "semi_authors_r3_no_diceonly" in wm and "--epochs 30" in wm
    lesion = next(c for c in commands if "synthetic-us2d:lesion --seed 2" in c)
    assert "semi_authors_r5" not in lesion and "semi_authors_r3" in lesion
    for command in commands:  # every method named in the grid is one the benchmark knows
        methods = command.split("--methods ")[1].split(" --out")[0].split()
        assert all(bench.parse_method(m) is not None for m in methods)


def test_ablation_says_which_factor_moves_dice_against_the_full_preset():
    results = {_key("w", d): _run("w", d, {"semi_authors_r3": 0.60 + d / 100, "semi_authors_r3_no_warmup": 0.58 + d / 100,
                                           "semi_authors_r3_no_detach": 0.605 + d / 100, "cps": 0.5})
               for d in (0, 1)}
    results[_key("w", 1)]["methods"]["semi_authors_r5"] = results[_key("w", 1)]["methods"]["cps"]
    results[_key("v", 0)] = _run("v", 0, {"semi_authors_r3": 0.7, "semi_authors_r3_no_diceonly": 0.72})
    rows = {(r["slice"], r["variant"]): r for r in report.ablation_rows(results)}
    warmup = rows[("w, 10%", "semi_authors_r3_no_warmup")]
    assert warmup["draws"] == 2 and warmup["delta"] == pytest.approx(-0.02) and warmup["effect"] == "carries"
    assert warmup["dice"] == pytest.approx(0.585)
    assert rows[("w, 10%", "semi_authors_r3_no_detach")]["effect"] == "within 1 point"
    assert rows[("v, 10%", "semi_authors_r3_no_diceonly")]["effect"] == "costs"  # switched off, Dice rises
    r5 = rows[("w, 10%", "semi_authors_r5")]
    assert r5["draws"] == 1 and r5["delta"] == pytest.approx(0.5 - 0.61)
    assert "cps" not in {variant for _, variant in rows}
    text = report.render_markdown(results)
    assert "| w, 10% | semi_authors_r3_no_warmup | 2 | 0.5850 | -0.0200 | carries |" in text
    assert "| w, 10% | semi_authors_r5 | 1 | 0.5000 | -0.1100 | (another R) |" in text
    summary = text.split("Mean test Dice over draws")[1].split("###")[0]
    assert "semi_authors_r5" in summary and "_no_" not in summary  # the variants have their own table


_COST = {"baseline": 0.1, "cps": 0.3, "cps_cp": 0.6, "cps_authors": 0.3, "semi_r1_cp": 1.2, "semi_authors_r3": 1.5}


def _costed(dataset: str, seed: int, dice: dict) -> dict:
    run = _run(dataset, seed, dice)
    for method, entry in run["methods"].items():
        entry["median_seconds_per_iteration"] = _COST.get(method, 2.0)
    return run


def test_cost_comparison_picks_the_cheapest_near_the_best_and_a_default_for_all_slices():
    core = {"baseline": 0.60, "cps": 0.62, "cps_cp": 0.645, "cps_authors": 0.61, "semi_r1_cp": 0.65,
            "semi_authors_r3": 0.60}
    lesion = {**core, "cps_cp": 0.55, "semi_r1_cp": 0.56, "semi_authors_r3": 0.66}  # only R = 3 near its best
    results = {_key(s, d): _costed(s, d, lesion if s == "a" else {**core, "semi_authors_r3_no_warmup": 0.9, "semi_authors_r5": 0.9})
               for s in "abcd" for d in (0, 1, 2)}
    rows = {r["slice"]: r for r in report.cost_rows(results)}
    assert rows["a, 10%"]["pick"][0] == "semi_authors_r3" and set(rows["a, 10%"]["near"]) == {"semi_authors_r3"}
    b = rows["b, 10%"]  # cps_cp 0.5 points below R = 1 at half its cost; the variant and R = 5 (not core) do not compete
    assert b["best"][0] == "semi_r1_cp" and b["pick"] == ("cps_cp", pytest.approx(0.645), pytest.approx(6.0))
    assert set(b["near"]) == {"cps_cp", "semi_r1_cp"} and b["final"]
    # cps_cp and R = 1 are near the best on 3 slices each: the cheaper is the default
    assert report.cost_default(list(rows.values())) == ("cps_cp", 3)
    results[_key("d", 2)]["methods"]["cps_cp"]["test"]["dice"] = 0.62  # mean 0.637 on d: 1.3 below R = 1
    assert report.cost_default(report.cost_rows(results)) == ("semi_r1_cp", 3)
    del results[_key("d", 2)]["methods"]["cps_authors"]  # a method missing on one draw: d is not final
    rows = {r["slice"]: r for r in report.cost_rows(results)}
    assert not rows["d, 10%"]["final"] and rows["d, 10%"]["competing"] == 5
    assert report.cost_default(list(rows.values())) is None
    text = report.render_markdown(results)
    assert "| b, 10% | 3 | semi_r1_cp: 0.6500, 12.0x | cps_cp (6.0x), semi_r1_cp (12.0x) | cps_cp: 0.6450, 6.0x |" in text
    assert "(provisional: 3 of 3 draws, 5 of 6 methods on all)" in text and "default: undecided (3 of 4" in text
