"""PROVISIONAL (uncommitted): replaced by the environments package of branch issue41-envs."""
from rlvr.config import ConfigError


class EnvFailure(RuntimeError):
    pass


EnvSpec = object


def load_env(spec, examples=1):
    raise ConfigError("env", f"unknown environment {spec!r}")
