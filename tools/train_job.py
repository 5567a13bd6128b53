"""The retraining Job's entry point: `python -m tools.train_job` fits a model version and registers it.

Layer: tools (imports `tools.mlflow_backend`). `tools.k8s_retrain.RetrainJobs` creates a Kubernetes Job from
the operator's template and fills in what this entry point reads from its environment:

=============================  =================================================================
MLFLOW_TRACKING_URI            the registry to register in
OPSMEDIC_MODEL                 the model (opsmedic's name)
OPSMEDIC_MODEL_PREFIX          prefix of registered-model names (optional)
OPSMEDIC_MLFLOW_RUN_ID         the MLflow run opsmedic opened for this training: params, metrics,
                               the training dataset and the model are logged into it
OPSMEDIC_IDEMPOTENCY_KEY       the action's key: the version is tagged with it, and a rerun of
                               the Job after a crash registers nothing twice
OPSMEDIC_DATA_WINDOW_START/END the data window to train on (RFC 3339). The sandbox's data is
                               synthetic and windowed by version, so here it is recorded only
=============================  =================================================================

A real training image replaces this module with its own code and keeps the contract: log into the run,
log the rows it trained on as the run's dataset with context `training` (a source opsmedic can read back: a
Parquet or CSV file, artifact or URL; `tools.mlflow_windows.log_dataset` does it), register one version tagged
`opsmedic.idempotency_key`, exit 0. Once that version is promoted, its training dataset is the reference
window of the model's drift and data validation (`tools.mlflow_windows`). In the sandbox, the API's kubelet runs this
module's `main` for a Job whose container command is `python -m tools.train_job` (`sandbox.k8s_api`).
Promotion is not this Job's business: `promote_model` evaluates on held-out data first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence

REQUIRED = ("MLFLOW_TRACKING_URI", "OPSMEDIC_MODEL", "OPSMEDIC_MLFLOW_RUN_ID", "OPSMEDIC_IDEMPOTENCY_KEY")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
         say: Callable[[str], None] | None = None) -> int:
    """Train and register; returns the exit status (0 done, 1 failed, 2 misconfigured). `say` receives
    the lines a container would print (default: stdout and stderr)."""
    from core.errors import ToolError
    from tools.mlflow_backend import MlflowModelBackend

    env = os.environ if env is None else env

    def tell(line: str, err: bool = False) -> None:
        if say is not None:
            say(line)
        else:
            print(line, file=sys.stderr if err else sys.stdout)

    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        tell(f"train_job: missing environment {', '.join(missing)}", True)
        return 2
    try:
        backend = MlflowModelBackend(env["MLFLOW_TRACKING_URI"], name_prefix=env.get("OPSMEDIC_MODEL_PREFIX", ""),
                                     n_recent=int(env.get("OPSMEDIC_TRAIN_ROWS", "4000")),
                                     n_heldout=int(env.get("OPSMEDIC_HELDOUT_ROWS", "4000")))
        ok, _changed, detail = backend.train_version(env["OPSMEDIC_MODEL"], key=env["OPSMEDIC_IDEMPOTENCY_KEY"],
                                                     run_id=env["OPSMEDIC_MLFLOW_RUN_ID"])
    except (ToolError, ValueError) as exc:
        tell(f"train_job: {exc}", True)
        return 1
    tell(f"train_job: {detail}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
