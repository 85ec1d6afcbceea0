"""`amalia-vl`: the command-line face of the pipeline.

Every command calls the same stage functions as the Prefect flow and `dvc.yaml`.
Expected failures (missing inputs, bad config, bad data) print one line saying what is
wrong and which command fixes it, and exit with status 1; no traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from components.errors import AmaliaError
from components.stages import ORDER, STAGES

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

console = Console()
err_console = Console(stderr=True)

STAGE_HELP = "\n".join(f"  {s.name:<10} {s.summary}" for s in STAGES.values())

app = typer.Typer(
    name="amalia-vl",
    help=(
        "Train, evaluate and ship AMALIA-VL, a European Portuguese (pt-PT) vision-language "
        "model.\n\nStart with `amalia-vl retrain` (a full tiny retrain on the embedded data), "
        "then `amalia-vl ask IMAGE \"pergunta\"`. Config comes from params.yaml (profiles: "
        "tiny, ci, paper); tracking goes to MLflow (sqlite:///mlflow.db unless "
        "MLFLOW_TRACKING_URI is set)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Manage the embedded dataset under data/.", no_args_is_help=True)
app.add_typer(data_app, name="data")
tasks_app = typer.Typer(help="Evaluation tasks (one YAML each): list, show prompts, export "
                        "to lmms-eval.", no_args_is_help=True)
app.add_typer(tasks_app, name="eval-tasks")
server_app = typer.Typer(
    help="Local Prefect and MLflow servers in the background (start | stop | status).\n\n"
         "`start` runs `prefect server start` and `mlflow server` on 127.0.0.1, each in its "
         "own process group, logs and pid files in the state folder ($AMALIA_HOME, else "
         ".amalia/ in the repo, with the SQLite databases and MLflow artifacts), waits until "
         "both answer their health checks and prints the URLs and the lines to export "
         "(PREFECT_API_URL, MLFLOW_TRACKING_URI). Starting twice is harmless.",
    no_args_is_help=True)
app.add_typer(server_app, name="server")

ProfileOpt = typer.Option(None, "--profile", "-p",
                          help="params.yaml profile (default: its `profile` key, or "
                               "AMALIA_PROFILE)")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="show progress bars")
NprocOpt = typer.Option(1, "--nproc", help="training stages: processes per node, started by "
                        "torchrun (one per GPU; on CPU: gloo, at most one per core)")
NnodesOpt = typer.Option(1, "--nnodes", help="training stages: nodes of a multi-node launch "
                         "(each runs the same command; needs --rdzv-endpoint)")
NodeRankOpt = typer.Option(None, "--node-rank", help="this node's rank in a multi-node launch")
RdzvOpt = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT of the torchrun rendezvous "
                       "(node 0), as a Kubernetes PyTorchJob / JobSet passes it")
RestartOpt = typer.Option(False, "--restart", help="training stages: discard the stage's "
                          "checkpoints instead of resuming from the newest one")


def _launch(nproc: int, nnodes: int, node_rank: int | None, rdzv_endpoint: str | None):
    from components.train.distributed import Launch

    return Launch(nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)


def _fail(exc: AmaliaError) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _run_dir(run_dir: Path | None, settings) -> Path:
    from components.manifest import new_run_dir

    return run_dir if run_dir else new_run_dir(Path(settings.runs_dir))


@app.command()
def retrain(
    profile: str | None = ProfileOpt,
    run_dir: Path | None = typer.Option(None, help="run directory (default: new under runs/)"),
    start: str | None = typer.Option(None, help="first stage to run (default: validate)"),
    stop: str | None = typer.Option(None, help="last stage to run (default: register)"),
    progress: bool = ProgressOpt,
    nproc: int = NprocOpt,
    nnodes: int = NnodesOpt,
    node_rank: int | None = NodeRankOpt,
    rdzv_endpoint: str | None = RdzvOpt,
    restart: bool = RestartOpt,
    cache: bool = typer.Option(True, help="reuse stages whose code, settings, upstream "
                               "outputs and data match a finished stage of an earlier run"),
) -> None:
    """Full retrain as a Prefect flow: validate -> translate -> mix -> align -> sft -> dpo
    -> evaluate -> register, tracked in MLflow, ending with amalia-vl@challenger.

    With --nproc N the training stages (align, sft, dpo) run on N processes through
    torchrun; a training stage interrupted earlier resumes from its newest checkpoint.
    An unchanged re-run reuses every finished stage (--no-cache runs them all)."""
    try:
        from components.settings import load_settings

        settings = load_settings(profile)
        for name in (start, stop):
            if name and name not in STAGES:
                raise AmaliaError(f"unknown stage '{name}'", f"stages are: {', '.join(ORDER)}")
        target = _run_dir(run_dir, settings)
        launch = _launch(nproc, nnodes, node_rank, rdzv_endpoint)
        if launch.distributed:
            from components.train.distributed import check_nproc

            check_nproc(nproc, nnodes)
        from components.pipeline import stages_from
        from components.plan.preflight import preflight_retrain

        # before Prefect starts and before validate: a recipe that cannot run fails now
        preflight_retrain(settings, tuple(stages_from(start, stop)), run_dir,
                          nproc * nnodes)
        from components.servers import prepare_prefect_env

        prepare_prefect_env()  # before Prefect is imported: a patient temporary server
        from flows.retrain import retrain_flow

        summary = retrain_flow(profile=settings.profile, run_dir=str(target), start=start,
                               stop=stop, progress=progress, nproc=nproc, nnodes=nnodes,
                               node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                               restart=restart, cache=cache)
    except AmaliaError as exc:
        _fail(exc)
    except RuntimeError as exc:  # Prefect's temporary server did not come up
        from components.servers import ephemeral_failure

        if (failure := ephemeral_failure(exc)) is None:
            raise
        _fail(failure)
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    run_dir = Path(summary["run_dir"])
    if summary.get("reused"):
        console.print(f"reused unchanged stages: {', '.join(summary['reused'])} "
                      "(--no-cache runs them again)")
    results_path = run_dir / "evaluate" / "results.json"
    if results_path.exists():
        results = json.loads(results_path.read_text())
        table = Table(title="Held-out pt-PT tasks (candidate after dpo)")
        for col in ("task", "metric", "n", "score", "chance"):
            table.add_column(col)
        for task, r in results.items():
            if not task.startswith("_"):
                table.add_row(task, r["metric"], str(r["n"]), f"{r['score']:.3f}",
                              f"{r['chance']:.3f}")
        console.print(table)
    console.print(f"run dir: {run_dir}")
    console.print(f"MLflow parent run: {summary['mlflow_parent_run_id']}")
    if summary.get("registration"):
        reg = summary["registration"]
        console.print(f"registered: {reg['version_uri']} -> alias {reg['model_uri']}")


@app.command(help=f"Run one stage into <run-dir>/<stage>/.\n\nStages:\n\n{STAGE_HELP}\n\n"
             "Training stages (align, sft, dpo) run on the transformers Trainer; --nproc N "
             "starts N processes with torchrun. Re-running an interrupted training stage "
             "resumes from its newest checkpoint (--restart discards them).")
def stage(
    name: str = typer.Argument(..., help=f"one of: {', '.join(ORDER)}"),
    run_dir: Path | None = typer.Option(
        None, help="run directory holding earlier stages' outputs (default: new under runs/)"),
    profile: str | None = ProfileOpt,
    progress: bool = ProgressOpt,
    inputs: list[str] | None = typer.Option(
        None, "--input", help="validate only: data to ingest instead of data/ (repeatable): "
        "[FORMAT:]PATH | s3://bucket/key | hf://ID_OR_PATH, optionally "
        "?source=..&language=..&split=..&task_family=..; formats: llava, jsonl, hf, parquet, "
        "imagefolder (auto-detected)"),
    nproc: int = NprocOpt,
    nnodes: int = NnodesOpt,
    node_rank: int | None = NodeRankOpt,
    rdzv_endpoint: str | None = RdzvOpt,
    restart: bool = RestartOpt,
) -> None:
    try:
        from components.pipeline import run_tracked_stage
        from components.settings import load_settings
        from components.stages import check_prerequisites, get_spec

        get_spec(name)
        if inputs and name != "validate":
            raise AmaliaError("--input applies to the validate stage only")
        settings = load_settings(profile,
                                 overrides={"ingest": {"inputs": inputs}} if inputs else None)
        target = _run_dir(run_dir, settings)
        launch = _launch(nproc, nnodes, node_rank, rdzv_endpoint)
        if launch.distributed:
            from components.train.distributed import TRAINING_STAGES, check_nproc

            if name not in TRAINING_STAGES:
                raise AmaliaError(f"--nproc applies to the training stages "
                                  f"({', '.join(TRAINING_STAGES)}), not '{name}'")
            check_nproc(nproc, nnodes)
        check_prerequisites(name, target, settings)  # fail before MLflow opens a run
        from components.pipeline import shard_count

        if shard_count(name, settings) > 1:  # a Prefect flow mapping shards over tasks
            from flows.sharded import run_sharded_stage

            manifest = run_sharded_stage(name, settings, target, None,
                                         overrides={"ingest": {"inputs": inputs}}
                                         if inputs else None, cache=False)
        else:
            manifest = run_tracked_stage(name, settings, target, progress=progress,
                                         restart=restart, launch=launch)
    except AmaliaError as exc:
        _fail(exc)
    console.print(f"[green]{name}[/] done -> {target / name}  counts={manifest['counts']}")


@app.command()
def promote(
    name: str | None = typer.Option(None, help="registered model name (default: "
                                    "register.model_name)"),
    force: bool = typer.Option(False, help="promote even if the gate refuses (needs --reason)"),
    reason: str | None = typer.Option(None, help="why a --force promotion is needed "
                                      "(recorded with who and when in the version tags)"),
    profile: str | None = ProfileOpt,
) -> None:
    """Gated promotion: point `champion` at `challenger` only if a paired bootstrap over
    both versions' per-sample scores says it is better (params.yaml `register.gate`)."""
    try:
        from components.registry import promote as do_promote
        from components.settings import load_settings

        reg = load_settings(profile).register_
        decision = do_promote(name or reg.model_name, from_alias=reg.alias,
                              to_alias=reg.champion_alias, force=force, reason=reason,
                              gate=reg.gate)
    except AmaliaError as exc:
        _fail(exc)
    if decision.gate is not None:
        _print_gate(decision)
    colour = "green" if decision.promoted else "yellow"
    verdict = "promoted" if decision.promoted else "kept"
    console.print(f"[{colour}]{verdict}[/]: {decision.reason} "
                  f"(challenger v{decision.challenger_version}, "
                  f"champion before v{decision.champion_version_before})", highlight=False)


