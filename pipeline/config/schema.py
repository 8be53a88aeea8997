"""The schema: one frozen, strict pydantic model per ``params.yaml`` section, with its defaults and
bounds. Each default is spelled once, here; ``params.yaml`` spells every key (tests check both)."""

from __future__ import annotations

import itertools
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.config.checks import check_consistency
from pipeline.config.messages import ConfigError, error_message, plain, prepare_yaml_value


class _Section(BaseModel):
    """A section of the config: unknown keys refused, values immutable, no type coercion."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _from_yaml(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        return prepare_yaml_value(cls.model_fields[info.field_name].annotation, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars (tuples become lists), in schema order."""
        return plain(self.model_dump())


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


class DataConfig(_Section):
    # Which image source feeds the pipeline.
    source: Literal["fashion-mnist", "imagefolder", "synthetic"] = "fashion-mnist"
    # fashion-mnist: the folder holding the four IDX .gz files (Debian's dataset-fashion-mnist).
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    # imagefolder: train images as root/<class>/<image>; val likewise, or held out from root.
    root: str | None = None
    val_root: str | None = None
    val_fraction: float = Field(0.02, gt=0.0, lt=1.0)
    # Side of the square images the tokenizer sees (fashion-mnist is natively 28).
    image_size: int = Field(28, ge=8)
    # imagefolder: fail when more than this fraction of files cannot be used.
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    # Deterministic caps on the split sizes (null: everything). Synthetic data needs them set.
    max_train: int | None = Field(None, ge=1)
    max_val: int | None = Field(None, ge=1)
    # synthetic: number of classes and image channels.
    synthetic_classes: int = Field(10, ge=2)
    synthetic_channels: Literal[1, 3] = 1
    # Optional file mapping class folder names (e.g. WordNet ids) to readable names.
    class_names: str | None = None
    # Worker processes for decoding images (imagefolder).
    workers: int = Field(2, ge=0)


class TokenizerConfig(_Section):
    # train: fit a VQ-VAE on the train split; pretrained: load the MaskGIT VQGAN checkpoint.
    kind: Literal["train", "pretrained"] = "train"
    checkpoint: str | None = None
    codebook_size: int = Field(512, ge=2)
    code_dim: int = Field(32, ge=1)
    hidden: int = Field(64, ge=8)
    # Number of stride-2 stages: the token grid is image_size / 2**downsamples.
    downsamples: int = Field(2, ge=1, le=6)
    res_blocks: int = Field(1, ge=0)
    commitment: float = Field(0.25, ge=0.0)
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0)
    # A code whose EMA usage falls below this many assignments per batch is restarted.
    dead_threshold: float = Field(1.0, ge=0.0)
    # The CPU default is sized for the 15-minute DAG; configs/study.yaml trains longer.
    steps: int = Field(300, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    # The tokenizer has its own seed: changing the top-level `seed` (generative model) must not
    # re-train it and re-tokenise the data.
    seed: int = Field(0, ge=0)
    # Val images scored for recon_mse / psnr / codebook usage.
    eval_images: int = Field(2000, ge=1)
    num_recon_examples: int = Field(16, ge=1)


class TokenizeConfig(_Section):
    shard_size: int = Field(10000, ge=1)
    batch_size: int = Field(500, ge=1)
    # Also tokenise each horizontally flipped train image (AutoNAT / KA-MIG on ImageNet).
    flip_augment: bool = False


class CooccurrenceConfig(_Section):
    neighbourhood: Literal[4, 8] = 8
    top_ratio: float = Field(0.05, gt=0.0, le=1.0)


class SimilarityConfig(_Section):
    k: int = Field(2, ge=1)
    candidates: int = Field(32, ge=1)
    # Edge weight exp(-alpha * d / unit). unit "median" (the median kept JS divergence) with alpha 1
    # gives a median neighbour e^-1 = 0.37 of the self-loop's unnormalised weight; "none" divides by
    # nothing, and with alpha 5 it is the official code's exp(-5 d) on the raw JS divergence.
    alpha: float = Field(1.0, gt=0.0)
    distance_unit: Literal["median", "none"] = "median"
    # flat is exact; ivf / hnsw are approximate options for vocabularies of 16k and more.
    index: Literal["flat", "ivf", "hnsw"] = "flat"


class OfficialGraphsConfig(_Section):
    """The official code's construction of its two graph files (``data/graphs_official/``), which
    ``fusion.adapter: official`` convolves over (GuotaoLiang/KA-MIG ``graph_construction/``)."""

    # Each token keeps its top max(1, int(nnz * ratio)) co-occurring tokens, counts as weights;
    # 0.05 is what the shipped file implies (50-52 edges per row of 1024).
    cooccurrence_ratio: float = Field(0.05, gt=0.0, le=1.0)
    # Nearest tokens by the JS divergence of softmaxed position profiles, weight exp(-alpha d).
    similarity_k: int = Field(2, ge=1)
    similarity_alpha: float = Field(5.0, gt=0.0)


class GraphsConfig(_Section):
    max_images: int | None = Field(None, ge=1)
    device: Literal["cpu", "cuda"] = "cpu"
    num_examples: int = Field(6, ge=0)
    # Bound on the (label, position, token) groups polars aggregates per pass over the shards
    # (about 65 bytes each); more possible groups split the labels into several passes. Memory
    # only: the output bytes do not depend on it.
    positions_groups_per_pass: int = Field(16777216, ge=1)
    cooccurrence: CooccurrenceConfig = Field(default_factory=CooccurrenceConfig)
    similarity: SimilarityConfig = Field(default_factory=SimilarityConfig)
    official: OfficialGraphsConfig = Field(default_factory=OfficialGraphsConfig)


class ModelConfig(_Section):
    dim: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0.0)
    # 0 by default: on the small CPU preset dropout costs ~25% step time and the model underfits.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Output head tied to the token embeddings (MaskGIT/BERT style; the U-ViT's is always tied).
    tie_head: bool = True
    # maskgit: pre-norm transformer (pipeline/model/transformer.py); uvit: AutoNAT's U-ViT with
    # long skips (pipeline/model/uvit.py; depth counts in- plus out-blocks, plus one mid block).
    arch: Literal["maskgit", "uvit"] = "maskgit"


