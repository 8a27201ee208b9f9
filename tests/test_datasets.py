import json
import warnings

import pytest

from source_code.data.datasets import (
    CaptionDataset,
    load_coco,
    load_dataset,
    load_flickr8k,
    load_flickr30k,
)


def touch_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"\xff\xd8\xff")  # content is never read


def check_splits(ds):
    assert set(ds.splits) == {"train", "val", "test"}
    seen = set()
    for names in ds.splits.values():
        assert names == sorted(names)
        assert not seen & set(names)
        seen |= set(names)
        assert all(n in ds.captions for n in names)
    return seen


# -- Flickr8k ----------------------------------------------------------------

IMGS8K = [f"{1000 + i}_abc.jpg" for i in range(10)]


def token_lines(images, per_image=2):
    return "".join(
        f"{img}#{k}\tCaption {k} of {img}, with a comma .\n" for img in images for k in range(per_image)
    )


def make_flickr8k_token(root, text_subdir=True, image_dir="Flicker8k_Dataset", split_files=True,
                        images_on_disk=IMGS8K, captioned=IMGS8K):
    text_dir = root / "Flickr8k_text" if text_subdir else root
    text_dir.mkdir(parents=True, exist_ok=True)
    (text_dir / "Flickr8k.token.txt").write_text(token_lines(captioned), encoding="utf-8")
    touch_images(root / image_dir, images_on_disk)
    if split_files:
        (text_dir / "Flickr_8k.trainImages.txt").write_text("\n".join(IMGS8K[:6]) + "\n")
        (text_dir / "Flickr_8k.devImages.txt").write_text("\n".join(IMGS8K[6:8]) + "\n\n")
        (text_dir / "Flickr_8k.testImages.txt").write_text("\n".join(IMGS8K[8:]))
    return root


def test_flickr8k_token_layout_with_official_splits(tmp_path):
    root = make_flickr8k_token(tmp_path / "f8k")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_flickr8k(root)
    assert isinstance(ds, CaptionDataset) and ds.name == "flickr8k"
    assert ds.image_dir == root / "Flicker8k_Dataset"
    assert set(ds.captions) == set(IMGS8K)
    assert ds.captions[IMGS8K[0]] == [
        f"Caption 0 of {IMGS8K[0]}, with a comma .",
        f"Caption 1 of {IMGS8K[0]}, with a comma .",
    ]
    assert ds.splits == {"train": IMGS8K[:6], "val": IMGS8K[6:8], "test": IMGS8K[8:]}
    check_splits(ds)
    assert ds.image_path(IMGS8K[3]) == root / "Flicker8k_Dataset" / IMGS8K[3]
    assert ds.image_path(IMGS8K[3]).is_file()
    with pytest.raises(KeyError):
        ds.image_path("nope.jpg")
    assert "train=6" in repr(ds)


def test_flickr8k_token_file_in_root_and_other_image_dir_name(tmp_path):
    root = make_flickr8k_token(tmp_path, text_subdir=False, image_dir="Flickr8k_Dataset")
    ds = load_flickr8k(str(root))
    assert ds.image_dir == root / "Flickr8k_Dataset"
    assert ds.splits["val"] == IMGS8K[6:8]


def test_flickr8k_image_dir_preference(tmp_path):
    root = make_flickr8k_token(tmp_path, image_dir="Images")
    touch_images(root / "Flicker8k_Dataset", IMGS8K)
    assert load_flickr8k(root).image_dir == root / "Flicker8k_Dataset"


def test_flickr8k_token_file_path_accepted(tmp_path):
    root = make_flickr8k_token(tmp_path)
    ds = load_flickr8k(root / "Flickr8k_text" / "Flickr8k.token.txt")
    assert ds.image_dir == root / "Flicker8k_Dataset" and len(ds.captions) == 10


def test_flickr8k_deterministic_split_without_split_files(tmp_path):
    imgs = [f"{i:05d}.jpg" for i in range(40)]
    root = make_flickr8k_token(tmp_path, split_files=False, images_on_disk=imgs, captioned=imgs)
    ds = load_flickr8k(root)
    seen = check_splits(ds)
    assert seen == set(imgs)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [30, 5, 5]
    assert load_flickr8k(root).splits == ds.splits  # deterministic
    other = load_flickr8k(root, seed=1).splits
    assert other != ds.splits and [len(v) for v in other.values()] == [30, 5, 5]
    # not simply the first names in sorted order
    assert ds.splits["train"] != imgs[:30]


def test_flickr8k_split_is_independent_of_caption_file_order(tmp_path):
    imgs = [f"{i:05d}.jpg" for i in range(16)]
    a = make_flickr8k_token(tmp_path / "a", split_files=False, images_on_disk=imgs, captioned=imgs)
    b = make_flickr8k_token(tmp_path / "b", split_files=False, images_on_disk=imgs, captioned=imgs[::-1])
    assert load_flickr8k(a).splits == load_flickr8k(b).splits


