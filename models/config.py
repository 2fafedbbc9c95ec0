"""The network's settings: the `model`, `align` and `loss` sections of fsan's TOML settings, and
`FSANConfig`, which joins them with the data's dimensions.

A TOML key is the name of a field here (`align.sc_map` is `AlignSettings.sc_map`), and the field
names of the three sections differ, so `FSANConfig` is simply all of them together. The defaults
are the paper's values (§4.2 and the equations as printed), with DESIGN.md's two corrections:
eq. 10/12 weight segments by a detached softmax of SC, and eq. 11 lowers the weakest outside
response. The shipped defaults that make weak supervision ground are in
fsan_cli/presets/base.toml (docs/method.md says why each differs).

`metadata` bounds (`lo`, `hi`, `lo_open`) are checked by fsan_cli.core.settings on every value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Grounding = Literal["alignment", "mlp"]  # §3.4, or Table 4's "w/o grounding module"
ScMap = Literal["p", "p_hat", "centered"]  # what eq. 8 reads
SegmentWeights = Literal["softmax", "raw"]  # eq. 10/12
InnerForm = Literal["sigmoid_sum", "log_mean"]  # eq. 9
OuterForm = Literal["lower", "literal"]  # eq. 11
MatchScore = Literal["sc", "inner"]  # S(V, S) of eq. 6-7


def at_least(lo: float) -> dict[str, float]:
    return {"lo": lo}


def between(lo: float, hi: float) -> dict[str, float]:
    return {"lo": lo, "hi": hi}


POSITIVE = {"lo": 0, "lo_open": True}


@dataclass
class ModelSettings:
    hidden: int = field(default=512, metadata=at_least(1))  # d (§4.2)
    layers: int = field(default=6, metadata=at_least(0))  # ICIM layers (§3.2)
    heads: int = field(default=8, metadata=at_least(1))
    dropout: float = field(default=0.1, metadata={"lo": 0, "hi": 1, "hi_open": True})
    text_layers: int = field(default=1, metadata=at_least(0))  # encoder layers over the words
    align_dim: int = field(default=512, metadata=at_least(1))  # d_i of W^s, W^v in eq. 5
    max_tokens: int = field(default=32, metadata=at_least(1))  # longer queries are truncated
    cross_attention: bool = True  # Table 4 switch (eq. 3-4)
    inner_attention: bool = True  # Table 4 switch
    grounding: Grounding = "alignment"


@dataclass
class AlignSettings:
    sc_map: ScMap = "p"  # "p" raw cosine | "p_hat" (1 + P) / 2 | "centered" P minus its token mean
    weights: SegmentWeights = "softmax"  # softmax(SC / tau) detached | "raw" SC as printed
    tau: float = field(default=0.1, metadata=POSITIVE)
    # eq. 7 takes a hard max over segments; match_tau > 0: tau * logsumexp(SC / tau)
    match_tau: float = field(default=0.0, metadata=at_least(0))
    # "sc": the best SC (paper) | "inner": the raw mean response inside the best-SC segment
    match_score: MatchScore = "sc"
    inner_form: InnerForm = "sigmoid_sum"  # "sigmoid_sum" (paper) | "log_mean"
    outer_form: OuterForm = "lower"  # "lower": -log(1 - min P-hat) | "literal": -log(min P-hat)


@dataclass
class LossSettings:
    margin: float = field(default=0.2, metadata=at_least(0))  # delta of eq. 6
    w_matching: float = field(default=1 / 3, metadata=at_least(0))  # lambda_1..3 of eq. 13
    w_inner: float = field(default=1 / 3, metadata=at_least(0))
    w_outer: float = field(default=1 / 3, metadata=at_least(0))
    negative_video: bool = False  # also contrast (V^-, S) beside the paper's (V, S^-)
    sap: bool = True  # Table 4 switch: False keeps only L^t


@dataclass
class FSANConfig(ModelSettings, AlignSettings, LossSettings):
    """Everything the network needs: the three sections' fields, and the data's dimensions."""

    word_dim: int = 300
    feature_dim: int = 500
    clips: int = 64  # N_v

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FSANConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
