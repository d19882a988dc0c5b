"""``RESULTS/README.md``: the tables of every recipe's results file, beside each recipe's target
(``scripts/recipes/run.py`` writes it after each run)."""

from __future__ import annotations

import json
from pathlib import Path

TARGETS = {"multi30k-de-en": {"bleu": 38.0}, "multi30k-en-de": {"bleu": 35.0}, "webnlg": {"bleu": 60.0},
           "dialogsum": {"rouge1": 38.0, "rouge2": 12.0, "rougeL": 31.0}}


def write_summary(results: Path) -> Path:
    """``RESULTS/README.md``: every recipe's results file in ``results`` as tables (regenerated each run)."""
    lines = ["# Recipe results", "",
             "Written by `scripts/recipes/run.py` from the `*.json` files beside this file (one per recipe); "
             "every number is measured by the run that wrote it.", ""]
    reports = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(results.glob("*.json"))]
    reports = [report for report in reports if isinstance(report, dict) and "recipe" in report]
    for report in reports:
        if "members" in report:
            lines += _ensemble_summary(report)
            continue
        name, env, training = report["recipe"], report["environment"], report["training"]
        config, label = report["config"], report.get("label", name)
        lines += [f"## {label}", "", f"`{report['command']}` (commit {env['commit']}, {env['date']}, "
                  f"{env['cpus_usable']} CPU core(s) usable, jax {env['versions']['jax']})", ""]
        lines += [f"Training: {training['steps']} steps of {config['data']['batch_size']} sentences in "
                  f"{training['seconds'] / 60:.1f} min, median {training['tokens_per_s_median'] or 0:.0f} target "
                  f"tokens/s; model selection: {report['model_selection']['chosen']}; decoding chosen on "
                  f"validation: `{json.dumps(report['decode_search']['chosen'], sort_keys=True)}`.", ""]
        targets = TARGETS.get(name, {})
        if "test" in report:
            test = report["test"]
            lines += ["| system | BLEU | chrF |", "|---|---|---|",
                      f"| this recipe, measured ({test['set']}) | {test['bleu']:.1f} | {test['chrf']:.1f} |"]
            lines += [f"| target | {targets['bleu']:.1f} | |"] if "bleu" in targets else []
            lines += [f"| published: {system} | {value:.1f} | |" for system, value in report["published"].items()]
            lines += [f"| this recipe, {lang} ({entry['set']}) | {entry['bleu']:.1f} | {entry['chrf']:.1f} |"
                      for lang, entry in test.get("by_language", {}).items()]
            lines += ["", f"BLEU signature: `{test['bleu_signature']}`; chrF: `{test['chrf_signature']}`.", ""]
        if "valid" in report and "bleu" in report["valid"]:
            lines += _data_to_text_summary(report)
        elif "valid" in report:
            valid = report["valid"]
            lines += ["| system (validation set) | ROUGE-1 | ROUGE-2 | ROUGE-L |", "|---|---|---|---|",
                      f"| this recipe, measured | {valid['rouge1']:.1f} | {valid['rouge2']:.1f} | "
                      f"{valid['rougeL']:.1f} |"]
            if "valid_unseen" in report:
                unseen = report["valid_unseen"]
                lines += [f"| this recipe, the {unseen['examples']} dialogues not in train | {unseen['rouge1']:.1f} | "
                          f"{unseen['rouge2']:.1f} | {unseen['rougeL']:.1f} |"]
            lines += [f"| {system} | {b['rouge1']:.1f} | {b['rouge2']:.1f} | {b['rougeL']:.1f} |"
                      for system, b in report.get("baselines", {}).items()]
            if targets:
                lines += [f"| target | {targets['rouge1']:.1f} | {targets['rouge2']:.1f} | {targets['rougeL']:.1f} |"]
            lines += ["", "ROUGE: rouge-score, stemming, F-measure, x100; the decoding settings were chosen on this "
                      "same set (the recipe has no separate test split).", ""]
        lines += [f"![training curves]({label}_curves.png)", ""]
    for recipe in dict.fromkeys(r["recipe"] for r in reports if r.get("validation_only")):
        lines += _trials_summary(recipe, reports)
    out = results / "README.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def _data_to_text_summary(report: dict) -> list[str]:
    """The summary rows of a recipe scored on multi-reference validation sets (webnlg): the scores, by set size,
    and sample outputs beside their references."""
    valid = report["valid"]
    lines = [f"Scored on `{valid['set']}`, every reference of a set (multi-reference); the decoding settings were "
             "chosen on this same set.", "", "| BLEU | chrF++ | TER |", "|---|---|---|",
             f"| {valid['bleu']:.1f} | {valid['chrf_pp']:.1f} | {valid['ter']:.1f} |", "",
             "| triples | sets | BLEU | chrF++ |", "|---|---|---|---|"]
    lines += [f"| {size} | {row['sets']} | {row['bleu']:.1f} | {row['chrf_pp']:.1f} |"
              for size, row in report.get("valid_by_triple_count", {}).items()]
    lines += ["", f"BLEU signature: `{valid['bleu_signature']}`; chrF++: `{valid['chrf_pp_signature']}`; TER: "
              f"`{valid['ter_signature']}`.", ""]
    for sample in report.get("samples", []):
        lines += [f"- source: `{sample['source']}`", f"  - output: {sample['output']}",
                  *(f"  - reference: {reference}" for reference in sample["references"])]
    return lines + [""]


