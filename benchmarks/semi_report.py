"""Results of benchmarks/semi_supervised.py: merging pieces, Markdown tables and issue 20's target.

The grid runs in pieces (one process per slice or draw, each with its own ``--out``);
`merge_results` joins them and refuses two different results for the same slice, draw and method.

Issue 20's target (written in the issue before any run): a configuration with the diffusion
teacher beats ``cps_cp`` by at least 1 Dice point (mean of 3 draws) on at least 2 of the 4
slices, and beats plain ``cps`` on all 4. `render_target` checks it for every teacher
configuration of the grid (``semi_*`` methods, ablations left out: picking the best of nine
one-factor variants would be a search, not a test) and says when slices or draws are missing.
`ablation_rows` compares each of those variants with the full preset, draw by draw.
"""
from __future__ import annotations

import copy
from statistics import fmean, median

SLICES = 4  # the target's slices: two binary, two multi-class
DRAWS = 3
MARGIN = 0.01  # one Dice point over cps_cp
# The ablation's criterion (written before its runs): switching one factor off alone moves Dice by
# at least one point (mean of the draws, each against the full preset of the same draw and teacher)
# or it is not said to matter; R = 3's own spread over draws on mni-tissue2d:wm is 1.6 points.
ABLATION_MARGIN = 0.01
ABLATED = "semi_authors_r3"  # the preset the ablation's methods (ABLATED + "_no_" + factor) start from
# Which configuration wins at its cost (issue 20's default; written before synthetic-us2d draws 1-2
# ran). On a slice, a method is "near" the best when its mean Dice is within COST_MARGIN of the
# slice's best; the slice's pick is the cheapest near method (median over draws of its seconds
# per iteration against the same run's baseline). The default is the method near the best on
# the most slices, the cheaper (median over those slices) on a tie: one configuration that a
# user can start from on any of the four kinds of task.
COST_MARGIN = 0.01
# the methods every slice and draw of issue 20's grid runs (benchmarks/semi_supervised.py ISSUE20_CORE)
CORE_METHODS = ("baseline", "cps", "cps_cp", "semi_authors_r3", "semi_r1_cp", "cps_authors")
# What draws of one slice must share to be merged, averaged or compared; "seed" tells the draws apart.
SETTING_FIELDS = ("dataset", "labelled_fraction", "epochs", "iterations", "semi_options")
RUN_FIELDS = SETTING_FIELDS + ("seed",)


def _run_fields(res: dict) -> dict:
    """`res`'s RUN_FIELDS, comparable: no ``--semi`` options and {} are the same, no seed is draw 0."""
    fields = {f: res.get(f) for f in RUN_FIELDS}
    fields["semi_options"] = tuple(sorted((fields["semi_options"] or {}).items()))
    fields["seed"] = res.get("seed", 0)
    return fields


def _setting(res: dict) -> tuple:
    """`res`'s SETTING_FIELDS as a hashable tuple (see `_run_fields`)."""
    fields = _run_fields(res)
    return tuple(fields[f] for f in SETTING_FIELDS)


def _is_ablation(method: str) -> bool:
    """Whether `method` is one of the ablation's one-factor variants (``..._no_FACTOR``)."""
    return "_no_" in method


def _draws_by_slice(results: dict) -> dict:
    """{(dataset, fraction): {seed: result}}, in the order of `results`.

    Raises:
        ValueError: two draws of one slice differ in budget or ``--semi`` options (averaging them would
            mix two experiments), or one draw appears twice.
    """
    slices: dict = {}
    for key, res in results.items():
        draws = slices.setdefault((res["dataset"], res["labelled_fraction"]), {})
        seed = res.get("seed", 0)
        first = next(iter(draws.values()), None)
        if first is not None and _setting(first) != _setting(res):
            raise ValueError(f"{key}: its budget or --semi options differ from another draw of {res['dataset']}; "
                             "report each setting from its own file")
        if seed in draws:
            raise ValueError(f"{key}: draw {seed} of {res['dataset']} appears twice")
        draws[seed] = res
    return slices


