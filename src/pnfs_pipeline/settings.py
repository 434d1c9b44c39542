"""Project settings (see Kedro's configuration docs for what can be set here)."""

from kedro.config import OmegaConfigLoader  # noqa: F401

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
