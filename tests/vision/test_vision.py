import gzip
import hashlib
import json
import random

import numpy as np
import pytest
import torch

from lmforge.data.tokenize import EOS, PAD, load_tokenizer
from lmforge.io.storage import InputError, write_jsonl_gz
from lmforge.model.checkpoint import load_model, save_model
from lmforge.model.olmo2 import ModelConfig, Olmo2
from lmforge.model.olmoe import MoEConfig, Olmoe
from lmforge.vision import evaluate as vlm_eval
from lmforge.vision import molmo as vision
from lmforge.vision import pixmo

from conftest import tokenizer_corpus, train_config

SCENES = {"train_images": 24, "eval_images": 6, "max_objects": 4, "image_size": 56}
ENCODER = {"d_vit": 32, "vit_layers": 2, "vit_heads": 2, "pool_heads": 2,
           "projector_hidden": 64}
WORDS = ("red green blue yellow circle square triangle shape shapes objects point points "
         "what color shape is the there are how many describe this image yes no top middle "
         "bottom left right center gray background at in and of on a x y alt")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes") / "scenes"
    pixmo.make_scenes(out, SCENES, seed=3)
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, scenes):
    texts = [WORDS] * 20 + [pixmo.example(kind, r)[0] + " " + pixmo.example(kind, r)[1]
                            for kind in pixmo.KINDS
                            for r in pixmo.read_records(scenes / f"{kind}.train.jsonl.gz",
                                                        kind)]
    folder = tokenizer_corpus(tmp_path_factory.mktemp("tok"), texts, vocab_size=400)
    return load_tokenizer(folder / "tok.json")


def _decoder(vocab: int, max_seq_len: int = 160) -> Olmo2:
    torch.manual_seed(0)
    return Olmo2(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2,
                             mlp_hidden=64, max_seq_len=max_seq_len))


def _patches(image: np.ndarray, patch: int) -> np.ndarray:
    rows, cols = image.shape[0] // patch, image.shape[1] // patch
    return image.reshape(rows, patch, cols, patch, 3).transpose(0, 2, 1, 3, 4)


def test_overlapping_crops_keep_their_centres_and_tile_the_image_exactly():
    cfg = vision.VisionConfig(crop_grid=[2, 3])
    image = np.random.default_rng(0).integers(0, 256, (56, 80, 3), dtype=np.uint8)
    crops = vision.multi_crop(image, cfg)
    assert crops.shape == (1 + 6, 32, 32, 3)
    # Neighbouring crops share 2 × margin patches.
    assert np.array_equal(crops[1][:, 24:], crops[2][:, :8])
    assert np.array_equal(crops[1][24:], crops[4][:8])
    # The lookup gathers every high-resolution patch from one crop, at the right place.
    height, width = (n * cfg.patch_size for n in cfg.high_res_patches)
    high = vision._resize_and_pad(image, height, width)
    rows, row_local = vision._crop_lookup(2, cfg.window_patches, cfg.overlap_margin)
    cols, col_local = vision._crop_lookup(3, cfg.window_patches, cfg.overlap_margin)
    crop_patches = np.stack([_patches(c, 4) for c in crops[1:]])
    gathered = crop_patches[rows[:, None] * 3 + cols[None, :], row_local[:, None],
                            col_local[None, :]]
    assert np.array_equal(gathered, _patches(high, 4))
    # Away from the border a patch comes from a crop's centre, never its margin.
    assert set(row_local[1:-1]) <= set(range(1, 7))


def test_attention_pooling_queries_with_the_window_mean():
    cfg = vision.VisionConfig(**ENCODER)
    connector = vision.Connector(cfg, 16)
    features = torch.randn(2, 7, 7, 2 * cfg.d_vit)
    assert connector(features).shape == (2, 4, 4, 16)  # odd grids are padded
    same = torch.randn(1, 1, 1, 2 * cfg.d_vit).expand(1, 2, 2, -1)
    # Identical patches: uniform attention, the pooled value is the projected patch.
    d = 2 * cfg.d_vit
    attention = connector.pool
    value = same[0, 0, 0] @ attention.in_proj_weight[2 * d:].T + attention.in_proj_bias[2 * d:]
    pooled = attention.out_proj(value)
    expected = connector.down_proj(torch.nn.functional.silu(connector.gate_proj(pooled))
                                   * connector.up_proj(pooled))
    assert torch.allclose(connector(same)[0, 0, 0], expected, atol=1e-5)