def merge_results(into: dict, other: dict) -> dict:
    """`other`'s slices and methods added to a copy of `into`.

    Raises:
        ValueError: both hold the same method of the same slice and draw with different results, or
            the same key describes a different run (dataset, fraction, draw, epochs, iterations).
    """
    merged = copy.deepcopy(into)
    for key, res in other.items():
        if key not in merged:
            merged[key] = copy.deepcopy(res)
            continue
        mine = merged[key]
        theirs = _run_fields(res)
        for field, value in _run_fields(mine).items():
            if theirs[field] != value:
                raise ValueError(f"{key}: {field} is {mine.get(field)!r} in one file and {res.get(field)!r} in the other")
        for method, entry in res["methods"].items():
            if method in mine["methods"] and mine["methods"][method] != entry:
                raise ValueError(f"{key} / {method}: two different results; keep one of the files' entries")
            mine["methods"][method] = copy.deepcopy(entry)
        if "teacher_train_seconds" in res:
            mine.setdefault("teacher_train_seconds", res["teacher_train_seconds"])
    return merged


def _dice_by_draw(results: dict) -> dict:
    """{(dataset, fraction): {seed: {method: test Dice}}} (`_draws_by_slice`, its Raises too)."""
    return {slice_: {seed: {m: e["test"]["dice"] for m, e in res["methods"].items()} for seed, res in draws.items()}
            for slice_, draws in _draws_by_slice(results).items()}


def summarise_draws(results: dict) -> dict:
    """Mean test Dice of each method over the draws (seeds) of each dataset and labelled fraction.

    Returns:
        {(dataset, fraction): {method: [Dice of each draw that ran it]}}, in the order of `results`.

    Raises:
        ValueError: draws of one slice that differ in budget or options, or a draw twice (`_draws_by_slice`).
    """
    summary: dict = {}
    for slice_, draws in _draws_by_slice(results).items():
        methods = summary.setdefault(slice_, {})
        for res in draws.values():
            for method, entry in res["methods"].items():
                methods.setdefault(method, []).append(entry["test"]["dice"])
    return summary