class Recipe(_Section):
    """What a training run optimises and how: ``train`` (train_base) and ``kamig`` (the fine-tunes)
    each have their own, because the two recipes differ (the paper fine-tunes with its own)."""

    steps: int = Field(800, ge=1)
    # The global batch (split over processes and train.grad_accum steps).
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # after the linear warmup
    # Global gradient-norm clipping over the trainable parameters; null: none.
    grad_clip: float | None = Field(1.0, gt=0.0)
    mask_schedule: Literal["cosine", "beta"] = "cosine"
    mask_beta: tuple[float, float] = (12.0, 3.0)  # Beta(a, b) of the beta schedule (AutoNAT, KA-MIG)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    p_uncond: float = Field(0.1, ge=0.0, le=1.0)  # classifier-free guidance label dropout
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    # warmup: d_t = min(decay, (1 + t) / (10 + t)); constant: the decay from step 0 (the official
    # KA-MIG recipe: 0.9999 over 1500 steps, pipeline/ema.py).
    ema_warmup: Literal["warmup", "constant"] = "warmup"


class TrainConfig(Recipe):
    """``train_base``'s recipe, and how every training run is executed and checkpointed."""

    grad_accum: int = Field(1, ge=1)
    # auto: bf16 on CUDA GPUs that support it, no mixed precision on CPU.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    checkpoint_every: int = Field(250, ge=1)
    log_every: int = Field(25, ge=1)
    # Validation of the final EMA weights on at most this many val images.
    val_images: int = Field(2000, ge=1)
    # scratch: train the base model; checkpoint: import train.checkpoint (published AutoNAT
    # weights, model.arch uvit) instead, with no training.
    init: Literal["scratch", "checkpoint"] = "scratch"
    # A file inside pretrained/autonat/, the folder train_base lists as a DVC dependency.
    checkpoint: str | None = None


