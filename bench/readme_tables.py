"""The README's faithfulness table, generated from the result files.

    python bench/readme_tables.py            # rewrite the README between the markers
    python bench/readme_tables.py --check    # exit 1 if the README differs from the files
    python bench/readme_tables.py --print    # print the generated block

Reads ``docs/results/faithfulness_*.json`` (written by ``python -m source_code
faithfulness --out ...``; the shapes bundle's first) and replaces what lies between
``<!-- faithfulness:start -->`` and ``<!-- faithfulness:end -->`` in README.md, and
nothing else. tests/test_faithfulness.py checks that the README holds exactly what
this script generates from the committed files, so the two never drift.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
RESULTS = REPO / "docs" / "results"
PATTERN = "faithfulness_*.json"
START, END = "<!-- faithfulness:start -->", "<!-- faithfulness:end -->"

LABELS = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "smoothgrad": "SmoothGrad",
          "attention": "attention (not an attribution)", "random": "random maps"}
# Pointing columns per world: the shapes world scores size, colour and shape words
# (an attribute unique to the described object or shared by both); the objects
# world scores object nouns, never shared (a scene holds one object per category).
KIND_COLUMNS = {"shapes": (("size", "size"), ("color", "colour"), ("shape", "shape"),
                           ("unique", "unique"), ("shared", "shared"), ("all", "all")),
                "objects": (("object", "object nouns"),)}
TARGET_SOURCE = {"shapes": 'issue "Faithfulness you can trust"',
                 "objects": 'deletion: issue "Faithfulness you can trust"; pointing on object '
                            'words: issue "A default model that sees the real world"'}
WORDS_SCORED = {"shapes": "size, colour and shape words", "objects": "object nouns"}


ORDER = ("faithfulness_shapes.json", "faithfulness_shapes_control.json")


def result_files(folder: Path = RESULTS) -> list[Path]:
    """The result files: the shapes bundle's, its control model's, then the others by name."""
    return sorted(folder.glob(PATTERN),
                  key=lambda p: (ORDER.index(p.name) if p.name in ORDER else len(ORDER), p.name))


def _figure(doc: dict, *path) -> float | None:
    node = doc["report"]
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


# What the trained-versus-control table compares: (label, path into the report).
COMPARED = (
    ("Grad-CAM pointing, all words", ("pointing", "gradcam", "all", "hit_rate")),
    ("Grad-CAM pointing, unique-attribute words", ("pointing", "gradcam", "unique", "hit_rate")),
    ("Grad-CAM++ pointing, all words", ("pointing", "gradcampp", "all", "hit_rate")),
    ("SmoothGrad pointing, all words", ("pointing", "smoothgrad", "all", "hit_rate")),
    ("attention pointing, all words", ("pointing", "attention", "all", "hit_rate")),
    ("Grad-CAM deletion AUC / random, unique-attribute words",
     ("gradcam_over_random_deletion", "unique", "ratio")),
    ("ACE top segment on the described object", ("ace_top_segment", "color+shape", "hit_rate")),
    ("sanity: Spearman of Grad-CAM, trained vs random weights",
     ("sanity_spearman_trained_vs_random", "gradcam")),
)


def render_comparison(trained: dict, control: dict) -> str:
    """The shapes bundle beside its control model (same recipe, grounding losses off)."""
    lines = ["Trained with grounding losses (the shipped shapes bundle) beside the control model "
             "(the same recipe with them off, `train-default --world shapes --control`), from the "
             "two result files above:", "",
             "| figure | shapes bundle | control model |", "|---|---|---|"]
    for label, path in COMPARED:
        lines.append(f"| {label} | {_num(_figure(trained, *path))} | {_num(_figure(control, *path))} |")
    return "\n".join(lines)


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _with_std(fig: dict | None, key: str) -> str:
    if not fig or key not in fig:
        return "-"
    std = fig.get(f"{key}_std")
    return _num(fig[key]) + (f" ± {std:.3f}" if std is not None else "")


def _label(method: str, report: dict) -> str:
    if method == "random":
        return f"random maps ({report['settings']['random_seeds']} seeds, mean ± std)"
    return LABELS.get(method, method)


def _count(n: int) -> str:
    return f"{n:,}"


def render_result(doc: dict, source: str) -> str:
    """One result file as Markdown: provenance, pointing, deletion/insertion, targets."""
    r, s = doc["report"], doc["report"]["settings"]
    world = doc["bundle"].get("world", "shapes")
    columns = KIND_COLUMNS[world]
    code = doc["code_version"]
    commit = code["commit"][:7] if code["commit"] != "unknown" else "unknown"
    dirty = {True: ", with uncommitted changes", False: "", None: ""}[code.get("dirty")]
    bundle = doc["bundle"]
    seeds = doc["scene_set"]["seeds"]
    words = r["pointing"].get("gradcam", {}).get("all", {}).get("words")
    minutes = f", {doc['seconds'] / 60:.0f} min" if doc.get("seconds") else ""
    lines = [
        f"`{doc['command']}` (from `{source}`): bundle `{bundle['name']}` (config sha256 "
        f"`{bundle['config_sha256'][:12]}`, weights sha256 `{bundle['weights_sha256'][:12]}`), "
        f"code `{commit}`{dirty}; {r['scenes']} {doc['scene_set']['generator']} "
        f"(seeds {seeds[0]}-{seeds[-1]}), {r['scenes_explained']} with a caption of the grammar"
        + (f", {_count(words)} {WORDS_SCORED[world]}" if words else "") + f"{minutes}.",
        "",
        f"Pointing game: hit rate of the map's peak on the described object "
        f"({s['pointing_tolerance_px']} px tolerance)."
        + (" *unique*: only the described object has the word's attribute; *shared*: both "
           "objects have it (\"large\" when both are large)." if world == "shapes" else ""),
        "",
        "| method | scenes | " + " | ".join(c for _, c in columns) + " | words |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for m, fig in r["pointing"].items():
        cells = [_with_std(fig.get(g), "hit_rate") for g, _ in columns]
        n = fig.get("all", {}).get("words", 0)
        lines.append(f"| {_label(m, r)} | {r['scenes_scored']['pointing'].get(m, 0)} | "
                     + " | ".join(cells) + f" | {_count(n)} |")
    di = r.get("deletion_insertion", {})
    if di:
        lines += [
            "",
            f"Deletion and insertion AUC (RISE; {s['deletion_steps']} steps of "
            f"{s['step_pixels']:.0f} px of the {s['input_size']} x {s['input_size']} px input; "
            f"deleted pixels: {s['deleted_pixels']}; insertion into: {s['insertion_substrate']}; "
            f"AUC: {s['auc']}; lower deletion and higher insertion are better):",
            "",
            "| method | scenes | deletion: unique | shared | all | insertion: unique | all | words |",
            "|---" * 8 + "|",
        ]
        for m, fig in di.items():
            cells = [_with_std(fig.get(g), "deletion") for g in ("unique", "shared", "all")]
            cells += [_with_std(fig.get(g), "insertion") for g in ("unique", "all")]
            n = fig.get("all", {}).get("words", 0)
            lines.append(f"| {_label(m, r)} | {r['scenes_scored']['deletion'].get(m, 0)} | "
                         + " | ".join(cells) + f" | {_count(n)} |")
    ratio = r.get("gradcam_over_random_deletion", {})
    if ratio:
        parts = [f"{g} {_num(ratio[g]['ratio'])} ± {ratio[g]['std']:.3f} ({ratio[g]['words']} words)"
                 for g in ("unique", "shared", "size/shared", "all") if g in ratio]
        lines += ["", "Grad-CAM's deletion AUC over the random maps' (± over the random seeds only, "
                  "not over words): "
                  + ", ".join(parts) + "."]
    targets = doc.get("targets", {})
    if targets:
        names = {"gradcam_deletion_over_random_unique":
                 "Grad-CAM deletion AUC over random on unique-attribute words",
                 "gradcam_pointing_all": "Grad-CAM pointing, all words"}
        parts = []
        for name, t in targets.items():
            bound = f"<= {t['max']}" if "max" in t else f">= {t['min']}"
            verdict = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
            parts.append(f"{names.get(name, name)} {bound}: {_num(t['value'], 3)}, {verdict}")
        lines += ["", f"Targets ({TARGET_SOURCE[world]}): " + "; ".join(parts) + "."]
    extra = []
    ace = r.get("ace_top_segment", {}).get("color+shape" if world == "shapes" else "object")
    if ace:
        extra.append(f"ACE: the top-ranked segment lies on the described object for "
                     f"{ace['hit_rate']:.3f} of {_count(ace['words'])} "
                     + ("colour and shape words" if world == "shapes" else "object nouns"))
    sanity = r.get("sanity_spearman_trained_vs_random")
    if sanity:
        extra.append(f"sanity check (Adebayo et al. 2018), Spearman correlation of the trained and "
                     f"a randomly initialised model's maps, {r.get('sanity_scenes', '?')} scenes: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in sanity.items()))
    if extra:
        lines += ["", "; ".join(extra) + "."]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return path.name


def render(files: list[Path] | None = None) -> str:
    """The whole generated block, markers included."""
    files = result_files() if files is None else files
    sources = [_shown(p) for p in files]
    parts = [START, "<!-- generated by `python bench/readme_tables.py` from "
             + (", ".join(sources) or "no result files") + ": rerun it, do not edit by hand -->"]
    docs = {p.name: json.loads(p.read_text()) for p in files}
    for p, source in zip(files, sources):
        parts += ["", render_result(docs[p.name], source)]
    if all(name in docs for name in ORDER):
        parts += ["", render_comparison(docs[ORDER[0]], docs[ORDER[1]])]
    if not files:
        parts += ["", "No result file yet: run `python -m source_code faithfulness --out "
                  "docs/results/faithfulness_shapes.json`."]
    parts.append(END)
    return "\n".join(parts)


def replace_block(text: str, block: str) -> str:
    """``text`` with the part from START to END (markers included) replaced by ``block``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README.md must hold one {START} ... {END} pair")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + block + tail


def current_block(text: str) -> str:
    head, rest = text.split(START, 1)
    return START + rest.split(END, 1)[0] + END


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    ap.add_argument("--print", action="store_true", help="print the generated block")
    ap.add_argument("--readme", default=str(README))
    args = ap.parse_args(argv)
    block = render()
    if args.print:
        print(block)
        return 0
    path = Path(args.readme)
    text = path.read_text()
    new = replace_block(text, block)
    if args.check:
        if new != text:
            print(f"{path} is out of date: run python bench/readme_tables.py", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    if new != text:
        path.write_text(new)
        print(f"updated {path}")
    else:
        print(f"{path} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
