"""The one run configuration and its one validation: the shared vocabulary of every layer.

Both doors build a `RunConfig` the same way: the command line (`restyle run`, `restyle plan`)
and the YAML job specs (`pipeline.jobs.specs`) fill a `RunSettings` through `validate`, with
the same value types (`values`), and call `RunSettings.run_config`. A mistake is one
`ConfigError` line naming the option or key, raised before Ray or torch start.

- `values`: limits, choices, ranges, templates and paths of every field;
- `weights_spec`: the `--weights` value, parsed once (`WeightsSpec`);
- `run_config`: the settings, the `RunConfig`, its fingerprint, per-item seeds;
- `eval_settings`: what `restyle eval` scores, with which backbones; quality gates;
- `problems`: pydantic's report as one `ConfigError` line, named the door's way;
- `driver_settings`: how a driver shares its run (lease TTL, `--join`), outside the config.
"""

from pipeline.config.driver_settings import DriverSettings
from pipeline.config.eval_settings import EvalSettings, Gates, MetricModels
from pipeline.config.input_limits import DEFAULT_LIMITS, InputLimits
from pipeline.config.problems import ConfigProblem, key_path, validate
from pipeline.config.run_config import (
    ConfigModel,
    ExecutionOptions,
    OutputOptions,
    OutputSettings,
    RunConfig,
    RunFile,
    RunRequest,
    RunSettings,
    SamplingDefaults,
    ScoringOptions,
    code_version,
    derive_seed,
)
from pipeline.config.values import (
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    SCORE_METRICS,
    CaptionSource,
    Dtype,
    ImageFormat,
    ModelName,
    PathBase,
    check_metrics,
    check_template,
)
from pipeline.config.weights_spec import WeightsKind, WeightsSpec
from pipeline.errors import ConfigError

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_SEED",
    "MAX_SIDE",
    "MAX_STEPS",
    "MIN_SIDE",
    "SCORE_METRICS",
    "CaptionSource",
    "ConfigError",
    "ConfigModel",
    "ConfigProblem",
    "DriverSettings",
    "Dtype",
    "EvalSettings",
    "ExecutionOptions",
    "Gates",
    "ImageFormat",
    "InputLimits",
    "MetricModels",
    "ModelName",
    "OutputOptions",
    "OutputSettings",
    "PathBase",
    "RunConfig",
    "RunFile",
    "RunRequest",
    "RunSettings",
    "SamplingDefaults",
    "ScoringOptions",
    "WeightsKind",
    "WeightsSpec",
    "check_metrics",
    "check_template",
    "code_version",
    "derive_seed",
    "key_path",
    "validate",
]
