"""Model registry: register a run's model in MLflow, resolve `models:/` URIs, promote,
roll back. One package, a module per job:

- `register`: the `register` stage (`run(ctx)`) logs `<run>/dpo/model` (a
  save_pretrained folder) as an MLflow pyfunc wrapping that folder (MLflow has no
  transformers flavor for image-text-to-text), logs the candidate's per-sample evaluation
  scores (`eval/sample_scores.json`, from `<run>/evaluate/predictions.jsonl`) beside it,
  registers a new version of `settings.register.model_name` carrying its lineage as tags
  (git commit, DVC data md5, upstream stage digests, params digest, per-task scores,
  parent run) and only then points the alias `challenger` at it (`log_and_register`: a
  version whose registration failed half-way is left `amalia.registration=pending|failed`,
  unaliased); `resolve_model_dir(ref)` turns a local folder, `models:/name@alias`,
  `models:/name/version` or `runs:/...` URI into a local save_pretrained folder;
- `gate`: the paired bootstrap over both versions' per-sample scores
  (`RegisterSettings.gate`);
- `promotion`: `promote()` moves `champion` to the `challenger` version only when the gate
  passes, or there is no champion yet, or it is forced with a reason; promotions and
  rollbacks of one store are serialised (`promotion_lock`) and compare-and-set the alias;
  each promotion leaves a decision record on the version and appends to the registered
  model's `champion.history`, which `rollback()` walks back;
- `serving`: the pyfunc's `predict` answers rows of `image` (a path, raw bytes or a base64
  string) and `question`, from a DataFrame or a list of dicts (`mlflow models serve`
  included);
- `tags`: the tag and artifact names they share.
"""

from components.registry.gate import (
    GateResult,
    TaskComparison,
    load_sample_scores,
    paired_bootstrap,
)
from components.registry.promotion import (
    PromotionDecision,
    RollbackResult,
    decision_dict,
    history,
    promote,
    promotion_lock,
    rollback,
)
from components.registry.register import (
    alias_version,
    git_commit,
    lineage_tags,
    log_and_register,
    resolve_model_dir,
    run,
    sample_scores_from,
)
from components.registry.serving import prepare_rows
from components.registry.tags import HF_ARTIFACT, SAMPLE_SCORES, TAG_SCORES, TAG_STATUS

__all__ = [
    "HF_ARTIFACT", "SAMPLE_SCORES", "TAG_SCORES", "TAG_STATUS", "GateResult",
    "PromotionDecision", "RollbackResult", "TaskComparison", "alias_version",
    "decision_dict", "git_commit", "history", "lineage_tags", "load_sample_scores",
    "log_and_register", "paired_bootstrap", "prepare_rows", "promote", "promotion_lock",
    "resolve_model_dir", "rollback", "run", "sample_scores_from",
]