def _print_gate(decision) -> None:
    """The gate's per-task table: champion, challenger, delta, CI, verdict."""
    g = decision.gate
    table = Table(title=f"gate: champion v{decision.champion_version_before} vs challenger "
                        f"v{decision.challenger_version}: paired bootstrap, {g.resamples} "
                        f"resamples, {g.confidence:.0%} CI, margin {g.margin:.3f}, max task "
                        f"drop {g.max_task_drop:.3f}")
    for col in ("task", "n", "champion", "challenger", "delta", "CI", "verdict"):
        table.add_column(col, justify="left" if col in ("task", "verdict") else "right",
                         no_wrap=col in ("CI", "delta", "verdict"))

    def num(x, sign=""):
        return "-" if x is None else f"{x:{sign}.3f}"

    def interval(lo, hi):
        return "-" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"

    for t in g.tasks:
        verdict = f"[green]{t.verdict}[/]" if t.ok else f"[red]{t.verdict}[/]"
        table.add_row(t.task, str(t.n), num(t.champion), num(t.challenger), num(t.delta, "+"),
                      interval(t.ci_low, t.ci_high), verdict)
    table.add_row("mean", "", "", "", num(g.mean_delta, "+"), interval(g.ci_low, g.ci_high),
                  "[green]passes[/]" if g.passed else "[red]refused[/]")
    console.print(table)