class KamigConfig(Recipe):
    """The fine-tuning recipe of ``finetune@control`` and ``finetune@kamig``."""

    steps: int = Field(200, ge=1)  # the paper uses 1500, configs/study.yaml 500
    warmup_steps: int = Field(30, ge=0)
    # Off, as in the official recipe: one global norm over head and adapter would shrink the head's
    # steps by the adapter's gradient in KA-MIG but not in the head-only control.
    grad_clip: float | None = Field(None, gt=0.0)
    # true (paper): train the adapter and the output head; false: train everything.
    freeze_backbone: bool = True
    # The fine-tunes' own seed (data order, masks, dropout; the base model is `seed`'s), so a
    # sweep over it re-uses one base model, as the paper fine-tunes one pretrained backbone.
    seed: int = Field(0, ge=0)
    # finetune: finetune@kamig trains; checkpoint: it imports the authors' released KA-MIG model
    # (kamig.checkpoint, with the three graph files of layout.KAMIG_RELEASE_GRAPHS next to it)
    # instead. The control and the null always fine-tune: they are this pipeline's additions.
    init: Literal["finetune", "checkpoint"] = "finetune"
    # A file inside pretrained/kamig/, the folder only finetune@kamig lists as a DVC dependency.
    checkpoint: str | None = None


GraphName = Literal["cooccurrence", "similarity", "incompatibility"]
AdapterName = Literal["pipeline", "official"]


class FusionConfig(_Section):
    # pipeline: this pipeline's adapter (pipeline/model/knowledge.py); official: the published
    # KA-MIG graph layer, exactly (pipeline/model/official.py), which fixes weight 1,
    # null_negative zero, negative_at all and gcn_layers 3 (the config checks them).
    adapter: AdapterName = "pipeline"
    weight: float = Field(1.0, ge=0.0)
    graphs: tuple[GraphName, ...] = ("cooccurrence", "similarity", "incompatibility")
    # all: the negative term at every position (official code); masked: masked positions only (paper).
    negative_at: Literal["all", "masked"] = "all"
    gcn_layers: int = Field(3, ge=1)
    # A (class, position, token) seen fewer times than this in the train tokens is incompatible;
    # 1 is the paper's "never observed". The graphs stage stores raw counts, so changing this
    # re-runs only the fine-tunes.
    min_count: int = Field(1, ge=1)
    # The null (CFG) class's negative term: marginal, from the class-marginal counts; zero, none
    # (the official code).
    null_negative: Literal["marginal", "zero"] = "marginal"


class StrategyConfig(_Section):
    """Per-step arrays (AutoNAT style) that replace what the schedule and the scalar ``sample.*``
    params give; each key set has one value per step (``sample.steps``), unset keys keep the schedule."""

    # Fraction of the whole sequence still masked after each step: non-increasing in [0, 1], ending at 0.
    mask_ratio: tuple[float, ...] | None = None
    temperature: tuple[float, ...] | None = None
    choice_temperature: tuple[float, ...] | None = None
    cfg: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _ratios(self) -> StrategyConfig:
        ratios = self.mask_ratio
        if ratios is not None:
            if any(not 0.0 <= r <= 1.0 for r in ratios) or any(
                later > earlier for earlier, later in itertools.pairwise(ratios)
            ):
                raise ConfigError(f"sample.strategy.mask_ratio must be non-increasing values in [0, 1], "
                                  f"got {list(ratios)}")
            if not ratios or ratios[-1] != 0.0:
                raise ConfigError("sample.strategy.mask_ratio must end at 0 (nothing left masked)")
        return self

    def arrays(self) -> dict[str, tuple[float, ...]]:
        """The keys that are set."""
        return {name: getattr(self, name) for name in type(self).model_fields
                if getattr(self, name) is not None}


# How a token is drawn from its distribution (sample.token_draw); see pipeline/sampling/decode.py.
TokenDraw = Literal["gumbel_max", "inverse_cdf"]
# The sampling forward's precision (sample.mixed_precision); see pipeline/sampling/generate.py.
SamplingPrecision = Literal["auto", "no", "bf16"]


