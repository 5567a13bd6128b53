"""`python -m tools.mlflow_measure [--repeat N]`: the MLflow backend's timings, as one JSON object.

Layer: tools (a measuring script, not imported by opsmedic). Everything runs against throwaway SQLite stores
in a temporary folder (the template cache included, so the cold numbers are really cold). Keys, in seconds:

- `import_mlflow_s`: `import mlflow` in a fresh interpreter (telemetry off).
- `first_store_open_s`: opening the first store in a process (MLflow's SQLAlchemy store modules, Alembic,
  ORM set-up): once per process.
- `store_migrate_s`: a fresh database migrated by MLflow itself (what every new store would cost).
- `store_from_template_s`: a fresh database copied from the migrated template and opened.
- `first_model_save_s`: extra cost of the process's first logged model (skops import, requirement checks).
- `bootstrap_2x3_s`: two registered models with three versions each, warm (median).
- `retrain_s`, `rollback_s`, `promote_s`, `bad_deploy_s`: one action each, warm (median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.domain import Action


def _import_time() -> float:
    code = ("import time; t = time.perf_counter(); from tools.mlflow_store import import_mlflow; "
            "import_mlflow(); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return float(out.stdout.strip().splitlines()[-1])


def _timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def measure(repeat: int = 3) -> dict[str, float]:
    from tools.mlflow_backend import MlflowModelBackend, ModelSpec
    from tools.mlflow_store import import_mlflow, prepare_sqlite_store, sqlite_uri

    out: dict[str, float] = {"import_mlflow_s": _import_time()}
    mlflow = import_mlflow()
    with tempfile.TemporaryDirectory(prefix="opsmedic-mlflow-measure-") as tmp:
        root = Path(tmp)
        cache = root / "cache"

        def open_store(uri: str) -> None:
            client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)

        out["first_store_open_s"], _ = _timed(lambda: open_store(sqlite_uri(root / "first.db")))
        out["store_migrate_s"], _ = _timed(lambda: open_store(sqlite_uri(root / "migrated.db")))
        prepare_sqlite_store(root / "warm-template.db", cache_dir=cache)  # builds the template
        out["store_from_template_s"], _ = _timed(
            lambda: open_store(prepare_sqlite_store(root / "copied.db", cache_dir=cache)))

        backend = MlflowModelBackend(sqlite_uri(root / "mlflow.db"), cache_dir=cache, name_prefix="warmup.")
        first, _ = _timed(lambda: backend.bootstrap([ModelSpec("m", 1)], seed=0))
        second, _ = _timed(lambda: backend.bootstrap([ModelSpec("n", 1)], seed=0))
        out["first_model_save_s"] = max(0.0, first - second)

        steps: dict[str, list[float]] = {k: [] for k in ("bootstrap", "bad_deploy", "rollback", "retrain",
                                                           "promote")}
        for i in range(repeat):
            b = MlflowModelBackend(sqlite_uri(root / "mlflow.db"), cache_dir=cache, name_prefix=f"s{i}.")
            started = time.perf_counter()
            b.bootstrap([ModelSpec("fraud-model", 3), ModelSpec("ranker", 3)], seed=i)
            steps["bootstrap"].append(time.perf_counter() - started)
            started = time.perf_counter()
            b.register_bad_version("fraud-model", 4, accuracy=0.71)
            steps["bad_deploy"].append(time.perf_counter() - started)
            b.set_drift("ranker", {"amount": 0.35})
            for step, action in (("rollback", Action(name="rollback_model", target="fraud-model")),
                                 ("retrain", Action(name="retrain_model", target="ranker")),
                                 ("promote", Action(name="promote_model", target="ranker"))):
                started = time.perf_counter()
                result = b.execute(action, idempotency_key=f"{step}-{i}")
                steps[step].append(time.perf_counter() - started)
                assert result.ok, result.detail
        out |= {("bootstrap_2x3_s" if k == "bootstrap" else f"{k}_s"): statistics.median(v)
                for k, v in steps.items()}
    return {k: round(v, 4) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mlflow_measure",
                                     description="Time the MLflow backend's steps; print one JSON object.")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
