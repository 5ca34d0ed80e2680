"""The MLflow writer: the one writer, run only in the Tune driver process.

One experiment per spec name; one parent run per `runner run` invocation; one child run per trial
(`mlflow.parentRunId`), named after its row, with the resolved config as dotted params (secrets masked),
per-epoch metrics at `step=epoch` (batched per run: runner.tracking.batching), artifacts
`config/resolved.yaml`, `plots/{curves,confusion}.png`, `checkpoint/state.pt` (less its optimizer
state), its data set as a run input, its best checkpoint as a logged model (runner.tracking.pyfunc)
and its cost (runner.cost); the parent gets `results/results.{csv,md}`, the summed cost and its
driver's liveness tags. Other writes go through the `WriteQueue`. Runs are never left RUNNING:
`close(status)`, an interrupted `runner run` (runner.tune.interrupts), and `runner mlflow reconcile`
(runner.tracking.queries) for runs whose driver is gone.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from runner import cost, report
from runner.masking import flatten_params, mask_secrets, redact
from runner.resources import TrialNeed, need_of
from runner.tracking import liveness
from runner.tracking import summary as summary_of
from runner.tracking.batching import MetricBatcher
from runner.tracking.connection import TrackingError, connect, ensure_experiment, is_transient, quote, reach
from runner.tracking.outage import Outage
from runner.tracking.provenance import DataSets, invocation_tags
from runner.tracking.queue import WriteQueue
from runner.tracking.summary import SUMMARY, best_epoch, numeric

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint/state.pt"
# A trial's status (tag `status`, the results table) -> its MLflow run status. STOPPED: a scheduler (ASHA)
# ended it early, by design; MLflow has no such status, and the run did end normally.
RUN_STATUS = {"FINISHED": "FINISHED", "STOPPED": "FINISHED", "FAILED": "FAILED", "KILLED": "KILLED"}


class Tracker:
    """MLflow writer for one `runner run` invocation. Use as a context manager (the exit status ends
    every open run) or call `close(status)`; several child runs may be open at once, so this uses
    MlflowClient with explicit run ids, never the fluent active-run stack."""

    def __init__(self, experiment_name: str, tracking_uri: str | None = None, *, root: str | os.PathLike = ".",
                 outage_timeout_s: float = 300.0, probe_timeout_s: float = 3.0,
                 staging_dir: str | os.PathLike | None = None, datasets: Mapping[str, Any] | None = None) -> None:
        """`datasets`: data path -> `runner.data.Meta` already read by the caller (read here otherwise)."""
        # Reached now (an unreachable server fails here, in seconds), written to only from start_parent:
        # a run refused after this point (e.g. by the resource check) leaves no experiment, run or file.
        self._uri = reach(tracking_uri, root, probe_timeout_s)
        self._root = root
        self._client: Any = None
        self.uri = redact(self._uri)  # for messages only; the client keeps the real one
        self.outage_timeout_s = outage_timeout_s
        self.experiment_name = experiment_name
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.invocation_id: str | None = None
        self._heartbeat: liveness.Heartbeat | None = None  # for `runner mlflow reconcile`
        self._metrics: MetricBatcher | None = None  # per-epoch metrics: batched per run, sent by threads
        self._open: dict[str, str] = {}  # run id -> trial id, for runs not yet ended
        self._seen: set[tuple[str, str, int]] = set()  # (run, key, step): a re-reported epoch is skipped
        self._history: dict[str, dict[int, dict[str, float]]] = {}
        self._rows: dict[str, dict] = {}
        self._datasets = DataSets(datasets)
        self._trials: dict[str, tuple[float, TrialNeed | None, Any]] = {}  # run id -> (start, need, data set)
        self._outage = Outage(self.uri)  # one report per outage for both writers
        self._queue = WriteQueue(self.uri, outage_timeout_s, self._outage)
        self._staging_dir = staging_dir
        self._staged: Path | None = None

    @property
    def client(self) -> Any:
        """The MlflowClient, created on first use (for sqlite, creating the client creates the file)."""
        if self._client is None:
            self._client = connect(self._uri, self._root)
        return self._client

    @property
    def _staging(self) -> Path:
        """Artifacts wait here until uploaded (a queued upload must survive its source being deleted)."""
        if self._staged is None:
            self._staged = Path(tempfile.mkdtemp(prefix="runner-mlflow-", dir=self._staging_dir))
        return self._staged

    def _open_experiment(self) -> str:
        if self.experiment_id is None:
            name = self.experiment_name
            try:
                self.experiment_id = self._queue.call("open experiment", lambda: ensure_experiment(self.client, name))
            except TrackingError as exc:
                raise TrackingError(f"MLflow at {self.uri}: cannot open experiment {name!r}: {exc}") from exc
        return self.experiment_id

    def flush(self, timeout_s: float | None = None) -> int:
        """Retry queued writes until all are delivered or `timeout_s` passes; returns how many are left."""
        deadline = time.monotonic() + (self.outage_timeout_s if timeout_s is None else timeout_s)
        left = self._metrics.flush(None, timeout_s=deadline - time.monotonic()) if self._metrics else 0
        return left + self._queue.flush(max(0.0, deadline - time.monotonic()))

    def backlog(self) -> int:
        """Writes and metrics waiting to be delivered."""
        return len(self._queue.pending) + (self._metrics.depth() if self._metrics else 0)

    def _batcher(self) -> MetricBatcher:
        if self._metrics is None:
            self._metrics = MetricBatcher(self.client, is_transient, uri=self.uri, outage=self._outage)
        return self._metrics

    # ---- runs ----------------------------------------------------------------------------------
    def _find(self, filter_string: str) -> Any | None:
        runs = self._queue.call("search runs", lambda: self.client.search_runs(
            [self.experiment_id], filter_string, max_results=1, order_by=["attributes.start_time DESC"]))
        return runs[0] if runs else None

    def start_parent(self, *, spec_path: str | None = None, run_name: str | None = None,
                     invocation_id: str | None = None, resume: bool = False,
                     tags: Mapping[str, str] | None = None) -> str:
        """The invocation's parent run. With `resume`, reuse the parent tagged `invocation_id` (or, with
        no id, the latest parent of this experiment) so `runner run --resume` continues its runs."""
        self._open_experiment()
        found = None
        if resume:
            where = "tags.`runner.kind` = 'parent'"
            if invocation_id:
                where += f" and tags.`runner.invocation_id` = {quote(invocation_id)}"
            found = self._find(where)
        if found is not None:
            self.parent_run_id = found.info.run_id
            self.invocation_id = found.data.tags.get("runner.invocation_id", invocation_id)
            self._queue.call("reopen parent", lambda: self.client.update_run(self.parent_run_id, "RUNNING"))
            driver = [RunTag(k, v) for k, v in liveness.driver_tags().items()]  # this process drives it now
            self._queue.call("driver tags", lambda: self.client.log_batch(self.parent_run_id, tags=driver))
        else:
            self.invocation_id = invocation_id or uuid.uuid4().hex
            all_tags = {"runner.kind": "parent", "runner.invocation_id": self.invocation_id,
                        **invocation_tags(spec_path), **liveness.driver_tags(), **(tags or {})}
            run = self._queue.call("create parent run", lambda: self.client.create_run(
                self.experiment_id, tags=all_tags, run_name=run_name or self.experiment_name))
            self.parent_run_id = run.info.run_id
        self._heartbeat = liveness.Heartbeat(self.client, self.parent_run_id)
        self._open[self.parent_run_id] = ""
        return self.parent_run_id

    def trial_run(self, trial_id: str) -> tuple[str, str] | None:
        """(run id, MLflow status) of this invocation's run for `trial_id`, if it has one."""
        found = self._find_trial(trial_id)
        return None if found is None else (found.info.run_id, found.info.status)

    def _find_trial(self, trial_id: str) -> Any | None:
        return self._find(f"tags.`mlflow.parentRunId` = {quote(self.parent_run_id or '')} and "
                          f"tags.`runner.trial_id` = {quote(trial_id)}")

    def start_trial(self, trial_id: str, name: str, config: Mapping[str, Any], *,
                    tags: Mapping[str, Any] | None = None, reported: Mapping[str, Any] | None = None) -> str:
        """A child run for one trial; on a resumed parent the trial's earlier child is reused and its
        logged steps are remembered, so re-reported epochs are not logged twice."""
        if self.parent_run_id is None:
            raise TrackingError("start_parent() must be called before start_trial()")
        found = self._find_trial(trial_id)
        extra = {k: redact(str(v)) for k, v in (tags or {}).items()}
        extra.update({f"reported.{k}": redact(str(v)) for k, v in (reported or {}).items()})
        if found is not None:
            run_id = found.info.run_id
            self._load_history(run_id, found.data.metrics)
            if found.info.status != "FINISHED":
                self._queue.call("reopen trial run", lambda: self.client.update_run(run_id, "RUNNING"))
                extra["status"] = "RUNNING"
            self._queue.submit(f"tags of {name}", lambda: self.client.log_batch(
                run_id, tags=[RunTag(k, v) for k, v in extra.items()], synchronous=True))
        else:
            run_tags = {"mlflow.parentRunId": self.parent_run_id, "runner.kind": "trial",
                        "runner.trial_id": trial_id, "runner.invocation_id": self.invocation_id or "",
                        "status": "RUNNING", **extra}
            run = self._queue.call(f"create run for {name}", lambda: self.client.create_run(
                self.experiment_id, tags=run_tags, run_name=name))
            run_id = run.info.run_id
            params = [Param(k, v) for k, v in flatten_params(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                chunk = params[i:i + 100]
                self._queue.submit(f"params of {name}", lambda c=chunk: self.client.log_batch(
                    run_id, params=c, synchronous=True))
            self._log_config(run_id, config)
        data = self._datasets.input_of((config.get("data") or {}).get("path"))
        if data is not None and found is None:
            self._queue.submit(f"data set of {name}", lambda: self.client.log_inputs(run_id, datasets=[data]))
        scaling = config.get("scaling")
        self._trials[run_id] = (time.monotonic(), need_of(name, scaling) if scaling else None, data)
        self._open[run_id] = trial_id
        self._history.setdefault(run_id, {})
        self._rows[run_id] = {"trial": name, "trial_id": trial_id, "run_id": run_id, "status": "RUNNING",
                              "model": (config.get("model") or {}).get("name"), "reported": dict(reported or {})}
        return run_id

    def _load_history(self, run_id: str, latest: Mapping[str, float]) -> None:
        history = self._history.setdefault(run_id, {})
        for key in latest:
            for metric in self._queue.call("read history", lambda k=key: self.client.get_metric_history(run_id, k)):
                self._seen.add((run_id, key, metric.step))
                history.setdefault(metric.step, {})[key] = metric.value

    def _log_config(self, run_id: str, config: Mapping[str, Any]) -> None:
        config = mask_secrets(config)  # resolved.yaml is read by anyone who can read the run, like params
        from runner.spec.load import dump_yaml  # the one YAML writer

        text, filename = dump_yaml(dict(config)), "resolved.yaml"
        self._log_file(run_id, filename, "config", text=text)

    def _log_file(self, run_id: str, filename: str, artifact_dir: str, *, text: str | None = None,
                  source: Path | None = None) -> Path:
        """Stage the file (so a queued upload survives the source being deleted), then queue the upload."""
        folder = self._staging / run_id / artifact_dir
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / filename
        if text is not None:
            staged.write_text(text)
        elif source is not None:
            shutil.copy2(source, staged)
        self._queue.submit(f"artifact {artifact_dir}/{filename}",
                     lambda: self.client.log_artifact(run_id, str(staged), artifact_dir))
        return staged

    def log_epoch(self, run_id: str, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """One epoch's numeric metrics at `step` (default: `metrics["epoch"]`, 1-based as train.fit reports
        it, which is also the checkpoint's `epoch`); keys already logged at this step (a restarted trial
        re-reporting an epoch) are skipped, so the history stays one value per step."""
        step = int(metrics["epoch"]) if step is None else step
        now = int(time.time() * 1000)
        fresh = [Metric(k, v, now, int(step)) for k, v in numeric(metrics).items()
                 if (run_id, k, int(step)) not in self._seen]
        if not fresh:
            self._queue.drain()
            return
        self._seen.update((run_id, m.key, m.step) for m in fresh)
        self._history.setdefault(run_id, {}).setdefault(int(step), {}).update({m.key: m.value for m in fresh})
        self._batcher().add(run_id, fresh)  # batched with the run's other epochs, sent by other threads

    def finish_trial(self, run_id: str, status: str = "FINISHED", checkpoint: str | os.PathLike | None = None,
                     history: Mapping[int, Mapping[str, float]] | None = None,
                     costs: Mapping[str, float] | None = None) -> dict:
        """End a trial's run: summary metrics at the best checkpoint, tags, plots, the checkpoint file.
        `status` is one of RUN_STATUS (STOPPED: ended early by a scheduler). `costs`: the trial's
        `cost.trial_cost` as its caller measured it (the Tune bridge: the same figures as results.csv);
        without them, measured from `start_trial`. Returns the trial's results row.
        A failure to stage an artifact (a full disk) is tagged on the run (`artifact_error`); the run still ends."""
        history = dict(history or self._history.get(run_id, {}))
        row = self._rows.setdefault(run_id, {"trial": run_id, "run_id": run_id, "reported": {}})
        tags = {"status": status}
        from runner.core import checkpoint as checkpoint_state  # lazy: `runner mlflow reconcile` needs no torch

        try:
            state = checkpoint_state.load(checkpoint) if checkpoint else None
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint must not take the grid's driver down
            log.warning("trial %s: checkpoint %s unreadable (%s); run ended without it", run_id, checkpoint, exc)
            state, tags["checkpoint_error"] = None, f"{checkpoint}: {exc}"[:500]
        best = best_epoch(history)
        summary = dict(history.get(best, {})) if best is not None else {}
        if state is not None:
            summary.update(numeric(state.get("metrics") or {}))
            best = int(state.get("epoch", best or 0))
            for key in ("params", "within_budget"):
                if key in state:
                    tags[key] = str(state[key]).lower() if key == "within_budget" else str(state[key])
                    row[key] = state[key]
        try:
            self._log_trial_files(run_id, state, checkpoint, history, str(row.get("trial", "")))
        except OSError as exc:  # e.g. ENOSPC in the staging folder: this run lacks files, the grid goes on
            log.error("trial %s: could not stage its artifacts (%s); its run is marked artifact_error", run_id, exc)
            tags["artifact_error"] = str(exc)[:500]
        last = max(history) if history else (best or 0)
        if best is not None:
            tags["best_epoch"] = str(best)
        if history:
            tags["epochs"] = str(last)
        model: dict[str, str] = {}  # filled when the queue delivers the logged model, read by the summary
        if state is not None:
            from runner.tracking import pyfunc  # lazy, like torch above

            trial_tags = {"trial": str(row.get("trial", "")), "within_budget": tags.get("within_budget", "")}
            self._queue.submit("logged model", lambda: model.setdefault("id", pyfunc.log(
                self.client, self.experiment_id, run_id, state, step=best or 0,
                params=flatten_params(state.get("config") or {}), tags=trial_tags)))
        started, need, data = self._trials.pop(run_id, (None, None, None))
        if costs is None:
            costs = {} if need is None else cost.trial_cost(
                need, time.monotonic() - started, [m.get("images_per_s", math.nan) for m in history.values()])
        fresh = {k: v for k, v in summary_of.best_values(summary).items() if (run_id, k, last) not in self._seen}
        self._queue.submit("trial summary", lambda: self.client.log_batch(  # model id: set by the write above
            run_id, metrics=summary_of.metrics(fresh, costs, last, model.get("id"), data),
            tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True))
        ended = RUN_STATUS.get(status, "FAILED")
        self._queue.submit("end trial run", lambda: self.client.set_terminated(run_id, ended))
        self._open.pop(run_id, None)
        row.update(status=status, epochs=last if history else None, best_epoch=best,
                   **{k: summary.get(k) for k in SUMMARY}, **costs)
        return row

    def _log_trial_files(self, run_id: str, state: dict | None, checkpoint: str | os.PathLike | None,
                         history: Mapping[int, Mapping[str, float]], title: str) -> None:
        from runner.core import checkpoint as checkpoint_state

        (self._staging / run_id).mkdir(parents=True, exist_ok=True)
        if state is not None:
            slim = checkpoint_state.save(checkpoint_state.for_inference(state), self._staging / run_id / "slim")
            self._log_file(run_id, "state.pt", "checkpoint", source=slim)  # training state stays in Ray's storage
            if state.get("val_confusion") is not None:
                png = self._staging / run_id / "confusion.png"
                report.plot_confusion(state["val_confusion"], state.get("classes") or [], png)
                self._log_file(run_id, "confusion.png", "plots", source=png)
        if history:
            png = self._staging / run_id / "curves.png"
            report.plot_curves(history, png, title=title)
            self._log_file(run_id, "curves.png", "plots", source=png)

    def finish_parent(self, status: str = "FINISHED", rows: list[dict] | None = None) -> list[dict]:
        """Attach the results table (CSV + Markdown) to the parent and end it; returns the display rows."""
        rows = rows if rows is not None else list(self._rows.values())
        table = report.results_table(rows)
        if self.parent_run_id:
            now, parent = int(time.time() * 1000), self.parent_run_id
            totals = [Metric(k, v, now, 0) for k, v in cost.total(rows).items()]
            self._queue.submit("grid cost", lambda: self.client.log_batch(parent, metrics=totals, synchronous=True))
            self._log_file(self.parent_run_id, "results.csv", "results", text=report.to_csv_text(table))
            self._log_file(self.parent_run_id, "results.md", "results", text=report.to_markdown(table))
            run_id = self.parent_run_id
            ended = RUN_STATUS.get(status, "FAILED")
            self._queue.submit("end parent run", lambda: self.client.set_terminated(run_id, ended))
            self._open.pop(run_id, None)
        return table

    def close(self, status: str = "FINISHED", timeout_s: float | None = None) -> None:
        """End every run still open with `status`, deliver queued writes, and raise `TrackingError` if
        an outage outlasted `timeout_s` (default `outage_timeout_s`). Safe to call twice."""
        if self._queue.closed:
            return
        self._queue.closed = True
        if self._heartbeat is not None:
            self._heartbeat.stop()
        deadline = time.monotonic() + (self.outage_timeout_s if timeout_s is None else timeout_s)
        left = self._metrics.close(timeout_s=deadline - time.monotonic()) if self._metrics else 0
        # trials first, then the parent; queued behind any writes still pending, delivered by flush
        ended = RUN_STATUS.get(status, "FAILED")
        for run_id in sorted(self._open, key=lambda r: not self._open[r]):
            self._queue.pending.append(("end open run", lambda r=run_id: self.client.set_terminated(r, ended)))
        self._open.clear()
        left += self._queue.flush(max(0.0, deadline - time.monotonic()))
        if self._staged is not None:
            shutil.rmtree(self._staged, ignore_errors=True)
        last_error = self._queue.last_error or (self._metrics.last_error if self._metrics else None)
        if self._metrics and self._metrics.errors:  # a bug in what we sent, not an outage: as the queue would
            raise TrackingError(f"MLflow at {self.uri} refused {len(self._metrics.errors)} metric batch(es): "
                                f"{self._metrics.errors[0]}")
        if left:
            raise TrackingError(
                f"{left} MLflow writes (params/metrics/artifacts/run ends) could not be delivered to "
                f"{self.uri} within {self.outage_timeout_s if timeout_s is None else timeout_s:.0f}s "
                f"(last error: {redact(str(last_error))}). The runs in experiment "
                f"{self.experiment_name!r} are incomplete; once the server is back, `runner mlflow reconcile` "
                "ends runs left RUNNING.")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if kind is None:
            self.close("FINISHED")
            return
        try:  # the error already on its way out matters more than undelivered writes
            self.close("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")
        except TrackingError as err:
            log.error("%s", err)
