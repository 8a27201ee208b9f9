"""End to end through the CLI: a Flickr8k-layout folder and a GloVe-format file made here,
train a tiny model, write a bundle, reload it, caption with the same result."""
import json

import numpy as np
import pytest

from conftest import REPO, need_gcompris
from source_code.cli import main
from source_code.data.synthetic import generate_scene, write_flickr8k_layout

TINY = ["--backbone", "slim", "--input-size", "64", "--weights", "none", "--width", "0.25",
        "--depth", "0.25", "--last-stride", "1", "--units", "32", "--min-count", "1",
        "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("flickr8k_layout")
    write_flickr8k_layout(root, 40, seed=500, image_size=64, progress=False)
    return root


@pytest.fixture(scope="module")
def glove_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("glove") / "glove.6B.8d.txt"
    rng = np.random.default_rng(0)
    words = ["a", "small", "large", "red", "green", "blue", "yellow", "circle", "square",
             "triangle", "left", "of", "above", "the", "dog"]   # "right"/"below" missing on purpose
    path.write_text("".join(f"{w} " + " ".join(f"{v:.5f}" for v in rng.normal(size=8)) + "\n"
                            for w in words))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["attention", "merge"])
def test_train_through_cli_then_reload_and_caption(dataset, glove_file, tmp_path, capsys, decoder):
    bundle = tmp_path / f"bundle-{decoder}"
    code = main(["train", "--data", str(dataset), "--out", str(bundle), "--decoder", decoder,
                 "--glove", str(glove_file), "--finetune", "--epochs", "2", *TINY])
    assert code == 0
    for name in ("config.json", "vocab.txt", "decoder.weights.h5", "backbone.weights.h5"):
        assert (bundle / name).is_file()
    card = json.loads((bundle / "config.json").read_text())
    assert card["decoder"]["kind"] == decoder
    assert card["glove"]["dim"] == 8 and card["glove"]["frozen"] is True
    assert 0.7 < card["glove"]["coverage"] < 1.0          # right/below are not in the file
    assert len(card["training"]["history"]) == 2
    assert not list(tmp_path.glob(f".bundle-{decoder}*"))  # no staging folder left behind

    image = generate_scene(900, image_size=64).image
    img_path = tmp_path / "scene.png"
    from PIL import Image
    Image.fromarray(image).save(img_path)
    capsys.readouterr()
    assert main(["caption", str(img_path), "--bundle", str(bundle)]) == 0
    cli_caption = capsys.readouterr().out.strip()

    from source_code.model.captioner import Captioner
    reloaded = Captioner.load(bundle)
    assert reloaded.caption(image, beam_width=3)[0].text == cli_caption


@pytest.mark.slow
def test_the_grad_cam_loss_is_computed_only_in_the_epochs_that_weigh_it(dataset, tmp_path):
    """--gradcam-start-epoch 1: epoch 1 trains without the Grad-CAM loss (not computed:
    0 in the history), epoch 2 with it, on the frozen-feature path the objects recipe uses."""
    out = tmp_path / "grounded"
    assert main(["train", "--data", str(dataset), "--out", str(out), "--epochs", "2",
                 "--gradcam-weight", "0.5", "--gradcam-start-epoch", "1", *TINY]) == 0
    history = json.loads((out / "config.json").read_text())["training"]["history"]
    assert history[0]["gradcam_loss"] == 0.0
    assert history[1]["gradcam_loss"] > 0 and np.isfinite(history[1]["gradcam_loss"])
    assert all(h["att_loss"] > 0 for h in history)