def test_image_tokens_are_framed_and_rows_end_with_a_column_token():
    model = vision.Molmo(vision.VisionConfig(**ENCODER), _decoder(64))
    images = torch.randint(0, 256, (3, 5, 32, 32, 3), dtype=torch.uint8)
    tokens = model.image_embeddings(images)
    assert tokens.shape == (3, model.vision_cfg.n_image_tokens, 32) and tokens.shape[1] == 80
    start, end, column = model.image_special
    # Global view: start, 4 rows of 4 pooled patches + <im_col>, end; then the 7 × 7 view.
    for offset, side in ((0, 4), (22, 7)):
        assert torch.equal(tokens[0, offset], start)
        for row in range(side):
            assert torch.equal(tokens[0, offset + (row + 1) * (side + 1)], column)
        assert torch.equal(tokens[0, offset + 1 + side * (side + 1)], end)
    # Images are not mixed up across the batch.
    alone = model.image_embeddings(images[1:2])
    assert torch.allclose(alone[0], tokens[1], atol=1e-5)


@pytest.mark.parametrize("architecture", ["olmo2", "olmoe"])
def test_the_decoder_takes_per_row_input_embeddings_before_the_tokens(architecture):
    torch.manual_seed(0)
    decoder = _decoder(50) if architecture == "olmo2" else Olmoe(MoEConfig(
        vocab_size=50, d_model=32, n_layers=1, n_heads=2, mlp_hidden=32, n_experts=4,
        top_k=2, max_seq_len=64))
    first, rest = torch.randint(0, 50, (3, 4)), torch.randint(0, 50, (3, 6))
    prefix = decoder.model.embed_tokens(first)  # batch × 4 × d: each row its own
    whole = decoder(torch.cat([first, rest], 1))
    assert torch.allclose(decoder(rest, prefix=prefix), whole[:, 4:], atol=1e-5)


def test_a_vlm_checkpoint_is_the_decoder_plus_the_vision_tower(tmp_path):
    model = vision.build_vlm(ENCODER, _decoder(64, 96), 160, seed=1)
    assert model.cfg.max_seq_len == 160
    save_model(model, tmp_path)
    loaded = vision.load_vlm(tmp_path)
    ids = torch.randint(0, 64, (2, 5))
    images = torch.randint(0, 256, (2, 5, 32, 32, 3), dtype=torch.uint8)
    assert torch.equal(loaded(ids, images), model(ids, images))
    assert isinstance(load_model(tmp_path), Olmo2)  # the LM alone, e.g. for evaluation
    with pytest.raises(InputError, match="not a vision-language checkpoint"):
        save_model(_decoder(64), tmp_path / "lm")
        vision.load_vlm(tmp_path / "lm")


def test_molmo_point_format_round_trips_and_malformed_points_are_dropped():
    one = pixmo.format_points([{"x": 12.25, "y": 80.0}], "red circle")
    assert one == '<point x="12.2" y="80.0" alt="red circle">red circle</point>'
    several = pixmo.format_points([{"x": 1, "y": 2}, {"x": 30.5, "y": 99.9}], "circles")
    assert several.startswith('<points x1="1.0" y1="2.0" x2="30.5" y2="99.9" alt="circles">')
    assert pixmo.parse_points(several + " and " + one) == [(1.0, 2.0), (30.5, 99.9),
                                                           (12.2, 80.0)]
    assert pixmo.parse_points('<point x="120.0" y="5.0">') == []  # outside 0-100
    assert pixmo.parse_points('<point x="1.2.3" y="5">') == []
    assert pixmo.parse_points("no point here") == []
    assert pixmo.parse_count("There are three.") == 3 and pixmo.parse_count("2") == 2
    assert pixmo.parse_count("none") is None


