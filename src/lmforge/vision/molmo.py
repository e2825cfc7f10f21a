"""Molmo (Deitke et al. 2024) at toy scale: a ViT image encoder, multi-crop preprocessing, a
connector and our OLMo 2 / OLMoE decoder as the language model.

- Preprocessing: one low-resolution global view (the image resized into one crop) plus a grid
  of overlapping high-resolution crops. Neighbouring crops overlap by `overlap_margin` patches
  on each side; after encoding, each crop keeps only its centre (and its margins at the
  image's border), so the crops' patches tile the image exactly, as in Molmo. Molmo picks the
  grid per image (up to `max_crops`); here every image uses the configured `crop_grid`
  (resized with padding, aspect ratio kept) so that a batch's image tokens line up.
- ViT: patch embedding, learned positions, pre-norm transformer layers (torch's encoder layer,
  CLIP's shape); trained from scratch with the rest (no vision weights ship offline).
- Connector: the features of two ViT layers concatenated, 2 × 2 patch windows pooled by
  multi-head attention whose query is the window's mean, then a SwiGLU MLP into the LM's width.
- Image tokens: `<im_start>` rows `<im_end>` for each view, a `<im_col>` after every row of
  pooled patches (learned embeddings, not vocabulary entries), placed before the text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lmforge.io.storage import InputError
from lmforge.train.config import TrainConfig

VISION_CONFIG = "vision_config.json"
VISION_WEIGHTS = "vision.safetensors"


@dataclass
class VisionConfig:
    crop_size: int = 32  # pixels of one ViT input
    patch_size: int = 4
    overlap_margin: int = 1  # patches shared with a neighbouring crop on each side
    crop_grid: list[int] = field(default_factory=lambda: [2, 2])  # rows, columns
    d_vit: int = 96
    vit_layers: int = 3
    vit_heads: int = 4
    # The two layers whose features are concatenated (Molmo: the 3rd- and 10th-last of CLIP).
    feature_layers: list[int] = field(default_factory=lambda: [-1, -2])
    pool_heads: int = 4
    projector_hidden: int = 384

    def __post_init__(self):
        if self.crop_size % self.patch_size:
            raise ValueError(f"crop_size {self.crop_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.window_patches < 1:
            raise ValueError(f"overlap_margin {self.overlap_margin} leaves no crop centre")
        if len(self.crop_grid) != 2 or min(self.crop_grid) < 1:
            raise ValueError(f"crop_grid must be [rows, columns], got {self.crop_grid}")
        if len(self.feature_layers) != 2 or not all(
                -self.vit_layers <= i < self.vit_layers for i in self.feature_layers):
            raise ValueError(f"feature_layers {self.feature_layers} must name two of the "
                             f"{self.vit_layers} ViT layers")

    @property
    def patches_per_side(self) -> int:
        return self.crop_size // self.patch_size

    @property
    def window_patches(self) -> int:
        """Patches of a crop that no neighbour covers."""
        return self.patches_per_side - 2 * self.overlap_margin

    @property
    def high_res_patches(self) -> tuple[int, int]:
        rows, columns = self.crop_grid
        margins = 2 * self.overlap_margin
        return rows * self.window_patches + margins, columns * self.window_patches + margins

    @property
    def n_image_tokens(self) -> int:
        """Start, pooled rows each closed by a column token, end; for both views."""
        def view(height, width):
            pooled_h, pooled_w = (height + 1) // 2, (width + 1) // 2
            return 2 + pooled_h * (pooled_w + 1)
        side = self.patches_per_side
        return view(side, side) + view(*self.high_res_patches)


def _resize_and_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resized to fit height × width with its aspect ratio, centred on a gray canvas."""
    scale = min(height / image.shape[0], width / image.shape[1])
    new_h = max(1, round(image.shape[0] * scale))
    new_w = max(1, round(image.shape[1] * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    canvas = np.full((height, width, 3), 128, dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def multi_crop(image: np.ndarray, cfg: VisionConfig) -> np.ndarray:
    """(1 + rows × columns) × crop × crop × 3 uint8: the global view, then the overlapping
    high-resolution crops in reading order."""
    size, patch = cfg.crop_size, cfg.patch_size
    height, width = (n * patch for n in cfg.high_res_patches)
    high = _resize_and_pad(image, height, width)
    stride = cfg.window_patches * patch
    crops = [_resize_and_pad(image, size, size)]
    for row in range(cfg.crop_grid[0]):
        for column in range(cfg.crop_grid[1]):
            crops.append(high[row * stride:row * stride + size,
                              column * stride:column * stride + size])
    return np.stack(crops)


def _crop_lookup(n_crops: int, window: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """For each patch index along one axis of the high-resolution image: the crop whose
    centre covers it (border margins: the outermost crop) and its index inside that crop."""
    index = np.arange(n_crops * window + 2 * margin)
    crop = np.clip((index - margin) // window, 0, n_crops - 1)
    return crop, index - crop * window


class ViT(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.patch_embed = nn.Linear(3 * cfg.patch_size ** 2, cfg.d_vit)
        self.positions = nn.Parameter(torch.randn(cfg.patches_per_side ** 2, cfg.d_vit) * 0.02)
        self.pre_norm = nn.LayerNorm(cfg.d_vit)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.d_vit, cfg.vit_heads, 4 * cfg.d_vit, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.vit_layers))

    def forward(self, crops: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's patch features of crops (n × size × size × 3, uint8)."""
        n, size = crops.shape[0], crops.shape[1]
        side = size // self.patch_size
        pixels = (crops.to(self.patch_embed.weight.dtype) / 127.5) - 1.0
        patches = (pixels.view(n, side, self.patch_size, side, self.patch_size, 3)
                   .permute(0, 1, 3, 2, 4, 5).reshape(n, side * side, -1))
        x = self.pre_norm(self.patch_embed(patches) + self.positions)
        hidden = []
        for layer in self.layers:
            x = layer(x)
            hidden.append(x)
        return hidden


class Connector(nn.Module):
    def __init__(self, cfg: VisionConfig, d_model: int):
        super().__init__()
        d_in = 2 * cfg.d_vit
        self.pool = nn.MultiheadAttention(d_in, cfg.pool_heads, batch_first=True)
        self.gate_proj = nn.Linear(d_in, cfg.projector_hidden, bias=False)
        self.up_proj = nn.Linear(d_in, cfg.projector_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.projector_hidden, d_model, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """batch × h × w × d_in patch features → batch × ⌈h/2⌉ × ⌈w/2⌉ × d_model."""
        batch, height, width, dim = features.shape
        features = F.pad(features, (0, 0, 0, width % 2, 0, height % 2))
        h2, w2 = features.shape[1] // 2, features.shape[2] // 2
        windows = (features.view(batch, h2, 2, w2, 2, dim).permute(0, 1, 3, 2, 4, 5)
                   .reshape(batch * h2 * w2, 4, dim))
        query = windows.mean(1, keepdim=True)
        pooled = self.pool(query, windows, windows, need_weights=False)[0][:, 0]
        projected = self.down_proj(F.silu(self.gate_proj(pooled)) * self.up_proj(pooled))
        return projected.view(batch, h2, w2, -1)


class Molmo(nn.Module):
    """Image encoder + connector + decoder; the image tokens go before the text as input
    embeddings (the decoder's `prefix`), logits come for the text positions only."""

    def __init__(self, vision_cfg: VisionConfig, decoder: nn.Module):
        super().__init__()
        self.vision_cfg = vision_cfg
        self.decoder = decoder
        self.vit = ViT(vision_cfg)
        self.connector = Connector(vision_cfg, decoder.cfg.d_model)
        # <im_start>, <im_end>, <im_col>: new embeddings beside the vocabulary, as in Molmo.
        self.image_special = nn.Parameter(torch.randn(3, decoder.cfg.d_model)
                                          * decoder.cfg.init_std)
        cfg = vision_cfg
        rows, row_local = _crop_lookup(cfg.crop_grid[0], cfg.window_patches, cfg.overlap_margin)
        cols, col_local = _crop_lookup(cfg.crop_grid[1], cfg.window_patches, cfg.overlap_margin)
        self._tile = (torch.as_tensor(1 + rows[:, None] * cfg.crop_grid[1] + cols[None, :]),
                      torch.as_tensor(row_local[:, None]), torch.as_tensor(col_local[None, :]))

    @property
    def cfg(self):
        return self.decoder.cfg

    def _view_tokens(self, pooled: torch.Tensor) -> torch.Tensor:
        batch, _, width, dim = pooled.shape
        start, end, column = (self.image_special[i].to(pooled.dtype) for i in range(3))
        rows = torch.cat([pooled, column.expand(batch, pooled.shape[1], 1, dim)], 2)
        return torch.cat([start.expand(batch, 1, dim), rows.reshape(batch, -1, dim),
                          end.expand(batch, 1, dim)], 1)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """batch × (1 + crops) × size × size × 3 uint8 → batch × n_image_tokens × d_model."""
        batch, n_views, size = images.shape[:3]
        side = self.vision_cfg.patches_per_side
        hidden = self.vit(images.reshape(batch * n_views, size, size, 3))
        features = torch.cat([hidden[i] for i in self.vision_cfg.feature_layers], -1)
        features = features.view(batch, n_views, side, side, -1)
        crop, row, column = self._tile
        high_res = features[:, crop, row, column]  # the crops' centres tile the image
        return torch.cat([self._view_tokens(self.connector(features[:, 0])),
                          self._view_tokens(self.connector(high_res))], 1)

    def forward(self, input_ids: torch.Tensor, images: torch.Tensor, return_aux: bool = False):
        """Logits of the text positions; `return_aux` (an OLMoE decoder): also its router
        losses."""
        prefix = self.image_embeddings(images).to(self.decoder.lm_head.weight.dtype)
        if return_aux:
            return self.decoder(input_ids, return_aux=True, prefix=prefix)
        return self.decoder(input_ids, prefix=prefix)

    def vision_parameters(self) -> int:
        return sum(p.numel() for name, p in self.named_parameters()
                   if not name.startswith("decoder."))

    def num_params(self, non_embedding: bool = True) -> int:
        return self.decoder.num_params(non_embedding) + self.vision_parameters()

    def flops_per_token(self) -> float:
        """The decoder's per text token, plus 6 × the vision parameters for each image's
        patches spread over the text positions a row can hold."""
        cfg = self.vision_cfg
        patches = (1 + cfg.crop_grid[0] * cfg.crop_grid[1]) * cfg.patches_per_side ** 2
        return self.decoder.flops_per_token() + 6 * self.vision_parameters() * patches / max(
            self.cfg.max_seq_len - cfg.n_image_tokens, 1)

    def extra_files(self) -> dict[str, dict]:
        """What a checkpoint holds beside the decoder (lmforge.model.checkpoint.save_model)."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("decoder.")}
        return {VISION_WEIGHTS: state}

    def extra_configs(self) -> dict[str, dict]:
        return {VISION_CONFIG: asdict(self.vision_cfg)}


def objective(engine, batch: tuple, cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float], int]:
    """Cross-entropy (and z-loss) on the answer tokens of (images, inputs, labels) rows; an
    OLMoE decoder adds its router losses."""
    from lmforge.model.olmo2 import cross_entropy_and_z_loss
    from lmforge.model.olmoe import Olmoe

    images, inputs, labels = (t.to(engine.device) for t in batch)
    if isinstance(engine.module.decoder, Olmoe):
        logits, aux = engine(inputs, images, return_aux=True)
    else:
        logits, aux = engine(inputs, images), {}
    ce, log_partition_sq = cross_entropy_and_z_loss(logits, labels)
    z_loss = cfg.z_loss * log_partition_sq
    return ce + z_loss + sum(aux.values()), {
        "loss": ce.item(), "z_loss": z_loss.item(), **{k: v.item() for k, v in aux.items()}
    }, int((labels != -100).sum())


def with_context(decoder: nn.Module, max_seq_len: int) -> nn.Module:
    """The decoder allowing `max_seq_len` positions (image tokens + text); RoPE has no
    weights, so only its tables grow."""
    from lmforge.model.olmo2 import rope_cache

    if max_seq_len > decoder.cfg.max_seq_len:
        decoder.cfg.max_seq_len = max_seq_len
        cos, sin = rope_cache(max_seq_len, decoder.cfg.d_model // decoder.cfg.n_heads,
                              decoder.cfg.rope_theta)
        decoder.rope_cos, decoder.rope_sin = cos, sin
    return decoder


def build_vlm(vision: dict, decoder: nn.Module, max_seq_len: int, seed: int) -> Molmo:
    torch.manual_seed(seed)
    return Molmo(VisionConfig(**vision), with_context(decoder, max_seq_len))


def load_vlm(directory: str | Path) -> Molmo:
    from safetensors.torch import load_file

    from lmforge.model.checkpoint import load_model

    directory = Path(directory)
    if not (directory / VISION_CONFIG).is_file():
        raise InputError(f"{directory}: not a vision-language checkpoint (no {VISION_CONFIG})")
    model = Molmo(VisionConfig(**json.loads((directory / VISION_CONFIG).read_text())),
                  load_model(directory))
    missing, unexpected = model.load_state_dict(load_file(str(directory / VISION_WEIGHTS)),
                                                strict=False)
    if unexpected or any(not name.startswith("decoder.") for name in missing):
        raise InputError(f"{directory}: vision weights do not match its config "
                         f"(missing {missing}, unexpected {unexpected})")
    return model


# Rows: the image's crops, then chat-formatted prompt and answer; loss on the answer only.
def encode_example(tokenizer, prompt: str, answer: str | None, eos: str) -> tuple[list, list]:
    """(context ids, answer ids): the user turn and the assistant marker, then the answer
    closed by end-of-text (none for generation)."""
    from lmforge.posttrain import chat

    context, _ = chat.encode(tokenizer, [{"role": "user", "content": prompt}], eos,
                             add_generation_prompt=True)
    if answer is None:
        return context, []
    return context, tokenizer.encode(answer + eos, add_special_tokens=False).ids


class ExampleSet:
    """A dataset's examples: each image's crops (uint8, made once; `crops` may be shared by
    the datasets of one set of images) and token ids."""

    def __init__(self, records: list[dict], kind: str, tokenizer, eos: str,
                 cfg: VisionConfig, max_text_tokens: int, crops: dict | None = None):
        from lmforge.vision.pixmo import example, load_image

        self.kind = kind
        crops = {} if crops is None else crops
        self.rows, too_long = [], 0
        for record in records:
            prompt, answer = example(kind, record)
            context, target = encode_example(tokenizer, prompt, answer, eos)
            if len(context) + len(target) > max_text_tokens:
                too_long += 1
                continue
            file = record["image_file"]
            if file not in crops:
                crops[file] = multi_crop(load_image(file), cfg)
            self.rows.append((file, context, target))
        if not self.rows:
            raise InputError(f"{kind}: every example is longer than {max_text_tokens} text "
                             "tokens")
        self.too_long = too_long
        self.crops = crops

    def __len__(self) -> int:
        return len(self.rows)


def sqrt_mixture(sizes: dict[str, int]) -> dict[str, float]:
    """Molmo's fine-tuning mixture: each dataset sampled in proportion to √(its size)."""
    roots = {name: np.sqrt(n) for name, n in sizes.items()}
    total = sum(roots.values())
    return {name: float(root / total) for name, root in roots.items()}


def mixture_batches(datasets: list[ExampleSet], cfg: TrainConfig | Mapping, seed: int, pad: int,
                    with_images: bool = True, rank: int = 0, world_size: int = 1
                    ) -> Callable[[int, int], tuple]:
    """(images, inputs, labels) micro-batches — (inputs, labels) without images, the
    text-only baseline — each instance from a dataset drawn by the √size mixture, in that
    dataset's own seeded order per epoch; a step's global batch is split across ranks, and
    instance i is the same for any world size."""
    cfg = TrainConfig.of(cfg)
    from lmforge.posttrain.sft import answer_rows
    from lmforge.train.data import epoch_order

    weights = sqrt_mixture({str(i): len(d) for i, d in enumerate(datasets)})
    draws = MixtureDraws(seed, np.array(list(weights.values())))
    orders = [epoch_order(len(d), seed + i) for i, d in enumerate(datasets)]
    micro = cfg.micro_batch_size

    def batch(step: int, micro_step: int) -> tuple:
        start = cfg.micro_batch_start(step, micro_step, rank, world_size)
        rows = []
        for index in range(start, start + micro):
            which, position = draws.draw(index)
            file, context, target = datasets[which].rows[orders[which](position, 1)[0]]
            rows.append((datasets[which].crops[file], context, target))
        inputs, labels = answer_rows([(c, t) for _, c, t in rows], pad)
        if not with_images:
            return inputs, labels
        return torch.from_numpy(np.stack([r[0] for r in rows])), inputs, labels

    return batch


class MixtureDraws:
    """Which dataset instance i comes from (a draw seeded by (seed, i)) and how many of that
    dataset's examples came before it; counted once up to the largest i asked."""

    def __init__(self, seed: int, probabilities: np.ndarray):
        self.seed, self.probabilities = seed, probabilities
        self.choices: list[tuple[int, int]] = []
        self.seen = np.zeros(len(probabilities), dtype=np.int64)

    def draw(self, index: int) -> tuple[int, int]:
        while len(self.choices) <= index:
            rng = np.random.default_rng([self.seed, len(self.choices)])
            which = int(rng.choice(len(self.probabilities), p=self.probabilities))
            self.choices.append((which, int(self.seen[which])))
            self.seen[which] += 1
        return self.choices[index]