@app.command()
def rollback(
    name: str | None = typer.Option(None, help="registered model name (default: "
                                    "register.model_name)"),
    reason: str | None = typer.Option(None, help="why (recorded in the version tags)"),
    profile: str | None = ProfileOpt,
) -> None:
    """Point `champion` back at the version it replaced (the promotion history)."""
    try:
        from components.registry import rollback as do_rollback
        from components.settings import load_settings

        reg = load_settings(profile).register_
        result = do_rollback(name or reg.model_name, alias=reg.champion_alias, reason=reason)
    except AmaliaError as exc:
        _fail(exc)
    console.print(f"[green]rolled back[/]: {result.alias} of {result.model_name} is "
                  f"v{result.to_version} again (was v{result.from_version})", highlight=False)


@app.command()
def ask(
    image: Path = typer.Argument(..., help="an image file (any size, RGB/RGBA/grey)"),
    question: str = typer.Argument(..., help="a question in pt-PT"),
    model: str = typer.Option("models:/amalia-vl@challenger",
                              help="save_pretrained folder or MLflow model URI"),
    max_new_tokens: int = typer.Option(32, help="answer length limit in tokens"),
) -> None:
    """Answer a question about an image with a trained model (greedy)."""
    try:
        from components.images import open_rgb

        open_rgb(image)  # fail on a bad image before importing torch or loading a model
        from transformers.utils import logging as hf_logging

        from components.inference import ask as do_ask

        hf_logging.disable_progress_bar()  # a weight-loading bar would trail the answer
        from components.registry import resolve_model_dir

        answer = do_ask(resolve_model_dir(model), image, question, max_new_tokens)
    except AmaliaError as exc:
        _fail(exc)
    console.print(answer, highlight=False)