def test_scenes_are_deterministic_and_their_records_are_right(tmp_path, scenes):
    pixmo.make_scenes(tmp_path / "again", SCENES, seed=3)
    for path in sorted(scenes.rglob("*.*")):
        other = tmp_path / "again" / path.relative_to(scenes)
        assert hashlib.sha256(path.read_bytes()).digest() == \
            hashlib.sha256(other.read_bytes()).digest(), path.name
    captions = pixmo.read_records(scenes / "pixmo_cap.train.jsonl.gz", "pixmo_cap")
    points = pixmo.read_records(scenes / "pixmo_points.train.jsonl.gz", "pixmo_points")
    counts = pixmo.read_records(scenes / "pixmo_count.train.jsonl.gz", "pixmo_count")
    for cap, point, count in zip(captions, points, counts):
        image = pixmo.load_image(cap["image_file"])
        assert image.shape == (56, 56, 3)
        for obj in cap["objects"]:
            assert f"{obj['color']} {obj['shape']} {pixmo.where(obj)}" in cap["caption"]
            # The object's colour is drawn at its centre.
            x, y = (int(obj[a] * 56 / 100) for a in "xy")
            assert tuple(image[y, x]) == pixmo.COLORS[obj["color"]]
        assert count["count"] == sum(f"{o['color']} shapes" == count["label"]
                                     for o in cap["objects"])
        assert all(vlm_eval.point_hits(pixmo.format_points([p], point["label"]), point) == 1
                   for p in point["points"])


