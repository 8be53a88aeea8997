"""Where the pipeline's artefacts live and what its variants are called: the one place for both.

Every path is relative to the DVC project root, where ``dvc repro`` runs the stages, and matches
``dvc.yaml`` (``tests/test_layout.py`` checks the variant names and stage outputs against it).

Generator variants:

* ``base``: MaskGIT trained from scratch (``train_base``);
* ``control``: the base model alone, fine-tuned with the ``kamig`` recipe: a head-only fine-tune,
  with no adapter, so it depends on no ``fusion.*`` param and no graph;
* ``permuted``: the null control. Exactly ``kamig``'s adapter, recipe and weight, on graphs whose
  knowledge is destroyed and statistics kept (one fixed permutation of the vocabulary);
  ``permuted - control`` is the effect of the adapter's capacity;
* ``kamig``: base + the adapter, fine-tuned with the knowledge graphs; ``kamig - permuted`` is the
  effect of the knowledge.

``real`` and ``recon`` are not generators but the floors: ``evaluate_real`` scores held-out real
train images, ``evaluate_recon`` their reconstructions by the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

BASE = "base"
CONTROL = "control"
PERMUTED = "permuted"  # the null control (a YAML-safe name: `null` is YAML's None)
KAMIG = "kamig"
REAL = "real"  # evaluate_real: held-out real train images (the floor)
RECON = "recon"  # evaluate_recon: decode(encode(x)) of the same images (the tokenizer floor)
FLOORS = (REAL, RECON)
FINETUNE_VARIANTS = (CONTROL, PERMUTED, KAMIG)
GENERATOR_VARIANTS = (BASE, *FINETUNE_VARIANTS)

DATA_DIR = Path("data")
PREPARED_DIR = DATA_DIR / "prepared"
MANIFEST_PATH = PREPARED_DIR / "manifest.parquet"
TOKENS_DIR = DATA_DIR / "tokens"
GRAPHS_DIR = DATA_DIR / "graphs"
# The official KA-MIG construction of the co-occurrence and similarity graphs (fusion.adapter: official).
GRAPHS_OFFICIAL_DIR = DATA_DIR / "graphs_official"
REFERENCE_DIR = DATA_DIR / "reference"
SAMPLES_DIR = DATA_DIR / "samples"
SAMPLES_SPLIT = "samples"  # data/samples/<variant>/samples/part-*.parquet, the token-shard layout

MODELS_DIR = Path("models")
TOKENIZER_DIR = MODELS_DIR / "tokenizer"
CLASSIFIER_DIR = MODELS_DIR / "classifier"
CHECKPOINTS_DIR = Path("checkpoints")
# Published weights a run imports; git-ignored. Each folder is a DVC dependency of the one stage
# that reads it, so adding a file re-runs only that stage.
PRETRAINED_DIR = Path("pretrained")
AUTONAT_DIR = PRETRAINED_DIR / "autonat"  # train.checkpoint: AutoNAT's nnet_ema.pth (train_base)
KAMIG_RELEASE_DIR = PRETRAINED_DIR / "kamig"  # kamig.checkpoint and its graph files (finetune@kamig)
# The released graph files' published names (GuotaoLiang/KA-MIG graph_prior/, spec §2.2), expected
# next to kamig.checkpoint; in the order of pipeline.model.kamig.ReleasedFiles.
KAMIG_RELEASE_GRAPHS = {
    "cooccurrence": "codebook_co_occurrence_norm_self_50.pkl",
    "similarity": "codebook_replace_graph_norm_self.pkl",
    "incompatibility": "class_pos_norm_mat_cat.pkl",
}

METRICS_DIR = Path("metrics")
PLOTS_DIR = METRICS_DIR / "plots"
LIVE_DIR = METRICS_DIR / "live"


def model_dir(variant: str) -> Path:
    return MODELS_DIR / variant


def checkpoint_dir(variant: str) -> Path:
    return CHECKPOINTS_DIR / variant


def train_metrics(variant: str) -> Path:
    return METRICS_DIR / f"train_{variant}.json"


def live_dir(variant: str) -> Path:
    """DVCLive's folder of a training run (curves drawn by the plots in dvc.yaml)."""
    return LIVE_DIR / f"train_{variant}"


def samples_dir(variant: str) -> Path:
    return SAMPLES_DIR / variant


def sample_grid(variant: str) -> Path:
    return PLOTS_DIR / f"samples_{variant}.png"


def sample_metrics(variant: str) -> Path:
    """Throughput of sampling, kept out of data/samples so the token folder is seed-deterministic."""
    return METRICS_DIR / f"sample_{variant}.json"


def eval_metrics(name: str) -> Path:
    return METRICS_DIR / f"eval_{name}.json"


def stage_metrics(stage: str) -> Path:
    """The metrics file of a single-output stage (prepare, tokenizer, tokenize, graphs, classifier)."""
    return METRICS_DIR / f"{stage}.json"


def training_outputs(variant: str) -> list[Path]:
    return [model_dir(variant), checkpoint_dir(variant), train_metrics(variant), live_dir(variant)]