@data_app.command("generate")
def data_generate(
    out: Path = typer.Option(Path("data"), help="output folder"),
    profile: str | None = ProfileOpt,
) -> None:
    """Regenerate the embedded dataset (deterministic: same seed, same bytes).
    Afterwards `dvc add data && dvc push` records the new version."""
    try:
        from components.data.synthetic import generate
        from components.settings import load_settings

        counts = generate(out, load_settings(profile))
    except AmaliaError as exc:
        _fail(exc)
    console.print(f"wrote {out}: {counts}")


@app.command()
def score(
    predictions: Path = typer.Argument(..., help="JSONL: one object a line with `prediction` "
                                       "and `answers` (a list or a single string)"),
    metric: str = typer.Option(..., "--metric", "-m", help="e.g. anls, relaxed_accuracy, "
                               "vqa_accuracy, exact_match, mc_accuracy, token_f1, pope_f1, cider"),
    mode: str = typer.Option("pt", "--mode", help="`pt` (lmms-eval's scorer plus the pt-PT "
                             "extensions) or `lmms` (lmms-eval's scorer as is, comparable with "
                             "published tables)"),
    as_json: bool = typer.Option(False, "--json", help='print one JSON object {"metric", '
                                 '"score", "n", "scores"}'),
) -> None:
    """Re-score saved predictions with a standard metric, without generating. Extra fields of
    a line (`options`, `profile`, `category`, ...) reach the metrics that read them."""
    try:
        from components.metrics.score_file import score_command

        text = score_command(metric, predictions, as_json, mode=mode)
    except AmaliaError as exc:
        _fail(exc)
    typer.echo(text)


@app.command()
def variety(
    kind: str = typer.Option("cues", help="detector: `cues` (offline lexical/morpho-syntactic "
                             "model) or `hf` (a Hugging Face classifier, see --model)"),
    model: str | None = typer.Option(None, help="weights JSON for `cues`, or a classifier "
                                     "id/folder for `hf` (e.g. liaad/PtVId)"),
) -> None:
    """pt-PT vs pt-BR: read one text per line on stdin, write one JSON line per input with
    `label` (pt-PT, pt-BR or unknown) and `score` (probability of pt-PT)."""
    try:
        from components.variety.report import variety_command

        variety_command(sys.stdin, sys.stdout, kind=kind, model=model)
    except AmaliaError as exc:
        _fail(exc)


@tasks_app.command("list")
def eval_tasks_list(profile: str | None = ProfileOpt) -> None:
    """Every known task: where its data comes from, split and metrics."""
    try:
        from components.evaltasks.spec import list_tasks
        from components.settings import load_settings

        rows = list_tasks(load_settings(profile).evaluate.task_dirs)
    except AmaliaError as exc:
        _fail(exc)
    table = Table()
    for col in ("task", "group", "dataset", "split", "metrics"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["task"], r["group"] or "", r["dataset"], r["split"] or "",
                      ", ".join(r["metrics"]))
    console.print(table)