def test_pixmo_readers_check_records_and_refuse_remote_images(tmp_path, scenes):
    image = next((scenes / "images").iterdir())
    good = {"image_url": f"file://{image}", "caption": "a red circle"}
    write_jsonl_gz(tmp_path / "cap.jsonl.gz", [good, {"image": str(image), "caption": "x"}])
    assert len(pixmo.read_records(tmp_path / "cap.jsonl.gz", "pixmo_cap")) == 2
    cases = {
        "needs": [{"image": str(image)}],
        "remote image": [{"image_url": "https://example.com/a.jpg", "caption": "x"}],
        "does not exist": [{"image": "missing.png", "caption": "x"}],
        "0-100": [{"image": str(image), "label": "dog", "points": [{"x": 150, "y": 3}]}],
    }
    for message, rows in cases.items():
        write_jsonl_gz(tmp_path / "bad.jsonl.gz", rows)
        kind = "pixmo_points" if message == "0-100" else "pixmo_cap"
        with pytest.raises(InputError, match=message):
            pixmo.read_records(tmp_path / "bad.jsonl.gz", kind)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="not a readable image"):
        pixmo.load_image(tmp_path / "broken.png")
    with gzip.open(tmp_path / "json.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(good) + "\n{broken\n")
    with pytest.raises(InputError):
        pixmo.read_records(tmp_path / "json.jsonl.gz", "pixmo_cap")


def test_the_mixture_samples_by_square_root_of_size_the_same_on_any_world_size(scenes,
                                                                              tokenizer):
    assert vision.sqrt_mixture({"a": 100, "b": 400}) == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    cfg = vision.VisionConfig(**ENCODER)
    sets = [vision.ExampleSet(pixmo.read_records(scenes / f"{k}.train.jsonl.gz", k), k,
                              tokenizer, EOS, cfg, 100) for k in ("pixmo_cap", "vqa")]
    sets[1].rows = sets[1].rows[:6]  # 24 vs 6 examples: drawn 2 : 1
    pad = tokenizer.token_to_id(PAD)
    one = vision.mixture_batches(sets, train_config(micro_batch_size=8, grad_accum=1), 0, pad)
    two = [vision.mixture_batches(sets, train_config(micro_batch_size=4, grad_accum=1), 0, pad,
                                  rank=r, world_size=2) for r in (0, 1)]
    for step in range(3):
        images, inputs, labels = one(step, 0)
        halves = [b(step, 0) for b in two]
        assert torch.equal(images, torch.cat([halves[0][0], halves[1][0]]))
        assert images.shape == (8, 5, 32, 32, 3) and (labels != -100).any(1).all()
    draws = vision.MixtureDraws(0, np.array([2 / 3, 1 / 3]))
    taken = [draws.draw(i)[0] for i in range(3000)]
    assert abs(taken.count(0) / 3000 - 2 / 3) < 0.03
    # Each dataset walks through its own examples: no repeat before an epoch ends.
    vqa_positions = [draws.draw(i)[1] for i in range(3000) if taken[i] == 1]
    assert vqa_positions == list(range(len(vqa_positions)))
    text_only = vision.mixture_batches(sets, train_config(micro_batch_size=8, grad_accum=1), 0, pad,
                                       with_images=False)
    assert all(torch.equal(a, b) for a, b in zip(text_only(1, 0), one(1, 0)[1:]))


def test_scores_of_captions_points_counts_and_answers():
    assert vlm_eval.token_f1("a red circle", "a red circle") == 1.0
    assert vlm_eval.token_f1("a blue square", "a red circle") == pytest.approx(1 / 3)
    refs = ["one shape: a red circle at the top left", "two shapes: a blue square in the "
            "center and a green triangle at the bottom right", "one shape: a yellow square"]
    cider = vlm_eval.cider(refs[:1] + ["a", "one shape"], refs)
    assert cider[0] > cider[2] > cider[1] == 0
    obj = {"shape": "square", "color": "red", "x": 50.0, "y": 50.0, "r": 10.0, "cell": 4}
    record = {"label": "red square", "objects": [obj], "count": 1, "image": "x"}
    assert vlm_eval.point_hits('<point x="52.0" y="45.0" alt="red square">', record) == 1
    assert vlm_eval.point_hits('<point x="70.0" y="50.0" alt="red square">', record) == 0
    assert vlm_eval.point_hits("no point", record) == 0
    # A random point hits with the target's share of the image: a square of side 17% (plus
    # the drawn edge pixels at 200 × 200).
    assert vlm_eval.random_scores("pixmo_points", [record], 4)[0] == pytest.approx(0.175 ** 2,
                                                                                    rel=0.01)
    assert vlm_eval.scores("pixmo_count", ["1", "two"], [record, record])["accuracy"].tolist() \
        == [1.0, 0.0]
    vqa = [{"question": "What color is the square?", "answer": "red"}]
    assert vlm_eval.scores("vqa", ["Red."], vqa)["accuracy"][0] == 1.0
    assert vlm_eval.random_scores("vqa", vqa, 4)[0] == 0.25


# (kind, metric, VLM at least, text-only at most): VQA and captions, the two effects that held
# across seeds in `make experiments`. Four colours: the text-only model can only learn the
# prior (measured: VLM 1.0 on VQA for seeds 0-3 after 100 steps, text-only 0.28-0.38); a
# caption "a <colour> image" guessed without the image shares 2 of its 3 words (measured with
# seed 0: VLM token F1 1.0, text-only 0.76).
LEARNABLE = [("vqa", "accuracy", 0.9, 0.45), ("pixmo_cap", "token_f1", 0.95, 0.85)]


@pytest.mark.slow
@pytest.mark.parametrize("kind, metric, vlm_floor, text_ceiling", LEARNABLE)
def test_the_image_path_carries_what_text_alone_cannot(kind, metric, vlm_floor, text_ceiling,
                                                        tmp_path, tokenizer):
    """Images of one colour, asked for it or described: the VLM learns to answer, the same
    LM trained on the same rows without the image stays at the prior."""
    rng = random.Random(0)
    (tmp_path / "images").mkdir()
    records = []
    for index in range(96):
        color = rng.choice(list(pixmo.COLORS))
        path = tmp_path / "images" / f"{index}.png"
        pixmo.Image.new("RGB", (56, 56), pixmo.COLORS[color]).save(path)
        records.append({"image": str(path), "image_file": str(path),
                        "question": "What color is the image?", "answer": color,
                        "caption": f"a {color} image"})
    cfg = vision.VisionConfig(**ENCODER)
    train, heldout = records[:64], records[64:]
    examples = vision.ExampleSet(train, kind, tokenizer, EOS, cfg, 40)
    pad = tokenizer.token_to_id(PAD)
    trained = {}
    for name in ("vlm", "text_only"):
        decoder = _decoder(tokenizer.get_vocab_size(), 128)
        model = vision.Molmo(cfg, decoder) if name == "vlm" else decoder
        batches = vision.mixture_batches([examples], train_config(micro_batch_size=16), 0, pad,
                                         with_images=name == "vlm")
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for step in range(100):
            *images, inputs, labels = batches(step, 0)
            logits = model(inputs, *images)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                     ignore_index=-100)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        trained[name] = model
    # Scored on images it never trained on.
    prompts = [pixmo.example(kind, r)[0] for r in heldout]
    images = [pixmo.load_image(r["image_file"]) for r in heldout]
    score = {name: vlm_eval.scores(kind, vlm_eval.generate(
        model, tokenizer, prompts, images, EOS, 6), heldout)[metric].mean()
        for name, model in trained.items()}
    assert score["vlm"] >= vlm_floor and score["text_only"] <= text_ceiling, score