def test_flickr8k_partial_split_files_fall_back(tmp_path):
    root = make_flickr8k_token(tmp_path)
    (root / "Flickr8k_text" / "Flickr_8k.devImages.txt").unlink()
    with pytest.warns(UserWarning, match="deterministic split"):
        ds = load_flickr8k(root)
    assert check_splits(ds) == set(IMGS8K)


def test_flickr8k_missing_images_and_uncaptioned_split_entries(tmp_path):
    on_disk = IMGS8K[:9]  # IMGS8K[9] missing on disk
    captioned = IMGS8K[:8] + IMGS8K[9:]  # IMGS8K[8] has no caption
    root = make_flickr8k_token(tmp_path, images_on_disk=on_disk, captioned=captioned)
    with pytest.warns(UserWarning) as record:
        ds = load_flickr8k(root)
    messages = [str(w.message) for w in record]
    missing = [m for m in messages if "missing from" in m]
    assert len(missing) == 1 and "1 captioned image(s)" in missing[0] and "2 captions" in missing[0]
    assert any("test split have no captions" in m and "2 image(s)" in m for m in messages)
    assert IMGS8K[9] not in ds.captions
    assert ds.splits["test"] == []
    check_splits(ds)


def test_flickr8k_images_outside_splits_keep_captions(tmp_path):
    extra = "9999_extra.jpg"
    root = make_flickr8k_token(tmp_path, images_on_disk=IMGS8K + [extra], captioned=IMGS8K + [extra])
    ds = load_flickr8k(root)
    assert extra in ds.captions and extra not in check_splits(ds)


def test_flickr8k_malformed_token_lines(tmp_path):
    root = make_flickr8k_token(tmp_path)
    tok = root / "Flickr8k_text" / "Flickr8k.token.txt"
    tok.write_text(
        "\ufeff" + token_lines(IMGS8K[:1]) + "no_hash_here.jpg\tcaption\n" + f"{IMGS8K[1]}#0\t   \n\n"
        + f"{IMGS8K[2]}#0 space separated caption\n",
        encoding="utf-8",
    )
    with pytest.warns(UserWarning) as record:
        ds = load_flickr8k(root)
    messages = " | ".join(str(w.message) for w in record)
    assert "line 3" in messages and "line 4" in messages
    assert ds.captions[IMGS8K[0]][0].startswith("Caption 0")  # BOM stripped from the first name
    assert ds.captions[IMGS8K[2]] == ["space separated caption"]


def test_flickr8k_csv_layout(tmp_path):
    root = tmp_path / "kaggle"
    root.mkdir()
    touch_images(root / "Images", IMGS8K)
    rows = ["image,caption"]
    for img in IMGS8K:
        rows.append(f'{img},"A dog, a cat, and a ""quoted"" word ."')
        rows.append(f"{img},An unquoted caption, with a comma .")
    rows.append("")
    (root / "captions.txt").write_text("\n".join(rows), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_flickr8k(root)
    assert ds.image_dir == root / "Images"
    assert ds.captions[IMGS8K[4]] == [
        'A dog, a cat, and a "quoted" word .',
        "An unquoted caption, with a comma .",
    ]
    assert check_splits(ds) == set(IMGS8K)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [8, 1, 1]  # 7.5 rounds half up


def test_flickr8k_csv_with_official_split_files(tmp_path):
    root = tmp_path
    touch_images(root / "Images", IMGS8K)
    (root / "captions.txt").write_text(
        "image,caption\n" + "".join(f"{i},A caption .\n" for i in IMGS8K), encoding="utf-8"
    )
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(IMGS8K[:5]))
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(IMGS8K[5:7]))
    (root / "Flickr_8k.testImages.txt").write_text("\n".join(IMGS8K[7:]))
    ds = load_flickr8k(root)
    assert ds.splits["train"] == IMGS8K[:5] and ds.splits["test"] == IMGS8K[7:]


def test_flickr8k_duplicate_split_entries_made_disjoint(tmp_path):
    root = make_flickr8k_token(tmp_path)
    (root / "Flickr8k_text" / "Flickr_8k.testImages.txt").write_text("\n".join(IMGS8K[7:]))
    with pytest.warns(UserWarning, match="already in an earlier split"):
        ds = load_flickr8k(root)
    assert ds.splits["val"] == IMGS8K[6:8] and ds.splits["test"] == IMGS8K[8:]


def test_flickr8k_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="Flickr8k.token.txt"):
        load_flickr8k(tmp_path)
    (tmp_path / "Flickr8k.token.txt").write_text(token_lines(IMGS8K))
    with pytest.raises(FileNotFoundError, match="image folder"):
        load_flickr8k(tmp_path)
    touch_images(tmp_path / "Images", ["other.jpg"])
    with pytest.raises(FileNotFoundError, match="none of the 10"):
        load_flickr8k(tmp_path)