@tasks_app.command("show")
def eval_tasks_show(task: str = typer.Argument(..., help="task or group name"),
                    profile: str | None = ProfileOpt) -> None:
    """The exact pt-PT prompt a task sends, on its example document."""
    try:
        from components.evaltasks.examples import example_prompt
        from components.evaltasks.spec import resolve
        from components.settings import load_settings

        specs = resolve([task], load_settings(profile).evaluate.task_dirs)
        for spec in specs:
            console.print(f"[bold]{spec.task}[/]\n{example_prompt(spec)}\n", highlight=False)
    except AmaliaError as exc:
        _fail(exc)


@tasks_app.command("export-lmms")
def eval_tasks_export(
    out_dir: Path = typer.Argument(..., help="folder to pass to lmms-eval --include_path"),
    task: list[str] | None = typer.Option(None, "--task", help="only these tasks (repeatable)"),
    run_dir: Path | None = typer.Option(None, help="include the embedded tasks of this run"),
    profile: str | None = ProfileOpt,
) -> None:
    """Write our task YAMLs as an lmms-eval include path (use with `--model llava_hf`)."""
    try:
        from components.evaltasks.lmms import export_lmms_eval
        from components.settings import load_settings

        settings = load_settings(profile)
        files = export_lmms_eval(
            out_dir, task or None, extra_dirs=settings.evaluate.task_dirs,
            datasets=settings.evaluate.datasets, run_dir=run_dir,
            data_root=settings.data_dir if run_dir else None,
            default_max_new_tokens=settings.evaluate.max_new_tokens)
    except AmaliaError as exc:
        _fail(exc)
    console.print(f"wrote {len(files)} files to {out_dir}; run: lmms-eval --model llava_hf "
                  f"--model_args pretrained=<model folder> --include_path {out_dir} "
                  f"--tasks amalia_vl_suite")


StateDirOpt = typer.Option(None, "--state-dir", help="pid files, logs, databases (default: "
                           "$AMALIA_HOME, else .amalia/ in the repo)")


def _print_servers(infos) -> None:
    table = Table()
    for col in ("server", "state", "pid", "url", "healthy"):
        table.add_column(col)
    for i in infos:
        table.add_row(i.name, i.state, str(i.pid or "-"), i.url,
                      "yes" if i.healthy else "no")
    console.print(table)


@server_app.command("start")
def server_start(
    prefect_port: int = typer.Option(4200, "--prefect-port", help="Prefect API and UI port"),
    mlflow_port: int = typer.Option(5000, "--mlflow-port", help="MLflow tracking and UI port"),
    timeout: float = typer.Option(300, "--timeout", help="seconds to wait for each health "
                                  "check (a first start migrates the databases)"),
    state_dir: Path | None = StateDirOpt,
) -> None:
    """Start Prefect (UI + API at http://127.0.0.1:PORT) and MLflow in the background and
    wait until both are healthy; then export the two lines it prints."""
    from components.servers import start

    try:
        infos = start(state_dir, ports={"prefect": prefect_port, "mlflow": mlflow_port},
                      timeout=timeout)
    except AmaliaError as exc:
        _fail(exc)
    _print_servers(infos)
    console.print("UIs: " + "  ".join(f"{i.name} {i.url}" for i in infos), highlight=False)
    console.print("use them from this shell (or put them in your profile):", highlight=False)
    for i in infos:
        typer.echo(f"export {i.env_line}")


@server_app.command("status")
def server_status(state_dir: Path | None = StateDirOpt) -> None:
    """Each server: running or stopped, pid, URL, whether it answers its health check."""
    from components.servers import status

    infos = status(state_dir)
    _print_servers(infos)
    for i in infos:
        if i.state == "running":
            typer.echo(f"export {i.env_line}")


@server_app.command("stop")
def server_stop(state_dir: Path | None = StateDirOpt) -> None:
    """Terminate both servers (their whole process groups) and remove the pid files."""
    from components.servers import stop

    for name, outcome in stop(state_dir).items():
        console.print(f"{name}: {outcome}", highlight=False)


@app.command("stages")
def list_stages() -> None:
    """List the pipeline stages in order, with what each needs."""
    table = Table()
    for col in ("stage", "needs", "what it does"):
        table.add_column(col)
    for s in STAGES.values():
        table.add_row(s.name, ", ".join(s.requires) or "data/", s.summary)
    console.print(table)


