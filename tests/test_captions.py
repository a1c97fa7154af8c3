"""Caption corpora: the formats researchers bring and the generated shapes."""

import hashlib
import json

import pytest
from PIL import Image

from seq2seq.data.captions import captions_table, coco_json, hash_split, karpathy_json, shapes_corpus, split_examples
from seq2seq.data.corpora import CorpusError


def test_karpathy_split_file(tmp_path):
    data = {"images": [
        {"filename": "a.jpg", "filepath": "train2014", "split": "train",
         "sentences": [{"raw": "A dog.", "tokens": []}]},
        {"filename": "b.jpg", "split": "restval", "sentences": [{"raw": "A cat."}, {"raw": " "}]},
        {"filename": "c.jpg", "split": "val", "sentences": [{"raw": "A bird."}]},
        {"filename": "d.jpg", "split": "test", "sentences": [{"raw": "A fish."}, {"raw": "Fish."}]},
    ]}
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(data))
    corpus = karpathy_json(tmp_path / "dataset_flickr8k.json", tmp_path / "images")
    assert [ex.image for ex in corpus.train] == [tmp_path / "images/train2014/a.jpg", tmp_path / "images/b.jpg"]
    assert corpus.train[1].captions == ["A cat."] and corpus.test[0].captions == ["A fish.", "Fish."]
    assert len(corpus.valid) == 1


def test_coco_captions_file(tmp_path):
    data = {"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}],
            "annotations": [{"image_id": 1, "caption": "one"}, {"image_id": 2, "caption": "two"},
                            {"image_id": 1, "caption": "uno"}]}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(data))
    examples = coco_json(tmp_path / "captions_val2014.json", tmp_path)
    assert [(e.image.name, e.captions) for e in examples] == [("x.jpg", ["one", "uno"]), ("y.jpg", ["two"])]


def test_captions_table_tsv_and_csv(tmp_path):
    (tmp_path / "captions.tsv").write_text("image\tcaption\na.png\tfirst\na.png\tsecond\nb.png\tthird\n")
    examples = captions_table(tmp_path / "captions.tsv")
    assert [(e.image, e.captions) for e in examples] == [(tmp_path / "a.png", ["first", "second"]),
                                                         (tmp_path / "b.png", ["third"])]
    (tmp_path / "captions.csv").write_text('a.png,"a caption, with a comma"\n')
    assert captions_table(tmp_path / "captions.csv")[0].captions == ["a caption, with a comma"]
    (tmp_path / "excel.csv").write_text("\ufeffimage,caption\na.png,first\n", encoding="utf-8")  # "CSV UTF-8"
    assert [(e.image, e.captions) for e in captions_table(tmp_path / "excel.csv")] == [(tmp_path / "a.png", ["first"])]
    (tmp_path / "bad.tsv").write_text("only-one-column\n")
    with pytest.raises(CorpusError, match="bad.tsv:1"):
        captions_table(tmp_path / "bad.tsv")
    with pytest.raises(CorpusError, match="is not valid JSON"):
        (tmp_path / "broken.json").write_text("{")
        coco_json(tmp_path / "broken.json", tmp_path)


def test_hash_split_rule():
    for key in ["grinning face", "man running: dark skin tone", "a.png"]:
        bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10
        assert hash_split(key) == ("test" if bucket == 0 else "valid" if bucket == 1 else "train")


def test_shapes_are_deterministic_and_described(tmp_path):
    a = shapes_corpus(tmp_path / "a", n=40, seed=3, size=48)
    b = shapes_corpus(tmp_path / "b", n=40, seed=3, size=48)
    caps = [ex.captions for ex in a.train + a.valid + a.test]
    assert caps == [ex.captions for ex in b.train + b.valid + b.test]
    assert all(c[0].startswith("a ") for c in caps)
    assert any(" above " in c[0] for c in caps) and any(" left of " in c[0] for c in caps)
    first = (a.train + a.valid + a.test)[0]
    image = Image.open(first.image)
    assert image.size == (48, 48) and len(image.getcolors(10_000)) > 1
    other = shapes_corpus(tmp_path / "c", n=40, seed=4, size=48)
    assert caps != [ex.captions for ex in other.train + other.valid + other.test]


def test_shapes_place_partners_inside_the_canvas(tmp_path):
    corpus = shapes_corpus(tmp_path, n=200, seed=0, size=30)
    for ex in corpus.train + corpus.valid + corpus.test:
        img = Image.open(ex.image).convert("RGB")
        coloured = sum(1 for _, c in img.getcolors(10_000) if c != (255, 255, 255))
        assert coloured >= 1


def test_split_examples_by_key(tmp_path):
    from seq2seq.data.captions import CaptionExample

    examples = [CaptionExample(tmp_path / f"{i}.png", [f"cap {i}"], f"key {i}") for i in range(200)]
    corpus = split_examples("demo", examples)
    assert len(corpus.train) + len(corpus.valid) + len(corpus.test) == 200
    assert all(hash_split(ex.key) == "test" for ex in corpus.test)


def test_a_caption_table_keeps_quoted_captions_that_span_lines(tmp_path):
    from seq2seq.data.captions import captions_table

    (tmp_path / "c.csv").write_text('image,caption\na.png,"a dog\non a sofa"\nb.png,a cat\n', encoding="utf-8")
    examples = captions_table(tmp_path / "c.csv")
    assert [ex.captions for ex in examples] == [["a dog on a sofa"], ["a cat"]]


def test_a_caption_table_reads_its_images_from_captions_images(tmp_path):
    """captions.images names the folder a table's image paths are relative to, as for the JSON formats."""
    from seq2seq.config import load_config
    from seq2seq.tasks.captioning import load_captions

    (tmp_path / "pictures").mkdir()
    for i in range(40):
        (tmp_path / "pictures" / f"img{i}.png").write_bytes(b"")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "c.tsv").write_text("".join(f"img{i}.png\tpicture {i}\n" for i in range(40)))
    cfg = load_config(None, ["captions.corpus=table", f"captions.captions={tmp_path / 'tables' / 'c.tsv'}",
                             f"captions.images={tmp_path / 'pictures'}"])
    corpus = load_captions(cfg)
    every = [*corpus.train, *corpus.valid, *corpus.test]
    assert len(every) == 40 and all(ex.image.parent == tmp_path / "pictures" for ex in every)


def test_a_shapes_layout_drawn_twice_never_straddles_the_splits(tmp_path):
    """The generator has about 1,400 layouts, so 1,500 pictures repeat some: identical pictures
    share a split (the split hashes the layout, not the file name), and no test picture is one the
    model trained on."""
    corpus = shapes_corpus(tmp_path, n=1500, seed=0, size=24)
    train = {Image.open(ex.image).tobytes() for ex in corpus.train}
    assert corpus.test and not any(Image.open(ex.image).tobytes() in train for ex in corpus.test)
    assert len({ex.key for ex in corpus.test}) < len(corpus.test)  # repeats there are, each kept in one split