def _ensemble_summary(report: dict) -> list[str]:
    """The summary section of an ensemble report (step 6): each member and the ensemble, validation and test."""
    env = report["environment"]
    lines = [f"## {report['label']}", "", f"`{report['command']}` (commit {env['commit']}, {env['date']}, "
             f"{env['cpus_usable']} CPU core(s) usable, jax {env['versions']['jax']})", "",
             "| system | decoding | validation BLEU | test BLEU | test chrF |", "|---|---|---|---|---|"]
    rows = [(f"{m['label']} ({m['selection']})", m["decode"], m["valid"], m["test"]) for m in report["members"]]
    rows.append((f"ensemble of the {len(report['members'])}", report["decode_search"]["chosen"], report["valid"],
                 report.get("test")))
    for system, decode, valid, test in rows:
        test_cells = f"{test['bleu']:.1f} | {test['chrf']:.1f}" if test else "| "
        lines.append(f"| {system} | `{json.dumps(decode, sort_keys=True)}` | {valid['bleu']:.1f} | {test_cells} |")
    if "speed" in report:
        speed = report["speed"]
        ensemble, single = speed["ensemble"], speed["first_model"]
        lines += ["", f"Decoding the {speed['sentences']} test sentences with the ensemble's settings, compiled: "
                  f"{ensemble['compiled_seconds']:.1f} s for the ensemble, {single['compiled_seconds']:.1f} s for the "
                  f"first model alone ({ensemble['first_seconds']:.1f} s and {single['first_seconds']:.1f} s the "
                  "first time, compilation included)."]
    return lines + [""]


def _changes(command: str) -> list[str]:
    """What a run's command changed of its recipe: each ``--set`` override, ``--average-window`` and
    ``--init-from``."""
    words = command.split()
    return [value if flag == "--set" else f"{flag} {value}" for flag, value in zip(words, words[1:], strict=False)
            if flag in ("--set", "--average-window", "--init-from")]


def _valid_cell(valid: dict) -> str:
    if "bleu" in valid:
        return f"{valid['bleu']:.2f}"
    return f"{valid['rouge1']:.2f} / {valid['rouge2']:.2f} / {valid['rougeL']:.2f}"


def _trials_summary(recipe: str, reports: list[dict]) -> list[str]:
    """The ablation table of ``recipe``: the recipe's own run (label = recipe) and every ``--validation-only``
    trial, each with what its command changed, its step-2 candidates and its score after the decoding search,
    all on the validation set."""
    rows = [r for r in reports if r["recipe"] == recipe and "members" not in r
            and (r.get("validation_only") or r.get("label") == recipe)]
    metric = "BLEU" if "bleu" in rows[0]["valid_chosen"] else "ROUGE-1 / 2 / L"
    lines = [f"## Trials of {recipe} on validation", "",
             "Each trial changes the settings named beside it and nothing else; every score is on the validation "
             f"set ({metric}). Step 2: the candidates at the recipe's beam, before the decoding search.", "",
             "| run | settings changed | step 2 candidates | decoding chosen | validation | training min |",
             "|---|---|---|---|---|---|"]
    for report in rows:
        candidates = "; ".join(f"{name} {_valid_cell(entry['valid'])}"
                               for name, entry in report["model_selection"]["candidates"].items())
        settings = ", ".join(f"`{change}`" for change in _changes(report["command"]))
        lines.append(f"| {report['label']} | {settings or '(the recipe)'} | {candidates} | "
                     f"`{json.dumps(report['decode_search']['chosen'], sort_keys=True)}` | "
                     f"{_valid_cell(report['valid_chosen'])} | {report['training']['seconds'] / 60:.1f} |")
    return lines + [""]
