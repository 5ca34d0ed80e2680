"""Specs: YAML -> validated spec -> resolved trial configs. The only package that reads YAML.

    spec = runner.spec.load_spec("experiments/m1_wrn_grid.yaml", overrides=["train.epochs=2"])
    for trial in spec.trials: trial.name, trial.config, trial.reported
"""

from runner.spec import diff
from runner.spec.load import (
    Spec,
    Trial,
    dump_yaml,
    eval_override,
    load_spec,
    load_yaml_file,
    parse_override,
    trial_config,
)
from runner.spec.schema import SpecError

__all__ = ["Spec", "SpecError", "Trial", "diff", "dump_yaml", "eval_override", "load_spec", "load_yaml_file",
           "parse_override", "trial_config"]