class SampleConfig(_Section):
    # The sampling seed: a sweep over it re-uses the trained models.
    seed: int = Field(0, ge=0)
    steps: int = Field(8, ge=1)
    schedule: Literal["cosine", "arccos", "linear"] = "cosine"
    per_class: int = Field(50, ge=1)
    batch_size: int = Field(500, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    choice_temperature: float = Field(4.5, ge=0.0)
    cfg: float = Field(1.0, ge=0.0)
    cfg_schedule: Literal["constant", "linear"] = "constant"
    # The forward's precision. auto: bf16 autocast on CUDA, float32 on a CPU. bf16 on a CPU with
    # native bf16 matmuls (AVX512-BF16 / AMX) samples ~1.3x faster but changes the samples: opt in.
    mixed_precision: SamplingPrecision = "auto"
    # How each token is drawn from its distribution. gumbel_max: argmax(log p + Gumbel noise),
    # the samples of every earlier run. inverse_cdf: one uniform per masked position instead of one
    # per token and position; the same distribution, other samples, 1.1-1.2x faster on a CPU.
    token_draw: TokenDraw = "gumbel_max"
    # Optional per-step arrays (AutoNAT style) replacing the schedule: keys mask_ratio,
    # temperature, choice_temperature, cfg, each a list of `steps` numbers.
    strategy: StrategyConfig | None = None
    # Columns of the PNG grid (one row per class).
    grid_columns: int = Field(10, ge=1)
    # At most this many class rows in the grid (evenly spaced class ids; ImageNet has 1000).
    grid_classes: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _strategy_has_one_value_per_step(self) -> SampleConfig:
        for name, values in (self.strategy.arrays() if self.strategy else {}).items():
            if len(values) != self.steps:
                raise ConfigError(f"sample.strategy.{name} has {len(values)} values; "
                                  f"sample.steps is {self.steps}")
        return self


class ClassifierConfig(_Section):
    # 1500 x 128 (3.2 epochs of Fashion-MNIST) at lr 4e-3 one-cycle: ~92% val accuracy.
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(4e-3, gt=0.0)
    feature_dim: int = Field(128, ge=2)
    # Channels of the first conv block (doubled per stride-2 block).
    width: int = Field(32, ge=4)
    # Its own seed, not the top-level one: experiments that change `seed` never retrain it.
    seed: int = Field(0, ge=0)


class EvalConfig(_Section):
    # Standard InceptionV3 FID / IS (a few images/s on a 2-core CPU: off there by default).
    inception: bool = False
    batch_size: int = Field(250, ge=1)
    pr_k: int = Field(3, ge=1)
    # Bootstrap resamples of the generated features behind fid_se (0: no standard error).
    bootstrap: int = Field(200, ge=0)
    # Train images the domain classifier never trains on (at most half the split): evaluate_real
    # and evaluate_recon, the floors, score them, so the features have not learnt them.
    holdout: int = Field(10000, ge=1)
    # Held-out images scored by evaluate_real and evaluate_recon; null: as many as one variant samples.
    real_samples: int | None = Field(None, ge=1)
    # Reference statistics: the real split, or an ADM / pytorch-fid npz (mu, sigma) for Inception.
    reference_split: Literal["val", "train"] = "val"
    reference_npz: str | None = None
    # At most this many reference images (a deterministic subset; null: the whole split).
    reference_max: int | None = Field(None, ge=1)
    # Resize to 299 for Inception: tensorflow (the TF graph's bilinear, matches ADM's reference
    # batches) or clean (clean-fid's antialiased bicubic).
    inception_resize: Literal["tensorflow", "clean"] = "tensorflow"
    # Inception Score (with inception): a local pt_inception-2015-12-05-*.pth (pytorch-fid's
    # weights, with the 1008-way classifier), downloaded once by the user; null: IS stays null.
    inception_weights: str | None = None
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)


class Config(_Section):
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    graphs: GraphsConfig = Field(default_factory=GraphsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    kamig: KamigConfig = Field(default_factory=KamigConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        check_consistency(self)  # runs only once every field is valid
        return self


_S = TypeVar("_S", bound=_Section)


def replace(cfg: _S, /, **changes: Any) -> _S:
    """``dataclasses.replace`` for configs: a copy of ``cfg`` with ``changes``, validated again."""
    cls = type(cfg)
    values = {**{name: getattr(cfg, name) for name in cls.model_fields}, **changes}
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{cls.__name__}: {error_message(exc, cls, values)}") from None
