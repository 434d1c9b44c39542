"""Project settings (see Kedro's configuration docs for what can be set here)."""

import warnings

from kedro.config import OmegaConfigLoader  # noqa: F401

# Kedro 1.7 and kedro-mlflow register their resolvers with the OmegaConf call OmegaConf 2.4
# deprecates: three warnings of theirs before every run, about nothing this project can change.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environment folders (conf/coco, conf/mpii) override only the keys they set.
    "merge_strategy": {"parameters": "soft"},
}

from pnfs_pipeline.hooks import (  # noqa: E402
    DistributedRankHooks,
    ParameterCheckHooks,
    ProjectFolderHooks,
    UpstreamCheckHooks,
)

# pluggy calls the last registered first: parameters, then inputs, then the rank's settings, all
# before plugins such as kedro-mlflow (tryfirst).
HOOKS = (ProjectFolderHooks(), DistributedRankHooks(), UpstreamCheckHooks(), ParameterCheckHooks())
