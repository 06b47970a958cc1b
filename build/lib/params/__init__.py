"""Typed stage parameters: one YAML per stage, validated by the models in `schema`."""

from params.schema import (
    STAGE_MODELS,
    AugmentParams,
    CleanParams,
    CrossvalParams,
    EvaluateParams,
    ParamsError,
    RetrainParams,
    SplitParams,
    TrainParams,
    TuneParams,
    load_params,
)

__all__ = [
    "STAGE_MODELS",
    "AugmentParams",
    "CleanParams",
    "CrossvalParams",
    "EvaluateParams",
    "ParamsError",
    "RetrainParams",
    "SplitParams",
    "TrainParams",
    "TuneParams",
    "load_params",
]