# -- Flickr30k -----------------------------------------------------------------

IMGS30K = [f"{1000092795 + i}.jpg" for i in range(12)]


def results_csv(images=IMGS30K, extra=""):
    lines = ["image_name| comment_number| comment"]
    for img in images:
        for k in range(3):
            lines.append(f"{img}| {k}| Caption {k} for {img} , with comma .")
    return "\ufeff" + "\n".join(lines) + "\n" + extra


def make_flickr30k(folder, nested=True, images=IMGS30K, extra=""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.csv").write_text(results_csv(images, extra), encoding="utf-8")
    touch_images(folder / "flickr30k_images" if nested else folder, images)
    return folder


def test_flickr30k_basic(tmp_path):
    folder = make_flickr30k(tmp_path / "f30k")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_flickr30k(folder / "results.csv")
    assert ds.name == "flickr30k" and ds.image_dir == folder / "flickr30k_images"
    assert set(ds.captions) == set(IMGS30K)
    assert ds.captions[IMGS30K[0]] == [f"Caption {k} for {IMGS30K[0]} , with comma ." for k in range(3)]
    assert check_splits(ds) == set(IMGS30K)
    # 29000/1014/rest of 31783, proportionally: 12 -> 10/1/1 (val and test at least one)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [10, 1, 1]
    assert load_flickr30k(folder).splits == ds.splits


def test_flickr30k_split_proportions_large(tmp_path):
    imgs = [f"{i}.jpg" for i in range(1000)]
    folder = tmp_path
    (folder / "results.csv").write_text(results_csv(imgs), encoding="utf-8")
    touch_images(folder / "flickr30k_images", imgs)
    ds = load_flickr30k(folder)
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [912, 32, 56]


def test_flickr30k_images_in_same_folder_and_kaggle_nesting(tmp_path):
    inner = make_flickr30k(tmp_path / "flickr30k_images", nested=False)
    ds = load_flickr30k(inner)
    assert ds.image_dir == inner
    ds2 = load_flickr30k(tmp_path)  # outer folder: finds flickr30k_images/results.csv
    assert ds2.captions == ds.captions


def test_flickr30k_malformed_rows(tmp_path):
    bad = (
        "\n"
        f"{IMGS30K[0]}| 4 A dog runs across the grass .\n"  # wrong field count (real Kaggle quirk)
        f"{IMGS30K[1]}| 3| \n"  # empty comment
        f"{IMGS30K[2]}| x| A caption with a bad number .\n"  # non-integer number
        f"{IMGS30K[3]}| 3| too| many fields\n"
        "   \n"
        f"| 3| no image name\n"
        f"{IMGS30K[4]}| 3| A good late caption .\n"
    )
    folder = make_flickr30k(tmp_path, extra=bad)
    n_good = 1 + 3 * len(IMGS30K)
    with pytest.warns(UserWarning) as record:
        ds = load_flickr30k(folder)
    messages = [str(w.message) for w in record]
    first_bad = n_good + 2  # header + good rows, then the blank line
    for offset in (0, 1, 2, 3, 5):
        assert any(f"line {first_bad + offset}:" in m for m in messages), (offset, messages)
    assert len(messages) == 5
    assert ds.captions[IMGS30K[4]][-1] == "A good late caption ."
    assert all(len(ds.captions[i]) == 3 for i in IMGS30K[:4])
    assert not any("bad number" in c for caps in ds.captions.values() for c in caps)


def test_flickr30k_many_malformed_rows_are_capped(tmp_path):
    folder = make_flickr30k(tmp_path, extra="".join(f"junk line {i}\n" for i in range(80)))
    with pytest.warns(UserWarning) as record:
        load_flickr30k(folder)
    messages = [str(w.message) for w in record]
    assert len(messages) == 51 and "80 malformed rows" in messages[-1]


def test_flickr30k_missing_images_warned_once(tmp_path):
    folder = make_flickr30k(tmp_path)
    for img in IMGS30K[:3]:
        (folder / "flickr30k_images" / img).unlink()
    with pytest.warns(UserWarning, match="3 captioned image") as record:
        ds = load_flickr30k(folder)
    assert len(record) == 1 and "9 captions" in str(record[0].message)
    assert check_splits(ds) == set(IMGS30K[3:])


def test_flickr30k_karpathy_splits(tmp_path):
    folder = make_flickr30k(tmp_path)
    split_of = ["train", "restval", "val", "test"]
    entries = [{"filename": img, "split": split_of[i % 4], "sentences": []} for i, img in enumerate(IMGS30K)]
    entries.append({"filename": "not_captioned.jpg", "split": "train"})
    (folder / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    with pytest.warns(UserWarning, match="no captions"):
        ds = load_flickr30k(folder)
    assert ds.splits["train"] == sorted(IMGS30K[0::4] + IMGS30K[1::4])
    assert ds.splits["val"] == IMGS30K[2::4]
    assert ds.splits["test"] == IMGS30K[3::4]


def test_flickr30k_no_valid_rows(tmp_path):
    (tmp_path / "results.csv").write_text("image_name| comment_number| comment\n\n")
    with pytest.raises(ValueError, match="no valid caption rows"):
        load_flickr30k(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_flickr30k(tmp_path / "elsewhere")


# -- COCO ------------------------------------------------------------------------


def make_coco(root, split_name="val2014", n=9, missing=()):
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True)
    images = [{"id": 100 + i, "file_name": f"COCO_{split_name}_{100 + i:012d}.jpg"} for i in range(n)]
    annotations = []
    for k in range(2):
        for img in images:
            annotations.append({"id": len(annotations), "image_id": img["id"], "caption": f" Caption {k} of {img['id']}.\n"})
    annotations.append({"id": 999, "image_id": 12345, "caption": "orphan"})
    path = ann_dir / f"captions_{split_name}.json"
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    touch_images(root / split_name, [im["file_name"] for im in images if im["id"] not in missing])
    return path, [im["file_name"] for im in images]


def test_coco_val_file(tmp_path):
    path, names = make_coco(tmp_path)
    with pytest.warns(UserWarning, match="1 annotation"):
        ds = load_coco(path)
    assert ds.name == "coco" and ds.image_dir == tmp_path / "val2014"
    assert ds.captions[names[0]] == ["Caption 0 of 100.", "Caption 1 of 100."]
    assert check_splits(ds) == set(names)
    assert ds.splits["train"] == [] and len(ds.splits["val"]) == 5 and len(ds.splits["test"]) == 4
    assert ds.image_path(names[0]).is_file()


def test_coco_train_file_and_overrides(tmp_path):
    path, names = make_coco(tmp_path, "train2017")
    with pytest.warns(UserWarning):
        ds = load_coco(path)
    assert ds.splits == {"train": sorted(names), "val": [], "test": []}
    with pytest.warns(UserWarning):
        ds = load_coco(path, split="test")
    assert ds.splits["test"] == sorted(names) and ds.splits["train"] == []
    with pytest.warns(UserWarning):
        ds = load_coco(path, split="val+test")
    assert len(ds.splits["val"]) == 5
    with pytest.raises(ValueError, match="split must be one of"):
        load_coco(path, split="dev")


def test_coco_explicit_image_dir_and_missing_images(tmp_path):
    path, names = make_coco(tmp_path, missing={100, 101})
    other = tmp_path / "imgs"
    touch_images(other, names)
    with pytest.warns(UserWarning):
        assert load_coco(path, image_dir=other).image_dir == other
    with pytest.warns(UserWarning) as record:
        ds = load_coco(path)
    assert sum("missing from" in str(w.message) for w in record) == 1
    assert names[0] not in ds.captions and len(ds.captions) == 7


def test_coco_unguessable_name_and_bad_json(tmp_path):
    p = tmp_path / "my_captions.json"
    p.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="image_dir"):
        load_coco(p)
    with pytest.raises(ValueError, match="split="):
        load_coco(p, image_dir=tmp_path)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not a COCO captions file"):
        load_coco(p, image_dir=tmp_path, split="train")
    with pytest.raises(FileNotFoundError):
        load_coco(tmp_path / "captions_val2014.json")


# -- load_dataset ------------------------------------------------------------------


def test_load_dataset_dispatch_and_auto(tmp_path):
    f8 = make_flickr8k_token(tmp_path / "f8k")
    f30 = make_flickr30k(tmp_path / "f30k")
    coco_json, _ = make_coco(tmp_path / "coco")
    assert load_dataset("flickr8k", f8).name == "flickr8k"
    assert load_dataset("auto", f8).name == "flickr8k"
    assert load_dataset("AUTO", f8 / "Flickr8k_text" / "Flickr8k.token.txt").name == "flickr8k"
    assert load_dataset("flickr30k", f30).name == "flickr30k"
    assert load_dataset("auto", f30 / "results.csv").name == "flickr30k"
    assert load_dataset("auto", f30).name == "flickr30k"
    with pytest.warns(UserWarning):
        assert load_dataset("coco", coco_json).name == "coco"
    with pytest.warns(UserWarning):
        assert load_dataset("auto", coco_json).name == "coco"


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="flickr8k, flickr30k, coco, auto"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="cannot tell"):
        load_dataset("auto", tmp_path)
    with pytest.raises(FileNotFoundError):
        load_dataset("auto", tmp_path / "missing")
