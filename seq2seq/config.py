"""Typed configuration: dataclasses with visible defaults, YAML files and key=value overrides.

Every option lives in one of the sections below. A config file is YAML with the same
nesting (``model: {attention: bahdanau}``); overrides on the command line use dotted keys
(``model.attention=bahdanau train.lr=1e-3``). Unknown keys and bad values raise
:class:`ConfigError` naming the option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seq2seq.options import ConfigError, choice, parse_overrides, read_yaml_mapping, update_fields

CELLS = ("rnn", "gru", "lstm")
ATTENTIONS = ("none", "bahdanau", "luong_dot", "luong_general")
INITS = ("zero", "last", "bridge")


@dataclass
class DataConfig:
    corpus: str = "tatoeba"  # tatoeba | libreoffice | bible | files
    src_lang: str = "en"  # source language code (the translator splits paragraphs into sentences by its rules)
    tgt_lang: str = "fr"  # tatoeba: fr or es; libreoffice: de or fr; bible: en, fr, de or es
    train: str | None = None  # corpus=files: a TSV (src<TAB>tgt) or "SRC_FILE,TGT_FILE"
    valid: str | None = None  # corpus=files: same form; refs of a repeated source are merged
    test: str | None = None  # corpus=files: same form; scored with sacreBLEU at the end of the run
    max_train_pairs: int | None = None  # keep N training pairs, evenly spaced (small runs, tests)
    max_train_words: int | None = None  # train on pairs of at most N words a side (Bahdanau et al.'s "-30" models)
    max_eval_sentences: int | None = None  # cap the valid/test splits (small runs, tests)
    vocab_size: int = 4000  # sentencepiece pieces per side (or joint)
    joint_vocab: bool = False  # one sentencepiece model for both sides
    tokenizers_from: str | None = None  # a run folder whose tokenizers this run takes (ensemble members share them)
    spm_model_type: str = "unigram"  # unigram | bpe
    max_len: int = 80  # drop training pairs longer than this many subwords on either side
    batch_tokens: int = 3000  # padded source + target tokens per batch (per process in a data-parallel run)
    skip_bad_lines: bool = False  # data.corpus=files: skip (and count) lines that are not UTF-8 or lack a tab


@dataclass
class CaptionsConfig:
    corpus: str = "emoji"  # emoji | shapes | karpathy | coco | table
    lang: str = "en"  # emoji: caption language, en | de | fr
    twemoji_test: bool = False  # emoji: also score the test split drawn by Twemoji's artists (style change)
    captions: str | None = None  # karpathy/table: one file; coco: "TRAIN.json,VALID.json[,TEST.json]"
    images: str | None = None  # folder the image paths of any captions file are relative to (default: its own)
    shapes: int = 2000  # shapes: how many images to generate
    shapes_size: int = 64  # shapes: canvas size in pixels
    tokenizer: str = "word"  # word | sentencepiece
    min_freq: int = 1  # word: rarer words become <unk>
    vocab_size: int = 1000  # sentencepiece: pieces
    max_len: int = 40  # drop training captions longer than this (tokens)
    batch_tokens: int = 1200  # padded caption tokens per batch (images per batch vary with length)
    max_train_images: int | None = None  # keep N training images, evenly spaced (small runs, tests)
    skip_missing_images: bool = False  # leave out (and count) images a captions file names but lacks


@dataclass
class SyntheticConfig:
    task: str = "copy"  # copy | adding: the long-dependency tasks (seq2seq.tasks.long_dependency)
    length: int = 100  # T: blanks between the symbols and the delimiter (copy); pairs in a sequence (adding)
    symbols: int = 10  # copy: symbols to remember
    alphabet: int = 8  # copy: the symbols are drawn from this many
    batch_size: int = 128  # sequences per training batch, generated on the fly
    valid_examples: int = 500  # fixed validation sequences
    test_examples: int = 2000  # fixed test sequences


@dataclass
class ImageConfig:
    backbone: str = "mobilenet_v2"  # mobilenet_v2 | resnet18/34/50/101 | efficientnet_b0 | vgg16
    weights: str = "imagenet"  # imagenet (fetched; mobilenet_v2 only) | none | /path/to/weights.pth
    grid_block: int = -1  # the block whose feature map is the attention grid (-1: the last)
    resize: int = 256  # shorter side before the centre crop
    crop: int = 224  # input size; mobilenet_v2 gives a 7x7 grid at 224, 14x14 at 448
    finetune_from: int | None = None  # None: frozen CNN (features cached); K: train blocks K and later
    finetune_lr_scale: float = 0.1  # learning rate of fine-tuned CNN blocks, relative to train.lr
    cache_features: bool = True  # frozen CNN: extract features once, keep them on disk


@dataclass
class ModelConfig:
    emb_dim: int = 256  # token embedding size, encoder and decoder
    enc_cell: str = "gru"  # rnn (tanh) | gru | lstm
    enc_hidden: int = 256  # per direction
    enc_layers: int = 1  # stacked encoder layers
    bidirectional: bool = True  # a backward encoder RNN too; its final state joins the forward one's per layer
    dec_cell: str = "gru"  # rnn (tanh) | gru | lstm
    dec_hidden: int = 512  # decoder state size (and Luong's attentional vector)
    dec_layers: int = 1  # stacked decoder layers
    dropout: float = 0.1  # on embeddings, memory, between RNN layers and before the output layer
    attention: str = "bahdanau"  # none | bahdanau | luong_dot | luong_general
    attention_dim: int = 256  # bahdanau: size of the additive scoring layer
    input_feeding: bool = False  # luong: feed the attentional vector to the next step
    init: str = "bridge"  # decoder initial state: zero | last | bridge
    readout_dim: int = 256  # none/bahdanau: maxout output layer size (Bahdanau: 500)
    tied_embeddings: bool = False  # share target embedding and output matrix
    context_gate: bool = False  # scale the attention context by a learned scalar gate (Show, Attend and Tell)
    recurrent_gain: float | None = None  # None: PyTorch's init; g: recurrent matrices orthogonal times g
    forget_bias: float | None = 1.0  # LSTM layers' forget-gate bias at init (Gers et al. 2000); None: PyTorch's, near 0
    chrono_tmax: int | None = None  # LSTM: chrono init up to T steps (Tallec & Ollivier 2018) in place of forget_bias
    rnn_impl: str = "torch"  # torch (PyTorch's kernels) | explicit (BPTT written out: seq2seq/models/recurrence.py)
    attention_scale: bool = True  # luong: scores / sqrt(dec_hidden) (unscaled, they collapse: docs/results.md)
    attention_fp32: bool = False  # compute attention keys and scores in float32 under bf16 autocast


@dataclass
class TrainConfig:
    seed: int = 1  # seeds Python, NumPy, torch and sentencepiece: the same seed, the same weights
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 if measured faster; GPU without bf16: fp16, scaled)
    optimizer: str = "adam"  # adam | sgd (plain SGD, as in the exploding-gradient papers)
    lr: float = 3e-3  # peak learning rate (after warm-up)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's beta1, beta2
    weight_decay: float = 0.0  # L2 penalty (Adam: coupled, as torch.optim.Adam)
    clip_norm: float = 1.0  # clip the global gradient norm to this; 0 = no clipping (still measured)
    schedule: str = "warmup_decay"  # warmup_decay | plateau (warm-up, then cut on stalls) | constant
    warmup_steps: int = 200  # steps of linear warm-up from 0 (it multiplies the decay, which spans the whole run)
    decay: str = "cosine"  # warmup_decay: cosine | linear (over the run's step horizon) | inverse_sqrt
    min_lr_ratio: float = 0.05  # warmup_decay: the final lr as a fraction of lr
    plateau_factor: float = 0.5  # plateau: lr multiplier when valid BLEU stalls
    plateau_patience: int = 2  # plateau: validations without improvement before decaying
    label_smoothing: float = 0.1  # the target distribution's mass spread over the vocabulary (Szegedy et al. 2016)
    attention_reg: float = 0.0  # doubly stochastic attention penalty's weight (Show, Attend and Tell: 1.0)
    attention_reg_per: str = "token"  # token: vs each caption's summed NLL (Xu et al.); caption: x mean length
    teacher_forcing: float = 1.0  # probability of feeding the reference token (1 = always); a schedule's floor
    sampling_schedule: str = "none"  # none | linear | inverse_sigmoid (Bengio et al. 2015), from 1 to teacher_forcing
    sampling_k: float = 2000.0  # inverse_sigmoid: k; linear: steps to reach teacher_forcing
    max_steps: int | None = None  # stop after this many steps (and decay over them); None = no step limit
    max_epochs: int | None = None  # stop after this many epochs (and decay over their steps); None = no epoch limit
    time_budget: float | None = 15.0  # minutes of training (validation included), spent as a step horizon
    #   estimated from the run's speed after its first minute (a tenth of a budget under 10); None = no limit
    valid_every: int = 1000  # steps between validations
    keep_checkpoints: int = 0  # keep the last N validation checkpoints as checkpoints/step-<n>.pt (seq2seq-average)
    checkpoint_minutes: float = 5.0  # also save checkpoints/last.pt this often: a kill loses at most that; 0 = off
    valid_sentences: int = 400  # greedy BLEU on at most this many validation sentences
    patience: int = 8  # validations without a better BLEU before stopping early
    log_every: int = 50  # steps between training log lines
    gradient_flow_every: int = 0  # steps between gradient-flow probes (seq2seq.train.gradients), from step 0; 0 = off
    allow_mismatched_resume: bool = False  # resume at another resolved precision or number of processes
    collective_timeout: float = 5.0  # data-parallel: minutes a rank waits at a collective before the run stops
    objective: str = "xent"  # xent | scst | mrt: fine-tune train.init_from on sequences (train/sequence_level.py)
    init_from: str | None = None  # a checkpoint whose weights start this run (a fresh optimiser and schedule)
    reward: str = "auto"  # scst/mrt: bleu | chrf (translation), cider | bleu4 (captioning); auto: bleu or cider
    samples: int = 5  # scst/mrt: outputs sampled per input
    scst_baseline: str = "mean"  # scst: mean (the input's other samples' reward) | greedy (the greedy output's)
    mrt_alpha: float = 1.0  # mrt: p^alpha renormalised over the samples (Shen et al.: 5e-3 over 100 samples)
    xent_weight: float = 0.0  # scst/mrt: weight of the references' cross-entropy added to the loss


@dataclass
class SearchConfig:
    beam: int = 5  # beam size (1 = greedy) of test scoring and the tools (validation is greedy)
    length_penalty: float = 1.0  # score / length**alpha
    max_len_ratio: float = 2.0  # output length limit: ratio * source length + offset ...
    max_len_offset: int = 10  # tokens added to the ratio's limit
    max_len: int = 200  # ... and never more than this many tokens per sentence, part or caption
    split_sentences: bool = True  # translate a line sentence by sentence (tools, validation and test alike)
    batch_size: int = 64  # sentences per search batch


@dataclass
class TrackingConfig:
    enabled: bool = True  # W&B tracking on (offline unless told otherwise); false: metrics.jsonl only
    project: str = "seq2seq"  # the W&B project
    name: str | None = None  # the W&B run name (default: the run folder's name)
    group: str | None = None  # W&B group: the runs of one study share it
    mode: str | None = None  # online | offline | disabled; None: WANDB_MODE, else offline
    samples: int = 8  # sample translations logged at each validation
    attention_plots: int = 3  # fixed validation sentences whose attention is plotted (for W&B)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)  # translation corpora
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)  # captioning corpora
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # copy memory and adding problem
    image: ImageConfig = field(default_factory=ImageConfig)  # the CNN of captioning models
    model: ModelConfig = field(default_factory=ModelConfig)  # the encoder, the attention and the shared decoder
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation, budgets, validation, checkpoints
    search: SearchConfig = field(default_factory=SearchConfig)  # greedy and beam search, for both tasks
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # Weights & Biases and metrics.jsonl

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Check the values that have a fixed set of choices or a range."""
        m, t, d = self.model, self.train, self.data
        choice("model.enc_cell", m.enc_cell, CELLS)
        choice("model.dec_cell", m.dec_cell, CELLS)
        choice("model.attention", m.attention, ATTENTIONS)
        choice("model.init", m.init, INITS)
        choice("model.rnn_impl", m.rnn_impl, ("torch", "explicit"))
        choice("train.schedule", t.schedule, ("warmup_decay", "plateau", "constant"))
        choice("train.attention_reg_per", t.attention_reg_per, ("token", "caption"))
        choice("train.decay", t.decay, ("cosine", "linear", "inverse_sqrt"))
        choice("train.precision", t.precision, ("auto", "fp32", "bf16", "fp16"))
        choice("train.sampling_schedule", t.sampling_schedule, ("none", "linear", "inverse_sigmoid"))
        choice("data.corpus", d.corpus, ("tatoeba", "libreoffice", "bible", "files"))
        choice("data.spm_model_type", d.spm_model_type, ("unigram", "bpe"))
        choice("captions.corpus", self.captions.corpus, ("emoji", "shapes", "karpathy", "coco", "table"))
        choice("captions.tokenizer", self.captions.tokenizer, ("word", "sentencepiece"))
        choice("image.backbone", self.image.backbone, ("mobilenet_v2", "resnet18", "resnet34", "resnet50",
                                                        "resnet101", "efficientnet_b0", "vgg16"))
        if self.captions.corpus in ("karpathy", "coco", "table") and not self.captions.captions:
            raise ConfigError(f"captions.corpus={self.captions.corpus} needs captions.captions (the captions file)")
        if self.tracking.mode is not None:
            choice("tracking.mode", self.tracking.mode, ("online", "offline", "disabled"))
        sy = self.synthetic
        for name, value in [("model.emb_dim", m.emb_dim), ("model.enc_hidden", m.enc_hidden),
                            ("model.dec_hidden", m.dec_hidden), ("model.enc_layers", m.enc_layers),
                            ("model.dec_layers", m.dec_layers), ("data.vocab_size", d.vocab_size),
                            ("data.batch_tokens", d.batch_tokens), ("search.beam", self.search.beam),
                            ("search.max_len", self.search.max_len),
                            ("train.valid_every", t.valid_every), ("train.log_every", t.log_every),
                            ("train.patience", t.patience), ("search.batch_size", self.search.batch_size),
                            ("synthetic.length", sy.length), ("synthetic.symbols", sy.symbols),
                            ("synthetic.alphabet", sy.alphabet), ("synthetic.batch_size", sy.batch_size),
                            ("synthetic.valid_examples", sy.valid_examples),
                            ("synthetic.test_examples", sy.test_examples), ("data.max_train_pairs", d.max_train_pairs),
                            ("data.max_eval_sentences", d.max_eval_sentences),
                            ("data.max_train_words", d.max_train_words)]:
            if value is not None and value < 1:  # None: no limit, where an option allows it
                raise ConfigError(f"{name} must be at least 1, got {value}")
        choice("synthetic.task", self.synthetic.task, ("copy", "adding"))
        choice("train.optimizer", t.optimizer, ("adam", "sgd"))
        choice("train.objective", t.objective, ("xent", "scst", "mrt"))
        choice("train.reward", t.reward, ("auto", "bleu", "chrf", "bleu4", "cider"))
        choice("train.scst_baseline", t.scst_baseline, ("mean", "greedy"))
        if not (t.mrt_alpha > 0 and t.xent_weight >= 0):
            raise ConfigError(f"train.mrt_alpha must be positive and train.xent_weight at least 0, "
                              f"got {t.mrt_alpha} and {t.xent_weight}")
        if t.objective != "xent" and not t.init_from:
            raise ConfigError(f"train.objective={t.objective} fine-tunes a trained model: "
                              f"set train.init_from=CHECKPOINT")
        if t.objective != "xent" and t.samples < (1 if t.objective == "scst" and t.scst_baseline == "greedy" else 2):
            raise ConfigError(f"train.samples must be at least 2 for train.objective={t.objective} "
                              f"(the samples are compared with each other), got {t.samples}")
        if not m.attention.startswith("luong"):  # Luong's scores only: one value where it means nothing
            m.attention_scale = False
        if not (t.attention_reg > 0 and m.attention != "none"):  # no penalty: likewise
            t.attention_reg_per = "token"
        if "lstm" not in (m.enc_cell, m.dec_cell):  # chrono initialisation sets LSTM gates only: likewise
            m.chrono_tmax = None
        if m.recurrent_gain is not None and not m.recurrent_gain > 0:
            raise ConfigError(f"model.recurrent_gain must be positive (or null for PyTorch's init), "
                              f"got {m.recurrent_gain}")
        if m.chrono_tmax is not None and m.chrono_tmax < 3:
            raise ConfigError(f"model.chrono_tmax is the longest dependency in steps (at least 3), got {m.chrono_tmax}")
        if not t.collective_timeout > 0:
            raise ConfigError(f"train.collective_timeout must be a positive number of minutes, "
                              f"got {t.collective_timeout}")
        if t.keep_checkpoints < 0:
            raise ConfigError(f"train.keep_checkpoints must be 0 or more, got {t.keep_checkpoints}")
        if t.checkpoint_minutes < 0:
            raise ConfigError(f"train.checkpoint_minutes must be 0 (only at validations) or positive, "
                              f"got {t.checkpoint_minutes}")
        if self.synthetic.task == "adding" and self.synthetic.length < 2:
            raise ConfigError(f"synthetic.length must be at least 2 for the adding problem (two marked values), "
                              f"got {self.synthetic.length}")
        if t.gradient_flow_every < 0:
            raise ConfigError(f"train.gradient_flow_every must be 0 (off) or a number of steps, "
                              f"got {t.gradient_flow_every}")
        if not 0.0 <= m.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
        if not 0.0 <= t.teacher_forcing <= 1.0:
            raise ConfigError(f"train.teacher_forcing must be in [0, 1], got {t.teacher_forcing}")
        if t.sampling_schedule != "none" and t.teacher_forcing == 1.0:
            raise ConfigError(f"train.sampling_schedule={t.sampling_schedule} decays teacher forcing down to "
                              f"train.teacher_forcing, its floor, which is 1.0: set a floor below 1 (e.g. 0.5)")
        if not t.sampling_k > 0:
            raise ConfigError(f"train.sampling_k must be positive, got {t.sampling_k}")
        if not 0.0 <= t.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
        if m.context_gate and m.attention == "none":
            raise ConfigError("model.context_gate needs attention (bahdanau or luong_*)")
        if m.input_feeding and not m.attention.startswith("luong"):
            raise ConfigError("model.input_feeding applies to luong_dot/luong_general attention only")
        if (t.schedule == "warmup_decay" and t.decay != "inverse_sqrt"
                and t.max_steps is None and t.max_epochs is None and t.time_budget is None):
            raise ConfigError(f"train.decay={t.decay} decays over the run's horizon, and this run has none: set "
                              f"train.max_steps, train.max_epochs or train.time_budget, or train.decay=inverse_sqrt")
        for name, value in [("train.max_steps", t.max_steps), ("train.max_epochs", t.max_epochs),
                            ("train.time_budget", t.time_budget)]:
            if value is not None and not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a positive number (or null for no limit), got {value}")
        if d.corpus == "files" and not d.train:
            raise ConfigError("data.corpus=files needs data.train (a TSV file or 'SRC_FILE,TGT_FILE')")
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Defaults, then ``base`` (a dict), then the YAML file, then the overrides; validated."""
    cfg = Config()
    if base:
        update_fields(cfg, base, "")
    if path is not None:
        update_fields(cfg, read_yaml_mapping(Path(path), "config file", "a mapping of sections"), "")
    if overrides:
        update_fields(cfg, parse_overrides(overrides), "")
    return cfg.validate()


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (e.g. from a checkpoint). Options added
    since take their defaults, except where a default would change what the saved run computed:
    runs from before ``model.attention_scale`` existed computed Luong's scores unscaled, and runs
    from before ``train.attention_reg_per`` divided the attention penalty by the captions."""
    model, train = values.get("model"), values.get("train")
    if isinstance(model, dict) and "attention_scale" not in model:
        values = {**values, "model": {**model, "attention_scale": False}}
    if isinstance(train, dict) and "attention_reg_per" not in train:
        values = {**values, "train": {**train, "attention_reg_per": "caption"}}
    return load_config(base=values)