def render_summary(results: dict) -> str:
    """One Markdown table: mean test Dice over draws (and the draws' count) per slice and method.

    The ablation's variants (``_no_`` in the name) are left to `render_ablation`'s table.
    """
    summary = summarise_draws(results)
    methods = list(dict.fromkeys(m for per_method in summary.values() for m in per_method if not _is_ablation(m)))
    lines = ["| slice | " + " | ".join(methods) + " |", "|:---|" + "---:|" * len(methods)]
    for (dataset, fraction), per_method in summary.items():
        cells = []
        for method in methods:
            values = per_method.get(method)
            if not values:
                cells.append("-")
                continue
            spread = f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else ""
            cells.append(f"{fmean(values):.4f}{spread}, n = {len(values)}")
        lines.append(f"| {dataset}, {fraction:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def remaining_runs(results: dict, grid: dict, seeds, fraction: float, epochs: int, iterations: int) -> list:
    """What a grid still lacks in `results`, so that pieces can be run session by session.

    Args:
        grid: slice name -> the methods it needs (issue 20's: `semi_supervised.ISSUE20_GRID`).
        seeds, fraction, epochs, iterations: the draws and the budget every piece must have; results
            of another budget, or run with extra ``--semi`` options, do not count.

    Returns:
        (slice, seed, [missing methods in grid order]) for every slice and draw with any missing.
    """
    wanted = {"labelled_fraction": fraction, "epochs": epochs, "iterations": iterations, "semi_options": ()}
    done: dict = {}
    for res in results.values():
        fields = _run_fields(res)
        if all(fields[f] == v for f, v in wanted.items()):  # this budget, no extra --semi options
            done.setdefault((fields["dataset"], fields["seed"]), set()).update(res["methods"])
    left = []
    for seed in seeds:
        for name, methods in grid.items():
            missing = [m for m in methods if m not in done.get((name, seed), set())]
            if missing:
                left.append((name, seed, missing))
    return left


def target_rows(results: dict) -> list[dict]:
    """Issue 20's comparison for every teacher configuration on every slice.

    Returns:
        One row per (configuration, slice): "method", "slice", "vs_cps_cp" and "vs_cps" (mean Dice
        difference over the draws that ran the configuration and that reference; None when none
        did), "draws" (the smaller of those two counts), "wins" (vs_cps_cp >= MARGIN).

    Raises:
        ValueError: draws of one slice that differ in budget or options, or a draw twice (`_draws_by_slice`).
    """
    by_draw = _dice_by_draw(results)
    teachers = sorted({m for draws in by_draw.values() for d in draws.values() for m in d
                       if m.startswith("semi_") and not _is_ablation(m)})
    rows = []
    for method in teachers:
        for (dataset, fraction), draws in by_draw.items():
            if not any(method in d for d in draws.values()):
                continue
            margins = {}
            for ref in ("cps_cp", "cps"):
                shared = [d[method] - d[ref] for d in draws.values() if method in d and ref in d]
                margins[ref] = (fmean(shared) if shared else None, len(shared))
            row = {"method": method, "slice": f"{dataset}, {fraction:.0%}",
                   "draws": min(n for _, n in margins.values()),
                   "vs_cps_cp": margins["cps_cp"][0], "vs_cps": margins["cps"][0],
                   "wins": margins["cps_cp"][0] is not None and margins["cps_cp"][0] >= MARGIN}
            rows.append(row)
    return rows


def target_verdict(rows: list[dict], method: str) -> str:
    """"met", "missed" or "undecided (...)" for one configuration, from its `target_rows`."""
    mine = [r for r in rows if r["method"] == method]
    complete = [r for r in mine if r["draws"] >= DRAWS]
    wins = sum(r["wins"] for r in complete)
    beats_cps = all(r["vs_cps"] is not None and r["vs_cps"] > 0 for r in complete)
    if len(complete) == SLICES and len(mine) == SLICES:
        return "met" if wins >= 2 and beats_cps else "missed"
    if len(complete) >= 1 and not beats_cps:
        return "missed"  # losing to cps on one complete slice already fails "all 4"
    if wins + (SLICES - len(complete)) < 2:
        return "missed"  # too few slices left to reach 2 wins
    return f"undecided ({len(complete)} of {SLICES} slices with {DRAWS} draws)"


def render_target(rows: list[dict]) -> str:
    """Markdown: per configuration and slice (`target_rows`), the margins over cps_cp and cps, and the verdict."""
    lines = ["| configuration | slice | draws | - cps_cp | - cps |", "|:---|:---|---:|---:|---:|"]
    fmt = lambda v: "-" if v is None else f"{v:+.4f}"
    for r in rows:
        lines.append(f"| {r['method']} | {r['slice']} | {r['draws']} | {fmt(r['vs_cps_cp'])} | {fmt(r['vs_cps'])} |")
    lines.append("")
    for method in dict.fromkeys(r["method"] for r in rows):
        lines.append(f"- {method}: target {target_verdict(rows, method)}")
    return "\n".join(lines) + "\n"


def ablation_rows(results: dict) -> list[dict]:
    """The ablation: every ``semi_authors_r3_no_FACTOR`` (and other R) against the full preset, per slice.

    Returns:
        One row per (slice, variant) with "slice", "variant", "draws" (draws that ran it and the
        preset), "dice" (the variant's mean over those draws), "delta" (mean of its Dice minus the
        preset's, draw by draw; None without shared draws) and "effect": "carries" (switched off,
        Dice falls by ABLATION_MARGIN or more), "costs" (it rises as much) or "within 1 point".

    Raises:
        ValueError: draws of one slice that differ in budget or options, or a draw twice (`_draws_by_slice`).
    """
    rows = []
    for (dataset, fraction), per_draw in _dice_by_draw(results).items():
        dice = list(per_draw.values())
        variants = dict.fromkeys(m for d in dice for m in d if m.startswith("semi_authors_r") and m != ABLATED)
        for variant in variants:
            shared = [d for d in dice if variant in d and ABLATED in d]
            delta = fmean(d[variant] - d[ABLATED] for d in shared) if shared else None
            effect = ("-" if delta is None else "carries" if delta <= -ABLATION_MARGIN
                      else "costs" if delta >= ABLATION_MARGIN else "within 1 point")
            rows.append({"slice": f"{dataset}, {fraction:.0%}", "variant": variant, "draws": len(shared),
                         "dice": fmean(d[variant] for d in shared) if shared else None, "delta": delta,
                         "effect": effect})
    return rows


def render_ablation(rows: list[dict]) -> str:
    """Markdown: the `ablation_rows`, with the preset's Dice difference and what it says of the factor."""
    lines = [f"| slice | variant | draws | Dice | - {ABLATED} | factor |", "|:---|:---|---:|---:|---:|:---|"]
    for r in rows:
        dice = "-" if r["dice"] is None else f"{r['dice']:.4f}"
        delta = "-" if r["delta"] is None else f"{r['delta']:+.4f}"
        factor = r["effect"] if _is_ablation(r["variant"]) else "(another R)"
        lines.append(f"| {r['slice']} | {r['variant']} | {r['draws']} | {dice} | {delta} | {factor} |")
    return "\n".join(lines) + "\n"


def cost_rows(results: dict) -> list[dict]:
    """Per slice, the best method, the methods near it and the cheapest of them (see COST_MARGIN).

    The CORE_METHODS that ran on every draw of the slice compete (R = 5 and the ablation's variants
    do not); a slice's row is "final" once all of them ran on DRAWS draws.

    Returns:
        One row per slice: "slice", "draws", "best" and "pick" (each (method, mean Dice, median
        x baseline)), "near" ({method: median x baseline}), "competing" (how many compete), "final".

    Raises:
        ValueError: draws of one slice that differ in budget or options, or a draw twice (`_draws_by_slice`).
    """
    rows = []
    for (dataset, fraction), draws in _draws_by_slice(results).items():
        dice: dict = {}
        cost: dict = {}
        for res in draws.values():
            base = res["methods"].get("baseline", {}).get("median_seconds_per_iteration")
            for method, e in res["methods"].items():
                if method in CORE_METHODS and base:
                    dice.setdefault(method, []).append(e["test"]["dice"])
                    cost.setdefault(method, []).append(e["median_seconds_per_iteration"] / base)
        every = {m: (m, fmean(d), median(cost[m])) for m, d in dice.items() if len(d) == len(draws)}
        if not every:
            continue
        best = max(every.values(), key=lambda c: c[1])
        near = {m: c[2] for m, c in every.items() if c[1] >= best[1] - COST_MARGIN}
        pick = every[min(near, key=near.get)]
        rows.append({"slice": f"{dataset}, {fraction:.0%}", "draws": len(draws), "best": best, "pick": pick,
                     "near": near, "competing": len(every),
                     "final": len(draws) >= DRAWS and len(every) == len(CORE_METHODS)})
    return rows


def cost_default(rows: list[dict]) -> tuple[str, int] | None:
    """(method near the best on the most slices, on how many), or None until SLICES slices are final."""
    final = [r for r in rows if r["final"]]
    if len(final) < SLICES:
        return None
    counts: dict = {}
    for r in final:
        for method, ratio in r["near"].items():
            counts.setdefault(method, []).append(ratio)
    method = min(counts, key=lambda m: (-len(counts[m]), median(counts[m])))
    return method, len(counts[method])


def render_cost(rows: list[dict]) -> str:
    """Markdown: `cost_rows` and the `cost_default`."""
    points = f"{COST_MARGIN * 100:.0f} point"
    lines = [f"| slice | draws | best: Dice, x baseline | within {points} (x baseline) | cheapest of those |",
             "|:---|---:|:---|:---|:---|"]
    cell = lambda c: f"{c[0]}: {c[1]:.4f}, {c[2]:.1f}x"
    for r in rows:
        near = ", ".join(f"{m} ({x:.1f}x)" for m, x in sorted(r["near"].items(), key=lambda i: i[1]))
        final = "" if r["final"] else (f" (provisional: {r['draws']} of {DRAWS} draws, {r['competing']} of "
                                        f"{len(CORE_METHODS)} methods on all)")
        lines.append(f"| {r['slice']} | {r['draws']} | {cell(r['best'])} | {near} | {cell(r['pick'])}{final} |")
    default = cost_default(rows)
    lines += ["", f"- default (within {points} of the best on most slices): {default[0]}, on {default[1]} of "
              f"{SLICES}" if default else
              f"- default: undecided ({sum(r['final'] for r in rows)} of {SLICES} slices with {DRAWS} draws)"]
    return "\n".join(lines) + "\n"


def render_markdown(results: dict) -> str:
    """The JSON results as one Markdown table per dataset, labelled fraction and draw, then the summaries."""
    lines = []
    for key, res in results.items():
        options = ", ".join(f"{k} = {v}" for k, v in res.get("semi_options", {}).items()) or "defaults"
        draw = f", draw {res['seed']}" if res.get("seed") else ""
        lines += [f"### {res['dataset']}, {res['labelled_fraction']:.0%} labelled{draw} "
                  f"({res['labelled_cases']} labelled + {res['unlabelled_cases']} unlabelled training cases)", "",
                  f"{res['epochs']} epochs x {res['iterations']} iterations for every method; "
                  f"fold {res.get('fold', 0)}; imagesTs; device {res.get('device', 'cpu')}; co-trainer options: {options}."
                  + (f" {res['note'][0].upper()}{res['note'][1:]}." if res.get("note") else ""), "",
                  "| method | Dice | HD95 mm | NSD | val Dice | predicts | train s | teacher pre-training s | s/iteration "
                  "| x baseline |",
                  "|:---|---:|---:|---:|---:|:---|---:|---:|---:|---:|"]
        base = res["methods"].get("baseline", {}).get("median_seconds_per_iteration")
        for method, e in res["methods"].items():
            t = e["test"]
            ratio = f"{e['median_seconds_per_iteration'] / base:.1f}" if base else "-"
            teacher_s = e.get("teacher_train_seconds")
            where = f" ({e['device']})" if e.get("device", res.get("device")) != res.get("device") else ""
            lines.append(f"| {method}{where} | {t['dice']:.4f} | {t['hd95']:.3f} | {t['nsd']:.4f} | "
                         f"{e['validation_dice']:.4f} | {e.get('selected', '-')} | {e['train_seconds']:.0f} | "
                         f"{'-' if teacher_s is None else f'{teacher_s:.0f}'} | "
                         f"{e['median_seconds_per_iteration']:.3f} | {ratio} |")
        lines.append("")
    lines += ["### Mean test Dice over draws (min-max)", "", render_summary(results)]
    rows = target_rows(results)
    if rows:
        lines += ["### Issue 20's target: teacher configurations against cps_cp and cps (mean differences over draws)",
                  "", render_target(rows)]
    cost = cost_rows(results)
    if cost:
        lines += [f"### Which configuration wins at its cost: within {COST_MARGIN * 100:.0f} Dice point of the slice's best "
                  "(mean of draws), the cheapest per slice; the default: near the best on most slices", "",
                  render_cost(cost)]
    ablation = ablation_rows(results)
    if ablation:
        lines += ["### Ablation: each factor of the authors' preset switched off alone (Dice minus the full preset's, "
                  "draw by draw)", "", render_ablation(ablation)]
    return "\n".join(lines)