@pytest.mark.slow
def test_reloaded_bundle_captions_exactly_like_the_trained_model(dataset, tmp_path):
    from source_code.data.datasets import load_dataset
    from source_code.model.backbone import BackboneSpec
    from source_code.model.captioner import Captioner
    from source_code.training.train import TrainConfig, train

    cfg = TrainConfig(backbone=BackboneSpec("slim", 64, None, 0.25, 0.25, 1),
                      decoder={"kind": "attention", "units": 32, "embed_dim": 16},
                      finetune_backbone=True, epochs=1, batch_size=8, min_word_count=1,
                      cell_precision="bfloat16")
    trained = train(load_dataset("flickr8k", dataset), tmp_path / "b", cfg, progress=False)
    assert trained.decoder.cell_dtype is None      # trained in bfloat16, serves in float32
    images = [generate_scene(950 + i, image_size=64).image for i in range(4)]
    before = [(c.words, c.logprob) for c in trained.caption(images, beam_width=3)]
    after = [(c.words, c.logprob) for c in Captioner.load(tmp_path / "b").caption(images, beam_width=3)]
    assert [w for w, _ in before] == [w for w, _ in after]
    np.testing.assert_allclose([l for _, l in before], [l for _, l in after], atol=1e-5)


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(dataset, tmp_path):
    out = tmp_path / "resumable"
    assert main(["train", "--data", str(dataset), "--out", str(out), "--finetune",
                 "--epochs", "1", *TINY]) == 0
    assert main(["train", "--data", str(dataset), "--out", str(out), "--finetune",
                 "--epochs", "2", "--resume", *TINY]) == 0
    history = json.loads((out / "config.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.slow
def test_frozen_backbone_training_caches_features(dataset, tmp_path):
    out = tmp_path / "frozen"
    assert main(["train", "--data", str(dataset), "--out", str(out), "--epochs", "1", *TINY]) == 0
    cache = out.with_name(out.name + ".work") / "features_train"
    progress = json.loads((cache / "progress.json").read_text())
    assert progress["done"] == 32   # 80 % of 40 images
    assert not (out / "backbone.weights.h5").exists() or json.loads(
        (out / "config.json").read_text())["backbone_weights_in_bundle"]


def test_bad_dataset_path_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "b"), *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_the_control_recipe_differs_from_the_bundled_one_only_in_grounding():
    """The faithfulness report's control model: the same recipe, the losses that pull
    attention and Grad-CAM onto the named object off (and no concept bank built)."""
    from source_code.training.recipes import RECIPES, _config, control_recipe
    for world, recipe in RECIPES.items():
        control = control_recipe(world)
        assert control["attention_weight"] == control["gradcam_weight"] == 0
        assert recipe["attention_weight"] > 0 and recipe["gradcam_weight"] > 0
        differ = {k for k in recipe.keys() | control.keys() if recipe.get(k) != control.get(k)}
        assert differ <= {"attention_weight", "gradcam_weight", "concept_bank"}
        cfg = _config(control, None)
        assert cfg.attention_weight == cfg.gradcam_weight == 0 and cfg.epochs == recipe["epochs"]
        assert cfg.tune_tail == recipe.get("tune_tail")
    # the objects bundle tunes Lite0's last block; the shapes one trains end to end
    assert _config(RECIPES["objects"], None).tune_tail == {"from_block": 15, "epochs": 2}
    assert _config(RECIPES["shapes"], None).tune_tail is None


@pytest.mark.parametrize("flags, tuned, command_ends", [
    ([], True, "--world objects"), (["--no-tune-tail"], False, "--world objects --no-tune-tail"),
    (["--cell-precision", "float32"], True, "--world objects"),
    (["--decoder-draws", "3"], True, "--world objects --decoder-draws 3")])
def test_train_default_tunes_the_tail_unless_told_not_to(monkeypatch, tmp_path, flags, tuned,
                                                          command_ends):
    """The objects recipe tunes Lite0's last block; `--no-tune-tail` keeps it frozen and
    says so in the card's command."""
    from source_code.training import recipes
    seen = {}

    def fake_train(dataset, out, cfg, grounding_file=None, extra_card=None, **kw):
        seen.update(cfg=cfg, card=extra_card)
        raise SystemExit(0)       # the rest of the recipe is not under test here
    monkeypatch.setattr(recipes, "train", fake_train)
    monkeypatch.setattr(recipes, "_write_scenes", lambda *a: None)
    monkeypatch.setattr("source_code.data.datasets.load_dataset", lambda *a: None)
    with pytest.raises(SystemExit):
        main(["train-default", "--world", "objects", *flags, "--out", str(tmp_path / "b"),
              "--data", str(tmp_path / "d"), "--quiet"])
    assert (seen["cfg"].tune_tail == recipes.OBJECTS_RECIPE["tune_tail"]) == tuned
    assert (seen["cfg"].tune_tail is None) == (not tuned)
    assert seen["card"]["training_command"].endswith(command_ends)
    assert ("(frozen)" in seen["card"]["description"]) == (not tuned)
    assert seen["cfg"].cell_precision == ("float32" if "--cell-precision" in flags else "auto")


@pytest.mark.parametrize("draws", ["0", "-1", "two"])
def test_train_default_refuses_a_draw_count_below_one(tmp_path, capsys, draws):
    with pytest.raises(SystemExit) as exit_:
        main(["train-default", "--decoder-draws", draws, "--out", str(tmp_path / "b"),
              "--data", str(tmp_path / "d")])
    assert exit_.value.code == 2
    assert "at least 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "b").exists()


def test_the_objects_recipe_chooses_the_prior_before_it_evaluates(monkeypatch, tmp_path):
    """The ImageNet prior is part of the model: the recipe chooses its weight on
    validation scenes first (for each decoder draw), so the card's held-out figures,
    familiarity and concept bank are those of the model that ships."""
    from source_code.explain import concepts
    from source_code.training import recipes
    calls, outs = [], []

    class Trained:
        input_size = 224

        def __init__(self, seed):
            self.config = {"training": {"seed": seed}}

        def save(self, out):
            calls.append("save")

    def fake_train(dataset, out, cfg, **kw):
        calls.append("train")
        outs.append(out)
        return Trained(cfg.seed)
    monkeypatch.setattr(recipes, "train", fake_train)
    monkeypatch.setattr(recipes, "_write_scenes", lambda *a: None)
    monkeypatch.setattr("source_code.data.datasets.load_dataset", lambda *a: None)
    monkeypatch.setattr("source_code.data.worlds.held_out_scenes", lambda *a, **k: [])
    monkeypatch.setattr(recipes, "choose_imagenet_prior",
                        lambda *a, **k: calls.append("prior") or _choice(0.5))
    monkeypatch.setattr(recipes, "held_out_metrics", lambda *a: calls.append("evaluate") or {})
    monkeypatch.setattr(recipes, "fit_familiarity", lambda *a, **k: calls.append("familiarity"))
    monkeypatch.setattr(recipes, "familiarity_negatives", lambda *a: None)
    monkeypatch.setattr(concepts, "build_world_bank", lambda *a, **k: (calls.append("bank"),
                                                                       (_Bank(), {}))[1])
    monkeypatch.setattr(concepts, "save_bank", lambda *a: None)
    recipes.train_world("objects", tmp_path / "b", tmp_path / "d", progress=False,
                        decoder_draws=2)
    assert calls == ["train", "prior", "train", "prior", "evaluate", "familiarity", "save", "bank"]
    assert outs == [tmp_path / "b", tmp_path / "b.work" / "draw-1"]
    table = json.loads((tmp_path / "b.work" / "imagenet_prior.json").read_text())
    assert table["rows"] == _choice(0.5)["rows"]     # every setting's row kept
    calls.clear()
    recipes.train_world("objects", tmp_path / "c", tmp_path / "d", progress=False)
    assert recipes.OBJECTS_RECIPE["decoder_draws"] == 1     # the recipe's own: one draw
    assert calls == ["train", "prior", "evaluate", "familiarity", "save", "bank"]
    assert json.loads((tmp_path / "c.work" / "imagenet_prior.json").read_text())["chosen"] == 1.0
    calls.clear()
    recipes.train_world("shapes", tmp_path / "s", tmp_path / "d", progress=False)
    assert calls == ["train", "evaluate", "familiarity", "save", "bank"]   # no ImageNet head, no prior


def _choice(score: float, weight: float = 1.0) -> dict:
    """A prior choice's result as choose_prior_weight returns it: no prior, and the
    chosen attention setting with photo score ``score``."""
    row = {"exact_match": 0.9, "photo_nouns": score, "photo_pairs": score, "photo_score": score}
    return {"rows": [{"pooling": "frame", "weight": 0.0, **row, "photo_score": 0.1},
                     {"pooling": "attention", "weight": weight, **row}],
            "chosen": weight, "chosen_pooling": "attention"}


def test_the_recipe_keeps_the_decoder_draw_the_priors_rule_scores_best(monkeypatch, tmp_path):
    """Each later draw links the first's backbone caches and is trained with its own
    seed; the draw whose chosen prior setting scores best on the validation photos is
    kept (ties: the earlier), with its prior set, its table written and every draw's
    figures in its card."""
    from source_code.training import recipes
    work = tmp_path / "b.work"
    (work / recipes.TRAIN_FEATURES).mkdir(parents=True)
    (work / "tail.json").write_text("{}")
    scores = {0: 0.6, 1: 0.7, 2: 0.7}      # seed 2 ties seed 1: the earlier is kept

    class Draw:
        def __init__(self, seed):
            self.config = {"training": {"seed": seed}}
    monkeypatch.setattr(recipes, "choose_imagenet_prior",
                        lambda cap, progress: _choice(scores[cap.config["training"]["seed"]],
                                                      weight=cap.config["training"]["seed"] + 1.0))
    linked = []

    def draw(k):
        folder = work / f"draw-{k}.work"
        linked.append(sorted(p.name for p in folder.iterdir() if p.is_symlink()))
        assert (folder / "tail.json").resolve() == (work / "tail.json").resolve()
        return Draw(k)
    kept = recipes.keep_best_draw(Draw(0), [draw, draw], work, progress=False)
    assert kept.config["training"]["seed"] == 1
    assert linked == [sorted([recipes.TRAIN_FEATURES, "tail.json"])] * 2   # only what exists
    record = kept.config["decoder_draws"]
    assert [d["seed"] for d in record["draws"]] == [0, 1, 2] and record["kept_seed"] == 1
    assert [d["photo_score"] for d in record["draws"]] == [0.6, 0.7, 0.7]
    assert record["draws"][1]["chosen"] == 2.0
    assert json.loads((work / "imagenet_prior.json").read_text())["chosen"] == 2.0


def test_the_recipe_draws_the_banks_scenes_once_and_calibrates_on_its_first(monkeypatch, tmp_path):
    """Familiarity's calibration scenes are the concept bank's first ones (the same
    seeds): the recipe draws the bank's scenes once and hands them to both."""
    from source_code.explain import concepts
    from source_code.training import recipes
    seen = {}

    class Trained:
        config = {"training": {}}
        input_size = 224

        def save(self, out):
            pass
    drawn = []
    monkeypatch.setattr(recipes, "train", lambda *a, **k: Trained())
    monkeypatch.setattr(recipes, "_write_scenes", lambda *a: None)
    monkeypatch.setattr("source_code.data.datasets.load_dataset", lambda *a: None)
    monkeypatch.setattr("source_code.data.worlds.held_out_scenes",
                        lambda *a, **k: pytest.fail("calibration scenes drawn again"))
    monkeypatch.setattr(recipes, "keep_best_draw", lambda first, *a: first)
    monkeypatch.setattr(recipes, "held_out_metrics", lambda *a: {})
    monkeypatch.setattr(recipes, "familiarity_negatives", lambda *a: None)
    monkeypatch.setattr(recipes, "fit_familiarity",
                        lambda cap, data, calibration, *a, **k: seen.update(calibration=calibration))
    n = concepts.concept_image_counts("objects")[1]
    examples = ([f"image {i}" for i in range(n)], [["a cup"]] * n, [[]] * n)
    monkeypatch.setattr(concepts, "world_examples",
                        lambda world, count, seed, *a: drawn.append((count, seed)) or examples)
    monkeypatch.setattr(concepts, "build_world_bank",
                        lambda *a, examples, **k: seen.update(bank=examples) or (_Bank(), {}))
    monkeypatch.setattr(concepts, "save_bank", lambda *a: None)
    recipes.train_world("objects", tmp_path / "b", tmp_path / "d", eval_scenes=40, progress=False)
    assert drawn == [(n, concepts.WORLD_BANK_SEED)]
    assert seen["bank"] is examples and seen["calibration"] == examples[0][:40]
    assert recipes.CALIBRATION_SEED == concepts.WORLD_BANK_SEED


def test_the_bank_refuses_example_scenes_of_the_wrong_count():
    from source_code.explain import concepts

    class Cap:
        config = {"world": "objects"}
        input_size = 224
    with pytest.raises(ValueError, match="example scenes"):
        concepts.build_world_bank(Cap(), examples=([1], [2], [3]))


class _Bank:
    info = {}


def test_choosing_an_imagenet_prior_for_the_shapes_bundle_is_a_clear_error(capsys):
    config = (REPO / "models" / "shapes" / "config.json").read_text()
    assert main(["choose-imagenet-prior", "--bundle", "shapes", "--scenes", "4"]) == 2
    err = capsys.readouterr().err
    assert "use --bundle objects" in err and "Traceback" not in err
    assert (REPO / "models" / "shapes" / "config.json").read_text() == config   # untouched


def test_prior_weight_rule():
    from source_code.evaluation.imagenet_prior import pick_weight
    rows = [{"weight": 0.0, "exact_match": 0.80, "photo_score": 0.70},
            {"weight": 0.2, "exact_match": 0.795, "photo_score": 0.75},
            {"weight": 0.5, "exact_match": 0.77, "photo_score": 0.90},   # costs 0.03
            {"weight": 0.3, "exact_match": 0.80, "photo_score": 0.75}]
    assert pick_weight(rows) == {"weight": 0.2, "pooling": "frame"}   # a tie: the smaller
    assert pick_weight(rows, max_loss=0.05)["weight"] == 0.5
    assert pick_weight([dict(rows[0])])["weight"] == 0.0
    pooled = [dict(r, pooling="frame") for r in rows] + [
        {"pooling": "attention", "weight": 0.2, "exact_match": 0.80, "photo_score": 0.75},
        {"pooling": "attention", "weight": 0.3, "exact_match": 0.80, "photo_score": 0.80}]
    assert pick_weight(pooled) == {"weight": 0.3, "pooling": "attention"}
    assert pick_weight(pooled[:-1]) == {"weight": 0.2, "pooling": "frame"}  # ties: frame first
    # the first bundles' rule read the all-stamp scenes instead of the validation photos
    stamps = [dict(r, exact_match_stamps=1 - r["photo_score"]) for r in rows]
    assert pick_weight(stamps, max_loss=0.01, score="exact_match_stamps")["weight"] == 0.0


@pytest.mark.slow
def test_choosing_the_prior_tries_both_poolings_and_records_the_rules_pick(tmp_path, capsys):
    """choose-imagenet-prior decodes validation scenes under every pooling and weight
    (no prior once), writes the table, and records in the card what the rule picks."""
    need_gcompris()
    import shutil
    from source_code.evaluation.imagenet_prior import POOLINGS, WEIGHTS, pick_weight
    from source_code.model.captioner import Captioner
    bundle = tmp_path / "objects"
    shutil.copytree(REPO / "models" / "objects", bundle, ignore=shutil.ignore_patterns("concepts"))
    table = tmp_path / "prior.json"
    assert main(["choose-imagenet-prior", "--bundle", str(bundle), "--scenes", "6",
                 "--json", str(table), "--quiet"]) == 0
    result = json.loads(table.read_text())
    settings = [(r["pooling"], r["weight"]) for r in result["rows"]]
    assert settings == [("frame", 0.0)] + [(p, w) for p in POOLINGS for w in WEIGHTS if w]
    assert all(0 <= r["exact_match"] <= 1 and 0 <= r["photo_nouns"] <= 1
               and 0 <= r["photo_pairs"] <= 1 for r in result["rows"])
    assert result["validation_photos"] >= 60 and result["validation_pairs"] >= 60
    chosen = pick_weight(result["rows"])
    assert (result["chosen"], result["chosen_pooling"]) == (chosen["weight"], chosen["pooling"])
    model = Captioner.load(bundle)
    assert model.imagenet_prior() == (chosen["weight"],
                                      chosen["pooling"] if chosen["weight"] else "frame")
    assert "chosen:" in capsys.readouterr().out


def test_calibrating_familiarity_needs_training_scenes_or_evidence_only(tmp_path, capsys):
    import shutil
    bundle = tmp_path / "shapes"
    shutil.copytree(REPO / "models" / "shapes", bundle)
    before = (bundle / "familiarity.npz").read_bytes()
    assert main(["calibrate-familiarity", "--bundle", str(bundle), "--scenes", "4"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["calibrate-familiarity", "--bundle", str(bundle), "--scenes", "4",
                 "--evidence-only"]) == 2
    err = capsys.readouterr().err
    assert "the objects bundle" in err and "Traceback" not in err
    assert (bundle / "familiarity.npz").read_bytes() == before          # untouched


@pytest.mark.slow
def test_evidence_only_recalibration_rechooses_the_threshold_on_validation_photos(tmp_path):
    """--evidence-only keeps the bank and calibration and re-chooses the ImageNet evidence
    threshold among the quantiles of object-free frames, on the validation photos."""
    need_gcompris()
    import shutil
    from source_code.model.familiarity import EVIDENCE_QUANTILES, Familiarity
    bundle = tmp_path / "objects"
    shutil.copytree(REPO / "models" / "objects", bundle, ignore=shutil.ignore_patterns("concepts"))
    table = tmp_path / "evidence.json"
    assert main(["calibrate-familiarity", "--bundle", str(bundle), "--scenes", "40",
                 "--evidence-only", "--json", str(table)]) == 0
    shipped, refit = Familiarity.load(REPO / "models" / "objects"), Familiarity.load(bundle)
    np.testing.assert_array_equal(refit.calibration, shipped.calibration)
    np.testing.assert_array_equal(refit.bank, shipped.bank)
    result = json.loads(table.read_text())
    assert [r["quantile"] for r in result["rows"]] == list(EVIDENCE_QUANTILES)
    best = max(result["rows"], key=lambda r: (r["balanced_accuracy"], r["quantile"]))
    assert result["quantile"] == best["quantile"] == refit.evidence_quantile
    assert abs(refit.evidence_threshold - best["threshold"]) < 1e-4
    assert result["object_free_frames"] == 40