@app.command("plan")
def plan(
    profile: str | None = ProfileOpt,
    gpus: int | None = typer.Option(None, "--gpus", min=1, help="GPUs of every training "
                                    "stage (default: plan.<stage>.gpus)"),
    gpu: str | None = typer.Option(None, "--gpu", help="GPU type of every stage, e.g. "
                                   "H100-SXM, H100-PCIe, H200, A100-80GB (default: "
                                   "plan.<stage>.gpu; null there = this machine)"),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="a run whose mix exists: its "
                                        "measured length index replaces the assumed tokens "
                                        "per sample"),
    as_json: bool = typer.Option(False, "--json", help='print one JSON object {"gpus", "gpu", '
                                 '"stages": {STAGE: {"peak_gib", "parts_gib", '
                                 '"tokens_per_step", "samples_per_step", "rows_per_step", '
                                 '"steps_per_epoch", "hours", "gpu_hours", "cost", "fits"}}}'),
) -> None:
    """Pre-flight plan of the training stages (align, sft, dpo): will each fit, what one
    optimizer step holds, how long and how much, before any GPU hour is spent.

    Per stage: memory per GPU by part (weights, gradients, optimizer, activations, logits,
    vision tower, overhead) and the peak, as `train.strategy` shards them; tokens / samples
    / packed rows per optimizer step; steps per epoch; hours and GPU-hours at the assumed
    `plan.<stage>.mfu`; cost at `plan.price_per_gpu_hour`. Dataset sizes, tokens per
    sample, GPU type and count come from params.yaml `plan:` (flags override). In --json,
    "gpus"/"gpu" are the flags' values, else a {stage: value} mapping. A stage that cannot
    fit exits 1 naming the stage, the overflowing part and the setting to change."""
    try:
        from components.plan.preflight import check, plan_run
        from components.settings import load_settings

        settings = load_settings(profile)
        plans = plan_run(settings, gpus=gpus, gpu=gpu, run_dir=run_dir)
        price = settings.plan.price_per_gpu_hour
        if as_json:
            print(json.dumps({
                "gpus": gpus if gpus else {s: p.target.gpus for s, p in plans.items()},
                "gpu": gpu if gpu else {s: p.target.label for s, p in plans.items()},
                "stages": {s: p.as_json(price) for s, p in plans.items()}}, indent=2))
        else:
            _print_plan(plans, settings)
        check(plans, settings)
    except AmaliaError as exc:
        _fail(exc)


def _print_plan(plans: dict, settings) -> None:
    """Two tables: memory per GPU by part (a column per stage), then the step and schedule."""
    price = settings.plan.price_per_gpu_hour
    table = Table(title="memory per GPU (GiB)")
    table.add_column("part")
    for s, p in plans.items():
        t = p.target
        table.add_column(f"{s}\n{t.gpus} x {t.label}\n{t.strategy} {t.precision}")
    first = next(iter(plans.values()))
    for part in first.memory.parts_gib:
        table.add_row(part, *(f"{p.memory.parts_gib[part]:.2f}" for p in plans.values()))
    table.add_row("peak", *(f"{p.memory.peak_gib:.2f}" for p in plans.values()))
    table.add_row("capacity", *(f"{p.target.capacity_gib:.1f}" for p in plans.values()))
    table.add_row("fits", *("yes" if p.fits else "[red]NO[/]" for p in plans.values()))
    console.print(table)
    na = lambda v, f="{:,.1f}": "n/a" if v is None else f.format(v)  # noqa: E731
    steps = Table(title="one optimizer step, and the schedule")
    for col in ("stage", "tokens", "samples", "rows", "steps/epoch", "hours", "GPU-hours",
                "cost $", "MFU"):
        steps.add_column(col)
    for s, p in plans.items():
        j = p.as_json(price)
        steps.add_row(s, f"{j['tokens_per_step']:,.0f}", f"{j['samples_per_step']:,.1f}",
                      f"{j['rows_per_step']:,.0f}", str(j["steps_per_epoch"]),
                      na(j["hours"]), na(j["gpu_hours"]), na(j["cost"], "{:,.0f}"),
                      "n/a (no GPU peak)" if p.hours is None else
                      f"{getattr(settings.plan, s).mfu:.0%} assumed")
    console.print(steps)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
